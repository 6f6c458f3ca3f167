"""Resources several steps declare alike (each step declares them again, so
either runs alone; the second finds them in place)."""
from __future__ import annotations

import dataclasses

from mailops.core.layout import LOG_DIR
from mailops.core.render import render
from mailops.core.resources import Directory, File, Resource, Service
from mailops.core.resources.files import ValidatedFile


@dataclasses.dataclass(frozen=True)
class Job:
    """A daily job: a systemd timer where systemd runs, a cron.d entry otherwise."""
    name: str               # mailops-<name>: unit and cron file names
    description: str
    command: str
    at: str                 # HH:MM, the server's time zone
    network: bool = False   # the job needs the network (systemd: after network-online)

    @property
    def hour(self) -> int:
        return int(self.at.split(":")[0])

    @property
    def minute(self) -> int:
        return int(self.at.split(":")[1])


def scheduled(job: Job, info) -> list[Resource]:
    """The job's timer (and service) units, or its cron.d file (cron itself is
    installed and run by 10-base where no systemd runs)."""
    unit = f"mailops-{job.name}"
    if info is not None and info.init == "systemd":
        timer = f"{unit}.timer"
        return [
            File(f"/etc/systemd/system/{unit}.service",
                 render("etc/systemd/system/mailops-job.service.j2", job=job), notify=(timer,)),
            File(f"/etc/systemd/system/{timer}",
                 render("etc/systemd/system/mailops-job.timer.j2", job=job), notify=(timer,)),
            Service(timer, on_change="restart",
                    probe=("systemctl", "is-active", "--quiet", timer),
                    start=("sh", "-c", f"systemctl daemon-reload && systemctl enable --now {timer}"
                           f" && systemctl restart {timer}", "timer_start")),
        ]
    return [File(f"/etc/cron.d/{unit}", render("etc/cron.d/mailops-job.j2", job=job)),
            Service("cron")]


def mailops_logs() -> list[Resource]:
    """/var/log/mailops and its rotation: 65-sieve (the learn helper, as the mail user)
    and 80-backup both write there."""
    return [Directory(LOG_DIR, mode="0770", owner="root", group="vmail"),
            ValidatedFile("/etc/logrotate.d/mailops-logs",
                          render("etc/logrotate.d/mailops-logs.j2"),
                          validate=("logrotate", "--debug", "{}"))]
