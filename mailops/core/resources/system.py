"""Debian packages, system groups and users."""
from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from .base import Action, Change, FactError, Resource

_PKG = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

DPKG_QUERY = ["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Version}\n"]

# Packages are installed with service starts denied (policy-rc.d): the
# services are then configured and started by their Service resources, with
# validated configuration, instead of by a postinst with the stock one.
APT_INSTALL = r"""set -e
export DEBIAN_FRONTEND=noninteractive
made=
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made=1
fi
trap '[ -z "$made" ] || rm -f /usr/sbin/policy-rc.d' EXIT
apt-get -q update
apt-get -q -y --no-install-recommends -o Dpkg::Options::=--force-confold install "$@"
"""


def parse_dpkg(out: str) -> dict[str, str]:
    """Installed packages -> version, from DPKG_QUERY's output (pure)."""
    installed = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].startswith("ii"):
            installed[parts[0].split(":")[0]] = parts[2]
    return installed


@dataclasses.dataclass(frozen=True)
class Packages(Resource):
    """A set of Debian packages that must be installed."""

    names: tuple[str, ...]
    kind: ClassVar[str] = "packages"

    def __post_init__(self):
        for n in self.names:
            if not _PKG.fullmatch(n):
                raise ValueError(f"not a Debian package name: {n!r}")

    @property
    def key(self):
        return " ".join(self.names)

    @classmethod
    def fact_commands(cls, items):
        return [DPKG_QUERY]

    @classmethod
    def parse_facts(cls, items, results):
        if not results[0].ok:
            raise FactError(f"dpkg-query failed: {results[0].err.strip()[-300:]}")
        return parse_dpkg(results[0].out)

    def compare(self, facts):
        missing = [n for n in self.names if n not in facts]
        if not missing:
            return []
        return [Change(Packages(tuple(missing)), Action.INSTALL,
                       f"not installed: {', '.join(missing)}")]

    def apply(self, host, change):
        host.run(["sh", "-c", APT_INSTALL, "apt_install", *self.names], timeout=1800)


def parse_getent(out: str) -> dict[str, list[str]]:
    """``getent passwd`` or ``getent group`` output -> name: fields (pure)."""
    return {f[0]: f for f in (line.split(":") for line in out.splitlines()) if f and f[0]}


@dataclasses.dataclass(frozen=True)
class Group(Resource):
    name: str
    system: bool = True
    kind: ClassVar[str] = "group"

    def __post_init__(self):
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"not a valid group name: {self.name!r}")

    @property
    def key(self):
        return self.name

    @classmethod
    def fact_commands(cls, items):
        return [["getent", "group"]]

    @classmethod
    def parse_facts(cls, items, results):
        return parse_getent(results[0].out)

    def compare(self, facts):
        return [] if self.name in facts else [Change(self, Action.CREATE, "does not exist")]

    def apply(self, host, change):
        host.run(["groupadd", *(["--system"] if self.system else []), self.name])


@dataclasses.dataclass(frozen=True)
class User(Resource):
    """A system account without login (e.g. vmail); never a mail user."""

    name: str
    group: str
    home: str
    shell: str = "/usr/sbin/nologin"
    system: bool = True
    kind: ClassVar[str] = "user"

    def __post_init__(self):
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"not a valid user name: {self.name!r}")

    @property
    def key(self):
        return self.name

    @classmethod
    def fact_commands(cls, items):
        return [["getent", "passwd"], ["getent", "group"]]

    @classmethod
    def parse_facts(cls, items, results):
        groups = parse_getent(results[1].out)
        gid_names = {fields[2]: name for name, fields in groups.items() if len(fields) > 2}
        users = {}
        for name, f in parse_getent(results[0].out).items():
            if len(f) < 7:
                raise FactError(f"bad passwd line for {name}")
            users[name] = {"group": gid_names.get(f[3], f[3]), "home": f[5], "shell": f[6]}
        return users

    def compare(self, facts):
        found = facts.get(self.name)
        if found is None:
            return [Change(self, Action.CREATE, "does not exist")]
        wanted = {"group": self.group, "home": self.home, "shell": self.shell}
        diffs = [f"{k} {found[k]} -> {v}" for k, v in wanted.items() if found[k] != v]
        return [Change(self, Action.UPDATE, "; ".join(diffs))] if diffs else []

    def apply(self, host, change):
        if change.action is Action.CREATE:
            host.run(["useradd", *(["--system"] if self.system else []), "-g", self.group,
                      "-d", self.home, "-M", "-s", self.shell, self.name])
        else:
            host.run(["usermod", "-g", self.group, "-d", self.home, "-s", self.shell,
                      self.name])
