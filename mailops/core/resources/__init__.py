"""Resources: what a step declares (files, directories, links, packages, users, services, sieve scripts), each with its facts, its diff and its apply."""
from .base import Action, Change, FactError, Resource
from .files import Directory, File, Link
from .services import Service
from .sieve import SieveScript
from .system import Group, Packages, User

__all__ = ["Action", "Change", "Directory", "FactError", "File", "Group", "Link",
           "Packages", "Resource", "Service", "SieveScript", "User"]
