"""Rebuild a lost server on a new host from its latest backup, in one command.

The new host (same parameters, a fresh Debian) gets borg and the backup credentials
first; then the latest archive is chosen and checked (young enough, this machine's key
copy is the repository's key); then the server's state is put in place before anything
is provisioned: the mail store (folders, flags, UIDs and UIDVALIDITY, users' sieve and
vacation, as archived), the users database (passwords, aliases, catch-alls, quotas,
disabled states), the DKIM keys (the published DNS records stay true) and the
certificates.  Then every step is provisioned as usual (each sees that state and keeps
it), the databases of the daemons that now exist are put back (redis: Bayes and
history; fail2ban: ban history), and a second provision with verify must be green with
nothing left to change.  Mail sent meanwhile waits at its senders, who retry.

A rebuild never overwrites a server: a host that holds mail is refused.  Progress is
recorded on the host (``/var/lib/mailops/rebuild.json``), so a rebuild cut off after its
state was placed is finished by running it again."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, ClassVar

from mailops.core import plan as planning
from mailops.core.host import CommandError, Host
from mailops.core.layout import BACKUP, TLS_DIR, VHOSTS
from mailops.core.params import Params
from mailops.core.resources import Directory, Group, Packages, Resource, User
from mailops.core.resources.base import FactError
from mailops.core.resources.maildb import DB_GROUP, DB_PATH
from mailops.core.resources.rspamd import DKIM_DIR
from . import runner
from .backup import SCRATCH_PARENT, check_key_copy
from .phased import PhasedReport
from .session import Session
from .steps import STEPS
from .steps import backup as backup_step
from .steps.dovecot import Vmail

MARKER = "/var/lib/mailops/rebuild.json"
# what a rebuild takes from the archive before provisioning (the rest of /etc is the
# parameters' to write)
STATE_PATHS = (VHOSTS, DKIM_DIR, BACKUP.dumps, "/etc/letsencrypt", TLS_DIR)
# what the new host needs to read the repository: borg, the passphrase, the key and the
# repository host's known key, the wrapper
ACCESS = {"/etc/borgmatic", BACKUP.conf_dir, BACKUP.passphrase, BACKUP.ssh_key, BACKUP.known_hosts,
          BACKUP.wrapper}


class RebuildError(Exception):
    """A rebuild refused or stopped: what was done, what was not, what to run next."""


@dataclasses.dataclass
class RebuildReport(PhasedReport):
    archive: str = ""
    archive_age_hours: float | None = None
    restored: dict = dataclasses.field(default_factory=dict)
    STEP: ClassVar[str] = "95-rebuild"
    COMMAND: ClassVar[str] = "rebuild"

    def details(self) -> dict:
        return {"archive": self.archive, "archive_age_hours": self.archive_age_hours,
                "restored": self.restored}

    def __str__(self) -> str:
        return self.render((f", archive {self.archive}" if self.archive else "")
                           + (f" ({self.archive_age_hours} h old)"
                              if self.archive_age_hours is not None else ""))


def access_resources(p: Params, info) -> list[Resource]:
    """The part of 80-backup that reads the repository, the mail store's owner (so the
    archive's files get their owners by name) and the group the users database is read
    by (the postfix package takes a system group that exists)."""
    keep = [r for r in backup_step.declare(p, info) if r.key in ACCESS]
    vmail = Vmail()
    return [Packages(("borgbackup", "openssh-client", "python3", "sqlite3")), *keep,
            Group(DB_GROUP), Group(vmail.gid_name), User(vmail.uid_name, vmail.gid_name, vmail.home),
            Directory(vmail.home, mode="0750", owner=vmail.uid_name, group=vmail.gid_name)]


def _helper(session: Session, request: dict, timeout: float = 3600) -> dict:
    req = {"vhosts": VHOSTS, "users_db": DB_PATH, "users_db_group": DB_GROUP, "dumps": BACKUP.dumps, "dkim_dir": DKIM_DIR,
           "marker": MARKER, "state": BACKUP.state, "scratch_parent": SCRATCH_PARENT, **request}
    return session.helper("rebuild", req, error=RebuildError, timeout=timeout)


SURVEY = r"""v=$1; db=$2; m=$3
printf 'files %s\n' "$(find "$v" -type f 2>/dev/null | head -n 1000 | wc -l)"
[ -f "$db" ] && echo "users-db"
[ -f "$m" ] && printf 'marker %s\n' "$(tr -d '\n' < "$m")"
exit 0
"""


def survey(session: Session) -> dict:
    """What the host holds now (reads only, needs nothing installed)."""
    out = session.host.run(["sh", "-c", SURVEY, "survey", VHOSTS, DB_PATH, MARKER]).out
    return parse_survey(out)


def parse_survey(out: str) -> dict:
    """SURVEY's output -> {"files": n, "users_db": bool, "marker": dict | None} (pure)."""
    found = {"files": 0, "users_db": False, "marker": None}
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word == "files":
            found["files"] = int(rest.strip() or 0)
        elif word == "users-db":
            found["users_db"] = True
        elif word == "marker":
            try:
                found["marker"] = json.loads(rest)
            except ValueError:
                found["marker"] = {"phase": "unreadable"}
    return found


def choose_archive(session: Session, archive: str, max_age_hours: float) -> tuple[str, float]:
    """The archive to rebuild from (default: the latest) and its age; refused when older
    than ``max_age_hours``."""
    r = _helper(session, {"action": "choose", "archive": archive}, timeout=300)
    if r["age_hours"] > max_age_hours:
        raise RebuildError(
            f"the {'named' if archive else 'latest'} archive {r['archive']} is "
            f"{r['age_hours']:.1f} h old, older than backup.rebuild_max_age_hours = "
            f"{max_age_hours:g}: mail received after it would be lost. Find a newer archive "
            "(`mailops-borg list` on the host), or accept this one with --max-age-hours")
    return r["archive"], r["age_hours"]


def rebuild(params_file: str | Path | Params, *, dry_run: bool = False, archive: str = "",
            max_age_hours: float | None = None, log: Callable[[str], None] = print,
            reports: Path = runner.REPORTS, host: Host | None = None,
            provision: Callable[..., runner.RunSummary] | None = None) -> RebuildReport:
    """Rebuild the server the parameters describe on the (empty) host they point at.
    ``host`` and ``provision`` replace the connection and the runner (the unit tier's
    fake host); by default each phase connects anew and provisions through the runner."""
    params, params_file, provision = runner.for_command(params_file, reports, provision)
    b = params.backup
    if not b.enabled:
        raise RebuildError("backup.enabled is false: there is no repository to rebuild from")
    limit = b.rebuild_max_age_hours if max_age_hours is None else max_age_hours
    report = RebuildReport(params.target, dry_run=dry_run)

    def phase(name: str, started: float, detail: str) -> None:
        report.phases.append((name, time.monotonic() - started, detail))
        log(f"[rebuild] {name}: {detail}")

    def connect() -> Session:
        return Session(params, host)

    with connect() as session:
        t = time.monotonic()
        found = survey(session)
        marker = found["marker"]
        resuming = marker is not None and marker.get("phase") not in ("done", "unreadable")
        if resuming:
            report.archive = marker.get("archive", "")
            phase("survey", t, f"an earlier rebuild from {report.archive} stopped after "
                               f"{marker.get('phase')}: finishing it")
        elif found["files"] or found["users_db"]:
            raise RebuildError(
                f"{params.target} holds mail already ({found['files']}"
                f"{'+' if found['files'] >= 1000 else ''} file(s) under {VHOSTS}"
                f"{', a users database' if found['users_db'] else ''}): a rebuild never "
                "overwrites a server. To bring back single mailboxes use the restore drill "
                "(`mailops drill --restore-mailbox ADDRESS`); to rebuild, start from an empty host")
        else:
            phase("survey", t, "the host holds no mail")

        t = time.monotonic()
        access = planning.plan(session.host, access_resources(params, session.info),
                               "95-rebuild")
        if dry_run:
            phase("access", t, f"would make {len(access.changes)} change(s): "
                  + ", ".join(f"{c.action.value} {c.target}" for c in access.changes[:8]))
            if access.changes:
                return report
        else:
            result = planning.apply(session.host, access)
            session._info = None
            if result.error:
                raise RebuildError(f"installing borg and the backup credentials failed: "
                                   f"{result.error}; nothing of the archive was placed yet. "
                                   f"Run `mailops rebuild --params {params_file}` again")
            phase("access", t, f"{len(result.applied)} change(s): borg and the backup "
                               "credentials")

        t = time.monotonic()
        try:
            key = check_key_copy(session)
        except (CommandError, FactError) as exc:
            raise RebuildError(f"the repository cannot be read with the backup credentials: "
                               f"{exc}. Nothing was restored") from None
        if key != "ok":
            raise RebuildError(f"the key copy does not open the repository: {key}. Nothing was "
                               f"restored; point backup.key_copy at this repository's key")
        if not resuming:
            report.archive, report.archive_age_hours = choose_archive(session, archive, limit)
            phase("archive", t, f"{report.archive}, {report.archive_age_hours:.1f} h old; "
                                "the key copy is the repository's key")
        if dry_run:
            return report

        t = time.monotonic()
        if not resuming or marker.get("phase") == "extracting":
            report.restored = _helper(session, {"action": "extract",
                                                "archive": report.archive,
                                                "paths": list(STATE_PATHS)})
            phase("extract", t, f"{report.restored['mailboxes']} mailbox(es), "
                                f"{report.restored['mail_files']} mail file(s) placed from "
                                f"{report.archive}")
        else:
            _helper(session, {"action": "own"})

    for attempt, (name, verify) in enumerate((("provision", False), ("verify", True))):
        if attempt == 1:
            with connect() as session:
                t = time.monotonic()
                state = _helper(session, {"action": "state", "archive": report.archive,
                                          "redis": params.rspamd.enabled,
                                          "fail2ban": params.fail2ban.enabled})
                phase("state", t, ", ".join(f"{k} {v}" for k, v in state.items()))
        t = time.monotonic()
        # the first pass builds (verify waits for the databases' state); the second checks
        summary = provision(apply=True, verify=verify, log=lambda m: log(f"  {m}"),
                            tag=f"rebuild-{name}",
                            only=None if verify else [s.name for s in STEPS if not s.checks])
        report.last_changes = summary.changes
        if not summary.ok:
            failed = next(s for s in summary.steps if s.status == "failed")
            report.error = (f"{failed.step} failed: {failed.error}. The archive's state is in "
                            f"place; fix the cause and run `mailops rebuild --params "
                            f"{params_file}` again to finish")
            phase(name, t, f"failed at {failed.step}")
            return _finish(connect, report, "provisioned" if attempt else "extracted")
        phase(name, t, f"{summary.changes} change(s), {summary.run_dir.name}")
    return _finish(connect, report, "done")


def _finish(connect, report: RebuildReport, phase: str) -> RebuildReport:
    with connect() as session:
        session.host.write_file(MARKER, json.dumps({"archive": report.archive,
                                                    "phase": phase}).encode() + b"\n",
                                mode="0600")
    return report
