"""Backups as the operator meets them: the last run, the archives, the restore
drill (every message of every mailbox compared with the latest archive) and a
mailbox restored for real.  The work runs on the server (mailops/remote/restore.py);
nothing here changes live mail except :func:`restore_mailbox`."""
from __future__ import annotations

import dataclasses
import json
import re
import time

from mailops.core.facts import dovecot_series
from mailops.core.layout import BACKUP as PATHS
from mailops.core.layout import VHOSTS
from mailops.core.tables import html_table

# restores are extracted into a new private directory here (the mail store's
# filesystem, so a restored mailbox is renamed into place, owners kept)
SCRATCH_PARENT = "/var/mail"
_ADDRESS = re.compile(r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$")
_ARCHIVE = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


class BackupError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class DrillReport:
    archive: str
    archive_time: str
    users: tuple[dict, ...]
    seconds: float
    key_copy: str = "not checked"     # "ok": this machine's key copy is the repository's key

    @property
    def differences(self) -> int:
        return sum(len(u["differ"]) + len(u["missing_from_backup"]) for u in self.users)

    @property
    def ok(self) -> bool:
        return self.differences == 0 and self.key_copy == "ok"

    @property
    def messages(self) -> int:
        return sum(u["identical"] for u in self.users)

    def table(self) -> list[dict]:
        return [{"mailbox": u["user"], "live": u["live"], "in archive": u["restored"],
                 "identical": u["identical"], "different": len(u["differ"]),
                 "missing from archive": len(u["missing_from_backup"]),
                 "newer than archive": u["newer_than_backup"],
                 "deleted since": len(u["deleted_since_backup"])} for u in self.users]

    def raise_for_status(self) -> None:
        if not self.ok:
            from mailops.core.plan import StepFailed
            raise StepFailed(f"restore drill: {self.differences} difference(s) against "
                             f"{self.archive}; key copy: {self.key_copy}")

    def record(self) -> dict:
        return {"step": "85-restore-drill", "status": "verified" if self.ok else "failed",
                "changes": 0, "archive": self.archive, "differences": self.differences,
                "messages": self.messages, "key_copy": self.key_copy,
                "error": None if self.ok else
                f"{self.differences} difference(s); key copy: {self.key_copy}",
                "rolled_back": [], "targets": []}

    def __str__(self) -> str:
        head = (f"restore drill of {self.archive} ({self.archive_time}): "
                f"{'ok' if self.ok else 'DIFFERENCES'}, {self.messages} messages identical, "
                f"{self.differences} difference(s), key copy {self.key_copy}, {self.seconds:.1f} s")
        return "\n".join([head] + [f"  {r['mailbox']}: " + ", ".join(
            f"{k} {v}" for k, v in r.items() if k != "mailbox") for r in self.table()])

    def _repr_html_(self) -> str:
        return html_table(self.table(), title=f"restore drill {'ok' if self.ok else 'FAILED'}",
                          note=f": archive {self.archive} ({self.archive_time}), "
                               f"{self.messages} messages identical, "
                               f"{self.differences} difference(s), key copy {self.key_copy}")


def _helper(session, request: dict, timeout: float = 1800) -> dict:
    req = {"scratch_parent": SCRATCH_PARENT, "vhosts": VHOSTS, "archive": "",
           "series": dovecot_series(session.info), **request}
    if req["archive"] and not _ARCHIVE.fullmatch(req["archive"]):
        raise BackupError(f"not an archive name: {req['archive']!r}")
    return session.helper("restore", req, error=BackupError, timeout=timeout)


def drill(session, archive: str = "") -> DrillReport:
    """Extract the archive (default: the latest) to a scratch directory on the
    server and compare every message of every mailbox with the live ones."""
    r = _helper(session, {"action": "drill", "archive": archive})
    return DrillReport(r["archive"], r["archive_time"], tuple(r["users"]), r["seconds"],
                       check_key_copy(session))


def check_key_copy(session) -> str:
    """'ok' when this machine's copy of the repository key is byte for byte the key
    the repository holds now (exported afresh); else what is wrong with it."""
    from mailops.core.resources.borg import export_key, read_key_copy
    b = session.params.backup
    path = session.params.path(b.key_copy)
    state = read_key_copy(path)
    if state != "ok":
        return state
    if export_key(session.host, PATHS.wrapper) != path.read_bytes():
        return f"{path} is not the repository's current key"
    return "ok"


def restore_mailbox(session, user: str, archive: str = "") -> dict:
    """Bring one mailbox back from the archive: a deleted or empty mailbox is put
    back as archived; one that holds mail gets the archived messages imported
    into ``Restored/<archive>`` beside its own (nothing is overwritten)."""
    if not _ADDRESS.fullmatch(user):
        raise BackupError(f"not a mailbox address: {user!r}")
    return _helper(session, {"action": "restore", "user": user, "archive": archive})


def archives(session) -> list[dict]:
    out = session.host.run([PATHS.wrapper, "list", "--json"], timeout=120).out
    return json.loads(out)["archives"]


def last_run(session) -> dict | None:
    """The last scheduled (or first) backup: start, end, exit, age_hours."""
    res = session.host.run(["cat", PATHS.state], check=False)
    return parse_state(res.out) if res.ok else None


def parse_state(text: str) -> dict | None:
    """The backup record (``PATHS.state``) with its age in hours; None when empty."""
    if not text.strip():
        return None
    state = json.loads(text)
    state["age_hours"] = round((time.time() - state["end"]) / 3600, 2)
    return state
