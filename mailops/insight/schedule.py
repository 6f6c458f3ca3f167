"""`mailops schedule install`: collect and the reports on a timer, on the controller.

systemd timer and service units where systemd runs (``/etc/systemd/system``), or
one ``/etc/cron.d`` file where it does not.  Units are named after the store's
host name, so several servers' parameters files each get their own.  The same
commands run under any other scheduler (an Airflow DAG with papermill's operator,
say): the units only call ``mailops collect`` and ``mailops report``.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

from mailops.provision.runner import PROJECT

UNIT_DIR = Path("/etc/systemd/system")
CRON_DIR = Path("/etc/cron.d")
REPORT_TIMES = {"daily": "*-*-* 00:20:00", "weekly": "Mon *-*-* 00:40:00",
                "monthly": "*-*-01 01:00:00"}
CRON_TIMES = {"daily": "20 0 * * *", "weekly": "40 0 * * 1", "monthly": "0 1 1 * *"}


@dataclasses.dataclass
class Schedule:
    files: dict[Path, str]
    enable: list[str]

    def __str__(self) -> str:
        lines = [f"  {p}" for p in self.files]
        if self.enable:
            lines.append("  enable: " + " ".join(self.enable))
        return "\n".join(["schedule:"] + lines)


def _mailops() -> str:
    exe = Path(sys.executable).parent / "mailops"
    return str(exe if exe.exists() else PROJECT / ".venv" / "bin" / "mailops")


def units(params, params_file: Path, name: str) -> dict[str, str]:
    """The unit files' names and contents for one parameters file."""
    cmd = _mailops()
    pf = shlex.quote(str(params_file))
    every = params.insight.collect_every_min
    out = {}

    def service(what: str, args: str, timeout: int) -> str:
        return (f"[Unit]\nDescription=mailops {what} for {name}\n"
                f"After=network-online.target\n\n[Service]\nType=oneshot\n"
                f"WorkingDirectory={PROJECT}\nExecStart={cmd} {args}\n"
                f"TimeoutStartSec={timeout}\nNice=10\n")

    out[f"mailops-collect-{name}.service"] = service("collect", f"collect --params {pf}", 600)
    out[f"mailops-collect-{name}.timer"] = (
        f"[Unit]\nDescription=mailops collect for {name}, every {every} min\n\n[Timer]\n"
        f"OnBootSec=2min\nOnUnitInactiveSec={every}min\nAccuracySec=30s\n\n"
        f"[Install]\nWantedBy=timers.target\n")
    for kind, when in REPORT_TIMES.items():
        out[f"mailops-report-{kind}-{name}.service"] = service(
            f"{kind} report", f"report {kind} --params {pf} --date yesterday", 3600)
        out[f"mailops-report-{kind}-{name}.timer"] = (
            f"[Unit]\nDescription=mailops {kind} report for {name}\n\n[Timer]\n"
            f"OnCalendar={when}\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n")
    return out


def cron(params, params_file: Path, name: str) -> str:
    cmd = _mailops()
    pf = shlex.quote(str(params_file))
    every = params.insight.collect_every_min
    minute = f"*/{every}" if every < 60 else "0"
    lines = [f"# mailops: collect and reports for {name} (written by `mailops schedule install`)",
             "SHELL=/bin/sh", f"{minute} * * * * root cd {PROJECT} && {cmd} collect --params {pf}"
             f" >/dev/null"]
    lines += [f"{CRON_TIMES[k]} root cd {PROJECT} && {cmd} report {k} --params {pf} "
              f"--date yesterday >/dev/null" for k in REPORT_TIMES]
    return "\n".join(lines) + "\n"


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def plan(params, params_file: Path, *, systemd: bool | None = None,
         unit_dir: Path = UNIT_DIR, cron_dir: Path = CRON_DIR) -> Schedule:
    from .collect import host_name
    name = host_name(params)
    systemd = systemd_running() if systemd is None else systemd
    if systemd:
        made = units(params, params_file, name)
        return Schedule({unit_dir / n: text for n, text in made.items()},
                        [n for n in made if n.endswith(".timer")])
    return Schedule({cron_dir / f"mailops-{name.replace('.', '-')}": cron(params, params_file, name)},
                    [])


def install(sched: Schedule) -> list[str]:
    """Write the files (atomically); returns the commands that enable the timers."""
    import os
    for path, text in sched.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    if not sched.enable:
        return []
    return [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", *sched.enable]]
