"""Mailbox migration: pull mailboxes from an old IMAP server into mailboxes here.

The copying is dovecot's own dsync over imapc, run on the mail server
(``doveadm sync -1 -R``, or ``doveadm backup -R`` for an exact copy): folders,
flags, UIDs and UIDVALIDITY are kept, unlike APPEND-based tools, and a re-run
copies only what is new.  Every run starts with a probe from the mail server
(connect, certificate verified, login, folders with their counts); only when
every mailbox of the run passes is anything copied.  The copy goes folder by
folder (progress per folder) with dsync's state kept per folder, so a re-run
copies only changes and mail that arrived here meanwhile is never copied twice;
then a verification: every message's SHA-256 and flags, old server against this one.

The old server's password goes to the server on stdin only, and from there into
a 0600 file dovecot's configuration reads (see ``remote/migrate.py``): never in
argv, a log, a reply or a notebook output.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from mailops.core.facts import dovecot_series
from .accounts import ManageError, check_address, home_of, need_mailbox
from mailops.core.params import IMAP_SOURCE_RE, imap_login_ok
from mailops.remote import source as helper_source
from mailops.core.secrets import Secret, SecretError, resolve

PORTS = {"imaps": 993, "starttls": 143}
MODES = ("sync", "backup")


class MigrationError(RuntimeError):
    """dsync failed on the server, or the copy does not verify."""


@dataclasses.dataclass(frozen=True)
class Source:
    """The old server: where, how TLS starts, and the CA its certificate must chain to."""
    host: str
    port: int
    tls: str                                   # imaps | starttls
    ca_pem: str = dataclasses.field(default="", repr=False)
    ca_name: str = "the server's system CAs"

    @classmethod
    def parse(cls, url: str, ca_file: str | Path | None = None) -> "Source":
        m = IMAP_SOURCE_RE.fullmatch(url or "")
        if not m:
            raise ManageError("source", f"{url!r}: imaps://host[:port] (TLS from the start) or "
                                        "imap://host[:port] (STARTTLS); plain text is never used")
        tls = "imaps" if m[1] == "imaps" else "starttls"
        port = int(m[3] or PORTS[tls])
        if not 1 <= port <= 65535:
            raise ManageError("source", f"port {port}: 1-65535")
        ca_pem, ca_name = "", cls.ca_name
        if ca_file:
            try:
                ca_pem = Path(ca_file).read_text()
            except OSError as exc:
                raise ManageError("ca_file", f"{ca_file}: {exc.strerror}") from None
            if "-----BEGIN CERTIFICATE-----" not in ca_pem:
                raise ManageError("ca_file", f"{ca_file}: no PEM certificate in it")
            ca_name = str(ca_file)
        return cls(m[2].strip("[]"), port, tls, ca_pem, ca_name)

    @property
    def url(self) -> str:
        return f"{'imaps' if self.tls == 'imaps' else 'imap'}://{self.host}:{self.port}"

    def wire(self) -> dict:
        return {"host": self.host, "port": self.port, "tls": self.tls, "ca_pem": self.ca_pem}


@dataclasses.dataclass(frozen=True)
class Job:
    """One mailbox to pull: its login there, its password (never shown), the mailbox here."""
    login: str
    password: Secret
    to: str


def check_login(value: str) -> str:
    if not imap_login_ok(value):
        raise ManageError("login", "1-255 characters without control characters")
    return value


def job(login: str, password: Secret | str, to: str, base: Path | None = None) -> Job:
    """A job from a login, a password (a Secret; a file:/env: reference; or ``prompt``:
    asked here, as in JupyterLab) and a mailbox here."""
    check_login(login)
    if password == "prompt":
        import getpass
        try:
            password = Secret(getpass.getpass(f"password of {login} on the old server: "))
        except Exception as exc:  # noqa: BLE001 - papermill's kernel cannot ask
            raise ManageError("password", f"cannot prompt here ({type(exc).__name__}): give "
                                          "file:PATH[#key] or env:NAME") from None
    elif not isinstance(password, Secret):
        try:
            password = resolve(password, base or Path.cwd())
        except SecretError as exc:
            raise ManageError("password", str(exc)) from None
    return Job(login, password, check_address("to", to))


def from_params(params, only=()) -> tuple[Source, str, list[Job]]:
    """The source, mode and jobs of the parameters' ``migration:`` section (``only``:
    the mailboxes whose login or target is listed)."""
    m = params.migration
    if m is None:
        raise ManageError("migration", "the parameters have no `migration:` section")
    src = Source.parse(m.source, params.path(m.ca_file) if m.ca_file else None)
    jobs = [job(mb.login, mb.password, mb.to, params.base_dir) for mb in m.mailboxes
            if not only or mb.login in only or mb.to in only]
    if only and not jobs:
        raise ManageError("only", f"{', '.join(only)}: not in migration.mailboxes")
    return src, m.mode, jobs


def jobs_for(params, *, only=(), source: str = "", login: str = "", password="prompt",
             to: str = "", ca_file: str = "", mode: str = "") -> tuple[Source, str, list[Job]]:
    """What to migrate: one mailbox given by ``source``, ``login``, ``password`` and
    ``to``, or else the parameters' ``migration:`` section (``only`` some of it);
    ``mode`` overrides the section's."""
    if mode and mode not in MODES:
        raise ManageError("mode", f"{mode!r}: sync or backup")
    if (login or to) and not source:
        raise ManageError("source", "--login and --to need --from (the old server); without "
                                    "all three the parameters' migration section is used")
    if source:
        if not (login and to):
            raise ManageError("login", "a source given here needs a login and a mailbox (to)")
        return Source.parse(source, ca_file or None), mode or "sync", [job(login, password, to)]
    src, section_mode, jobs = from_params(params, only)
    return src, mode or section_mode, jobs


# -- the helper on the server -----------------------------------------------------------
def _helper(session, op: str, req: dict, password: Secret | None = None,
            timeout: float = 3600) -> dict:
    if password is not None:
        req = {**req, "password": password.reveal()}
    res = session.host.run(["python3", "-c", helper_source("migrate"), "migrate", op],
                           stdin=json.dumps(req).encode(), timeout=timeout)
    out = res.out
    if password is not None and password.reveal():
        # defence in depth: nothing the server says may carry the password back
        out = out.replace(json.dumps(password.reveal())[1:-1], "***")
    return json.loads(out)


def _request(src: Source, j: Job, **extra) -> dict:
    return {"source": src.wire(), "login": j.login, "user": j.to, "home": home_of(j.to), **extra}


def local_folders(session, address: str) -> dict[str, dict]:
    """This server's folders of ``address``: messages, uidnext, uidvalidity."""
    r = _helper(session, "local", {"user": address}, timeout=300)
    if not r["ok"]:
        raise MigrationError(f"{session.host.url}: doveadm mailbox status of {address}: "
                             f"{r['message']}")
    return r["folders"]


# -- the plan: probe every mailbox, read what is here ----------------------------------
@dataclasses.dataclass
class MailboxPlan:
    job: Job
    folders: list[dict]                 # {name, there}
    here: dict[str, dict]               # local folders before

    @property
    def there(self) -> int:
        return sum(f["there"] for f in self.folders)

    def rows(self) -> list[dict]:
        return [{"mailbox": f"{self.job.login} -> {self.job.to}", "folder": f["name"],
                 "there": f["there"], "here now": self.here.get(f["name"], {}).get("messages", 0)}
                for f in self.folders]


@dataclasses.dataclass
class MigrationPlan:
    source: Source
    mode: str
    mailboxes: list[MailboxPlan]

    @property
    def action(self) -> str:
        return f"migrate ({self.mode}) from {self.source.url}"

    def __str__(self) -> str:
        lines = [f"{self.action}, certificate checked against {self.source.ca_name}: "
                 f"{len(self.mailboxes)} mailbox(es), connection and login tested"]
        for mp in self.mailboxes:
            lines.append(f"  {mp.job.login} -> {mp.job.to}: {mp.there} message(s) in "
                         f"{len(mp.folders)} folder(s) there")
            lines += [f"    {r['folder']:32} {r['there']:7} there {r['here now']:7} here now"
                      for r in mp.rows()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from mailops.core.tables import html_table
        return html_table([r for mp in self.mailboxes for r in mp.rows()],
                          ["mailbox", "folder", "there", "here now"],
                          title=self.action, note=f" (certificate checked against "
                                                  f"{self.source.ca_name}; login tested)")


def plan(session, src: Source, jobs: list[Job], mode: str = "sync") -> MigrationPlan:
    """Test every mailbox's connection and login from the mail server and read both
    sides; raises :class:`ManageError` (nothing copied) on the first that fails."""
    if mode not in MODES:
        raise ManageError("mode", f"{mode!r}: sync or backup")
    if not jobs:
        raise ManageError("mailboxes", "no mailbox to migrate")
    from .users import state
    st = state(session)
    seen = collections.Counter(j.to for j in jobs)
    for j in jobs:
        need_mailbox(st, "to", j.to)
        if mode == "backup" and seen[j.to] > 1:
            raise ManageError("to", f"{j.to}: two old mailboxes cannot both be copied exactly "
                                    "into one (use mode sync to merge them)")
    out = []
    for j in jobs:
        r = _helper(session, "probe", _request(src, j), j.password, timeout=300)
        if not r["ok"]:
            field = "password" if r["kind"] == "login" else "source"
            raise ManageError(field, r["message"])
        out.append(MailboxPlan(j, [{"name": f["name"], "there": f["messages"]}
                                   for f in r["folders"]], local_folders(session, j.to)))
    return MigrationPlan(src, mode, out)


# -- the copy ------------------------------------------------------------------------------
@dataclasses.dataclass
class FolderRun:
    name: str
    there: int
    before: int
    after: int
    new: int                 # messages saved here by this run
    seconds: float


def _sync(session, src: Source, j: Job, mode: str, folder: str | None = None) -> dict:
    series = dovecot_series(session.info)
    r = _helper(session, "sync", _request(src, j, mode=mode, series=series,
                                          folder=folder or ""), j.password)
    if not r["ok"]:
        where = f"folder {folder!r}" if folder else "the whole mailbox"
        raise MigrationError(f"{session.host.url}: dsync of {j.login} -> {j.to} ({where}) "
                             f"failed, exit {r['rc']}: {r['message']}")
    return r["after"]


def _new(before: dict, after: dict) -> int:
    """Messages saved by a run: the growth in count when UIDNEXT moved (a new
    UIDVALIDITY: everything there now)."""
    if not before or before.get("uidvalidity") != after.get("uidvalidity"):
        return after.get("messages", 0)
    return max(0, after["messages"] - before["messages"]) if after["uidnext"] > before["uidnext"] \
        else 0


# -- verification ----------------------------------------------------------------------------
@dataclasses.dataclass
class Verification:
    folders: list[dict]      # per folder: there, here, matched, missing here, only here, flags differ
    messages: list[dict]     # per message: folder, uid there/here, sha256, flags there/here, status
    mode: str

    @property
    def ok(self) -> bool:
        return all(f["ok"] for f in self.folders)


VERIFY_COLUMNS = ["folder", "there", "here", "matched", "missing here", "duplicate here",
                  "only here", "flags differ", "ok"]
MESSAGE_COLUMNS = ["folder", "uid there", "uid here", "sha256", "flags there", "flags here",
                   "status"]


def compare(old: list[list], new: list[list], mode: str = "sync") -> Verification:
    """Old and new messages (``[folder, uid, flags, sha256]``) matched by digest within
    each folder (duplicates pair in UID order)."""
    def by_folder(rows):
        d = collections.defaultdict(lambda: collections.defaultdict(list))
        for folder, uid, flags, sha in sorted(rows, key=lambda r: (r[0], r[1])):
            d[folder][sha].append((uid, flags))
        return d
    o, n = by_folder(old), by_folder(new)
    folders, messages = [], []
    for folder in sorted(set(o) | set(n), key=lambda f: (f != "INBOX", f)):
        counts = collections.Counter()
        for sha in sorted(set(o[folder]) | set(n[folder])):
            there, here = o[folder].get(sha, []), n[folder].get(sha, [])
            for k in range(max(len(there), len(here))):
                t = there[k] if k < len(there) else None
                h = here[k] if k < len(here) else None
                status = ("missing here" if h is None else
                          ("duplicate here" if there else "only here") if t is None else
                          "flags differ" if t[1] != h[1] else "matched")
                counts[status] += 1
                messages.append({"folder": folder, "uid there": t[0] if t else "",
                                 "uid here": h[0] if h else "", "sha256": sha[:16],
                                 "flags there": t[1] if t else "", "flags here": h[1] if h else "",
                                 "status": status})
        there_n = sum(len(v) for v in o[folder].values())
        here_n = sum(len(v) for v in n[folder].values())
        # mail that arrived here is fine in sync mode; a second copy of an old message never
        ok = (counts["missing here"] == 0 and counts["flags differ"] == 0
              and counts["duplicate here"] == 0 and (mode == "sync" or counts["only here"] == 0))
        folders.append({"folder": folder, "there": there_n, "here": here_n,
                        "matched": counts["matched"], "missing here": counts["missing here"],
                        "duplicate here": counts["duplicate here"],
                        "only here": counts["only here"], "flags differ": counts["flags differ"],
                        "ok": ok})
    return Verification(folders, messages, mode)


def verify(session, src: Source, j: Job, mode: str = "sync") -> Verification:
    """Every message's SHA-256 and flags on the old server (read only) and here."""
    r = _helper(session, "digest", _request(src, j), j.password)
    if not r["ok"]:
        # after the copy: not a bad input with nothing written, a run that did not finish
        raise MigrationError(f"verifying {j.to} against {j.login} failed: {r['message']}")
    return compare(r["old"], r["new"], mode)


# -- a run --------------------------------------------------------------------------------
@dataclasses.dataclass
class MailboxRun:
    job: Job
    folders: list[FolderRun]
    verification: Verification | None
    seconds: float

    @property
    def new(self) -> int:
        return sum(f.new for f in self.folders)

    @property
    def ok(self) -> bool:
        return self.verification is None or self.verification.ok


@dataclasses.dataclass
class MigrationResult:
    plan: MigrationPlan
    runs: list[MailboxRun]
    dry_run: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    @property
    def head(self) -> str:
        if self.dry_run:
            return "dry run: nothing copied"
        verified = all(r.verification is not None for r in self.runs)
        return (("copied and verified" if verified else "copied (not verified)") if self.ok
                else "copied, but the verification FAILED")

    def summary(self) -> list[dict]:
        return [{"mailbox": f"{r.job.login} -> {r.job.to}",
                 "folders": len(r.folders), "there": sum(f.there for f in r.folders),
                 "here": sum(f.after for f in r.folders), "new": r.new,
                 "verified": "-" if r.verification is None else
                 ("ok" if r.verification.ok else "FAILED"),
                 "seconds": round(r.seconds, 1)} for r in self.runs]

    def __str__(self) -> str:
        lines = [f"-> {self.head} ({self.seconds:.1f}s)"]
        for r, s in zip(self.runs, self.summary()):
            lines.append(f"   {s['mailbox']}: {s['there']} there, {s['here']} here, "
                         f"{s['new']} new; verification {s['verified']}")
            if r.verification is not None and not r.verification.ok:
                lines += [f"     {f['folder']}: {f['missing here']} missing here, "
                          f"{f['duplicate here']} copied twice, {f['flags differ']} with "
                          f"other flags, {f['only here']} only here"
                          for f in r.verification.folders if not f["ok"]]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from mailops.core.tables import html_table, status
        parts = [self.plan._repr_html_()]
        if self.runs:
            parts.append(html_table(self.summary(), title=f"{self.head} in {self.seconds:.1f}s"))
        for r in self.runs:
            if r.verification is not None:
                rows = [{**f, "ok": status(f["ok"])} for f in r.verification.folders]
                parts.append(html_table(rows, VERIFY_COLUMNS, title=f"verification of "
                                        f"{r.job.to} against {r.job.login}"))
        return "".join(parts)

    def mismatches(self):
        """The messages that do not match (empty when everything verified)."""
        from mailops.core.tables import frame
        rows = [{"mailbox": r.job.to, **m} for r in self.runs if r.verification is not None
                for m in r.verification.messages if m["status"] != "matched"]
        return frame(rows, ["mailbox", *MESSAGE_COLUMNS])

    def record(self) -> dict:
        """The run record (no password, no message content)."""
        return {"action": self.plan.action, "status": "planned" if self.dry_run else
                ("verified" if self.ok else "failed"), "mailboxes": self.summary(),
                "changes": sum(r.new for r in self.runs),
                "verification": {r.job.to: r.verification.folders for r in self.runs
                                 if r.verification is not None},
                "seconds": round(self.seconds, 3)}

    def raise_for_status(self) -> None:
        bad = [r.job.to for r in self.runs if not r.ok]
        if bad:
            raise MigrationError(f"the copy of {', '.join(bad)} does not match the old server: "
                                 "see the verification table")


def run(session, plan_: MigrationPlan, *, dry_run: bool = False, verify_copy: bool = True,
        progress: Callable[[str], None] = print) -> MigrationResult:
    """Copy folder by folder (a progress line each; dsync's state per folder makes a
    re-run incremental), in backup mode one more pass over the whole mailbox (folders
    the old server no longer has), then verify.  A failure raises
    :class:`MigrationError`; what was copied stays, and a re-run continues from there."""
    start = time.monotonic()
    if dry_run:
        return MigrationResult(plan_, [], True, time.monotonic() - start)
    runs = []
    for mp in plan_.mailboxes:
        j, t0 = mp.job, time.monotonic()
        folders = []
        here = dict(mp.here)
        for i, f in enumerate(mp.folders, 1):
            t1 = time.monotonic()
            after = _sync(session, plan_.source, j, plan_.mode, f["name"])
            b, a = here.get(f["name"], {}), after.get(f["name"], {})
            fr = FolderRun(f["name"], f["there"], b.get("messages", 0), a.get("messages", 0),
                           _new(b, a) if a else 0, time.monotonic() - t1)
            folders.append(fr)
            here = after
            progress(f"{j.login} -> {j.to} [{i}/{len(mp.folders)}] {fr.name}: {fr.there} there, "
                     f"{fr.after} here (+{fr.new}) in {fr.seconds:.1f}s")
        if plan_.mode == "backup":
            # an exact copy: also remove here the folders the old server does not have
            _sync(session, plan_.source, j, plan_.mode)
        ver = verify(session, plan_.source, j, plan_.mode) if verify_copy else None
        if ver is not None:
            progress(f"{j.login} -> {j.to}: verification "
                     f"{'ok' if ver.ok else 'FAILED'} ({sum(f['matched'] for f in ver.folders)} "
                     f"message(s) matched by SHA-256 and flags)")
        runs.append(MailboxRun(j, folders, ver, time.monotonic() - t0))
    return MigrationResult(plan_, runs, False, time.monotonic() - start)


def migrate(session, src: Source, jobs: list[Job], mode: str = "sync", *, dry_run: bool = True,
            verify_copy: bool = True, progress: Callable[[str], None] = print) -> MigrationResult:
    """Plan (probe every mailbox), then run: the notebook's and the CLI's one call."""
    p = plan(session, src, jobs, mode)
    progress(str(p))
    return run(session, p, dry_run=dry_run, verify_copy=verify_copy, progress=progress)


__all__ = ["Job", "MigrationError", "MigrationPlan", "MigrationResult",
           "Source", "Verification", "compare", "from_params", "job", "local_folders",
           "migrate", "plan", "run", "verify"]
