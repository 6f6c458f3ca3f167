"""Resources several steps declare alike (each step declares them again, so
either runs alone; the second finds them in place)."""
from __future__ import annotations

from ..layout import LOG_DIR
from ..render import render
from ..resources import Directory, Resource
from ..resources.files import ValidatedFile


def mailops_logs() -> list[Resource]:
    """/var/log/mailops and its rotation: 65-sieve (the learn helper, as the mail user)
    and 80-backup both write there."""
    return [Directory(LOG_DIR, mode="0770", owner="root", group="vmail"),
            ValidatedFile("/etc/logrotate.d/mailops-logs",
                          render("etc/logrotate.d/mailops-logs.j2"),
                          validate=("logrotate", "--debug", "{}"))]
