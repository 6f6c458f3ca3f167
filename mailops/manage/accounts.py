"""Day-to-day management of domains, mailboxes, aliases and catch-alls: the one
module under the management notebook and the ``mailops user|alias|domain|catchall``
commands.

Every operation is planned first from one read of the users database (no
password hashes travel for that): a :class:`Plan` lists the rows it would
insert, update or delete, the server actions that follow (flush the auth cache,
end sessions, set mail aside, make a DKIM key) and the reasons.  Planning never
writes.  :func:`apply` sends the rows to the users-database helper, which writes
them in one transaction and only if every row is still as the plan saw it; the
actions follow.  A bad input raises :class:`ManageError` naming the field, before
anything is read or written.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import secrets as _secrets
import time
from pathlib import Path
from typing import Any, Callable

from mailops.core.host import CommandError
from mailops.core.layout import BACKUP, VHOSTS
from mailops.core.params import FQDN_RE, LOCAL_PART_RE
from mailops.core.resources.maildb import policy_of, scheme_for_host, userdb
from mailops.core.secrets import Secret

REMOVED_DIR = f"{VHOSTS}/.removed"       # mail of removed mailboxes, by date (never a domain name)
PASSWORD_DIR = Path.home() / ".mailops" / "initial-passwords"
MAX_ADDRESS = 254


class ManageError(ValueError):
    """A bad input or a refused change; nothing was written."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


# -- validation ---------------------------------------------------------------------
def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def check_domain(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ManageError(field, "a domain name is required")
    if any(ord(c) > 127 for c in value):
        try:
            hint = f": write it as {value.encode('idna').decode()!r}"
        except UnicodeError:
            hint = ""
        raise ManageError(field, f"{_shown(value)} is an internationalized name; mailops "
                                 f"takes the punycode (ASCII) form{hint}")
    if value != value.lower():
        raise ManageError(field, f"{_shown(value)} must be lower case")
    if not FQDN_RE.fullmatch(value):
        raise ManageError(field, f"{_shown(value)} is not a domain name: labels of a-z, 0-9 "
                                 "and '-' separated by dots, e.g. example.com")
    return value


def check_address(field: str, value: Any) -> str:
    """A mail address as mailops stores it; the message says what is wrong."""
    if not isinstance(value, str) or not value:
        raise ManageError(field, "an address local@domain is required")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ManageError(field, f"{_shown(value)} contains a control character (a newline?)")
    if len(value) > MAX_ADDRESS:
        raise ManageError(field, f"too long ({len(value)} characters, at most {MAX_ADDRESS})")
    local, at, domain = value.rpartition("@")
    if not at or not local:
        raise ManageError(field, f"{_shown(value)} is not an address local@domain")
    if any(ord(c) > 127 for c in local):
        raise ManageError(field, f"{_shown(value)}: non-ASCII local parts (SMTPUTF8) are "
                                 "not supported")
    check_domain(field, domain)
    if len(local) > 64:
        raise ManageError(field, f"local part too long ({len(local)} characters, at most 64)")
    if local != local.lower():
        raise ManageError(field, f"{_shown(value)} must be lower case")
    if not LOCAL_PART_RE.fullmatch(local) or ".." in local:
        raise ManageError(field, f"{_shown(value)}: the local part takes a-z, 0-9 and . _ + - "
                                 "only (no quotes, %, spaces, shell or SQL characters)")
    return value


def check_quota(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ManageError(field, f"{_shown(value)} must be a whole number of MiB above 0 "
                                 "(to use the server's default quota, give 'default')")
    if value > 10_000_000:
        raise ManageError(field, f"{value} MiB is more than 10 TiB")
    return value


# -- state and plans ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class State:
    """The users database as the helper's snapshot shows it (no password hashes)."""
    domains: dict[str, bool]
    mailboxes: dict[str, dict]
    aliases: dict[str, frozenset[str]]
    catchall: dict[str, str]

    @classmethod
    def parse(cls, data: dict) -> "State":
        if data.get("version", 0) < 2:
            raise ManageError("users database", f"schema {data.get('version', 0)} on the "
                              "server: run 30-users-db (mailops provision --apply) first")
        aliases: dict[str, set[str]] = {}
        for s, d in data["aliases"]:
            aliases.setdefault(s, set()).add(d)
        return cls({n: bool(a) for n, a in data["domains"]},
                   {a: {"active": bool(act), "quota_bytes": q, "created": c}
                    for a, act, q, c in data["mailboxes"]},
                   {s: frozenset(d) for s, d in aliases.items()},
                   dict(data["catchall"]))

    def pointing_at(self, address: str) -> dict[str, list[str]]:
        """Aliases and catch-alls whose destination is ``address``."""
        return {"aliases": sorted(s for s, d in self.aliases.items() if address in d),
                "catch-alls": sorted("@" + dom for dom, d in self.catchall.items()
                                     if d == address)}


def read_state(host) -> State:
    return State.parse(userdb(host, "snapshot"))


@dataclasses.dataclass(frozen=True)
class Row:
    """One row the plan inserts, updates or deletes."""
    table: str
    op: str                                  # insert | update | delete
    key: dict
    before: dict | None = None
    after: dict | None = None

    def wire(self) -> dict:
        after = {k: (v.reveal() if isinstance(v, Secret) else v)
                 for k, v in (self.after or {}).items()}
        return {"table": self.table, "op": self.op, "key": self.key,
                "before": self.before, "after": after}

    @property
    def name(self) -> str:
        return ", ".join(str(v) for v in self.key.values())

    def values(self, side: str) -> str:
        """The row's columns before or after the change, as shown ("" where there are none;
        a password hash is never shown)."""
        if side == "after":
            cols = self.after or {}
        elif self.op == "update":      # the columns the update changes, as they were
            cols = {k: ("(old hash)" if k == "password" else (self.before or {}).get(k, "?"))
                    for k in self.after or {}}
        else:
            cols = self.before or {}
        return " ".join(f"{k}={'(hash)' if isinstance(v, Secret) else v}" for k, v in cols.items())

    def diff_lines(self) -> list[str]:
        minus = f"- {self.table} {self.name}  {self.values('before')}".rstrip()
        plus = f"+ {self.table} {self.name}  {self.values('after')}".rstrip()
        return {"insert": [plus], "delete": [minus]}.get(self.op, [minus, plus])


@dataclasses.dataclass(frozen=True)
class Effect:
    """A server action after the rows are written (described, then run)."""
    what: str
    run: Callable[[Any], str | None] = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Plan:
    action: str
    rows: tuple[Row, ...] = ()
    effects: tuple[Effect, ...] = ()
    notes: tuple[str, ...] = ()
    diff_text: str = ""          # a unified diff of a file the plan replaces (a sieve script)

    @property
    def empty(self) -> bool:
        return not self.rows and not self.effects

    def diff(self) -> str:
        rows = "\n".join(line for r in self.rows for line in r.diff_lines())
        return "\n".join(t for t in (rows, self.diff_text.rstrip("\n")) if t)

    def __str__(self) -> str:
        lines = [f"{self.action}: " + ("no changes" if self.empty else
                                        f"{len(self.rows)} row(s), {len(self.effects)} action(s)")]
        lines += ["  " + line for line in self.diff().splitlines()]
        lines += [f"  then: {e.what}" for e in self.effects]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def table(self) -> list[dict]:
        rows = [{"table": r.table, "change": r.op, "row": r.name,
                 "before": r.values("before") if r.op != "insert" else "",
                 "after": r.values("after") if r.op != "delete" else ""} for r in self.rows]
        rows += [{"table": "(server)", "change": "then", "row": e.what, "before": "", "after": ""}
                 for e in self.effects]
        return rows

    def _repr_html_(self) -> str:
        from mailops.core.tables import details, html_table
        note = "".join(f" — {n}" for n in self.notes)
        return html_table(self.table(), ["table", "change", "row", "before", "after"],
                          title=f"{self.action}: {'no changes' if self.empty else 'planned'}",
                          note=note) + details("diff", self.diff_text)


@dataclasses.dataclass(frozen=True)
class Outcome:
    plan: Plan
    applied: bool
    seconds: float
    messages: tuple[str, ...] = ()

    @property
    def head(self) -> str:
        return "applied" if self.applied else "dry run: nothing written"

    def __str__(self) -> str:
        return "\n".join([str(self.plan), f"-> {self.head} ({self.seconds:.2f}s)",
                          *[f"   {m}" for m in self.messages]])

    def record(self) -> dict:
        """The run record a notebook's last cell writes (never a hash or password)."""
        return {"action": self.plan.action, "status": "applied" if self.applied else "planned",
                "rows": len(self.plan.rows), "changes": len(self.plan.rows) + len(self.plan.effects),
                "targets": self.plan.diff().splitlines()[:200],
                "then": [e.what for e in self.plan.effects], "messages": list(self.messages),
                "seconds": round(self.seconds, 3)}

    def raise_for_status(self) -> None:
        """A failed write raised already (nothing is half-applied in the database)."""

    def _repr_html_(self) -> str:
        from mailops.core.tables import html_table
        return self.plan._repr_html_() + html_table(
            [{"result": m} for m in self.messages] or [{"result": self.head}],
            title=f"{self.head} in {self.seconds:.2f}s")


def apply(host, plan: Plan, *, dry_run: bool = False) -> Outcome:
    """Write the plan's rows in one transaction, then run its actions."""
    start = time.monotonic()
    if dry_run or plan.empty:
        return Outcome(plan, False, time.monotonic() - start)
    if plan.rows:
        userdb(host, "apply_rows", {"rows": [r.wire() for r in plan.rows]})
    messages = [m for m in (e.run(host) for e in plan.effects) if m]
    return Outcome(plan, True, time.monotonic() - start, tuple(messages))


# -- server actions -----------------------------------------------------------------
def _flush(address: str) -> Effect:
    return Effect(f"flush {address} from dovecot's auth cache",
                  lambda h: h.run(["doveadm", "auth", "cache", "flush", address]) and None)


def _kick(address: str) -> Effect:
    def run(h):
        r = h.run(["doveadm", "kick", address], check=False)
        if r.exit_code not in (0, 68):                    # 68: no session to end
            raise CommandError(r)
        return None
    return Effect(f"end {address}'s IMAP and ManageSieve sessions", run)


def home_of(address: str) -> str:
    local, domain = address.split("@")
    return f"{VHOSTS}/{domain}/{local}"


def _set_aside(address: str, stamp: str) -> Effect:
    src, dst = home_of(address), f"{REMOVED_DIR}/{stamp}/{address}"
    script = ('set -e; [ -e "$1" ] || { echo "no mail stored"; exit 0; }; '
              'mkdir -p -m 0750 "$(dirname "$2")"; chown vmail:vmail "$(dirname "$2")" '
              '"$(dirname "$(dirname "$2")")"; mv -T "$1" "$2"; echo "mail kept in $2"')
    return Effect(f"move {src} to {dst} (the mail is kept)",
                  lambda h: h.run(["sh", "-c", script, "mailops_set_aside", src, dst]).out.strip())


def _archive_then_delete(address: str, stamp: str) -> Effect:
    src = home_of(address)
    archive = f"removed-{address}-{stamp}"
    script = ('set -e; [ -e "$1" ] || { echo "no mail stored"; exit 0; }; '
              f'{BACKUP.wrapper} create --compression zstd,6 "::$2" "$1"; '
              f'{BACKUP.wrapper} list --short "::$2" >/dev/null; '
              'rm -rf -- "$1"; echo "mail archived in borg archive $2, then deleted"')
    return Effect(f"archive {src} as borg archive {archive}, check it is listed, then delete it",
                  lambda h: h.run(["sh", "-c", script, "mailops_purge_mailbox", src, archive],
                                  timeout=1800).out.strip())


# -- operations (pure: a State in, a Plan out) ---------------------------------------
def _need_domain(state: State, field: str, domain: str) -> None:
    if domain not in state.domains:
        raise ManageError(field, f"domain {domain} is not a mail domain here "
                                 f"(add it first: mailops domain add {domain})")


def need_mailbox(state: State, field: str, address: str) -> dict:
    found = state.mailboxes.get(address)
    if found is None:
        raise ManageError(field, f"no mailbox {address}")
    return found


def plan_add_mailbox(state: State, address: str, hashed: Secret,
                     quota_mb: int | None = None) -> Plan:
    check_address("address", address)
    quota = 0 if quota_mb is None else check_quota("quota_mb", quota_mb) * 1048576
    _need_domain(state, "address", address.split("@")[1])
    if address in state.mailboxes:
        raise ManageError("address", f"mailbox {address} exists already")
    if address in state.aliases:
        raise ManageError("address", f"{address} is an alias (of "
                                     f"{', '.join(sorted(state.aliases[address]))}); remove it "
                                     "first")
    row = Row("mailboxes", "insert", {"address": address},
              after={"domain": address.split("@")[1], "local_part": address.split("@")[0],
                     "password": hashed, "active": 1, "quota_bytes": quota})
    return Plan(f"add mailbox {address}", (row,))


def plan_add_mailboxes(state: State, entries: list[tuple[str, Secret, int | None]]) -> Plan:
    """Several mailboxes in one transaction (all or none)."""
    rows, seen = [], set()
    for i, (address, hashed, quota_mb) in enumerate(entries):
        if address in seen:
            raise ManageError(f"addresses[{i}]", f"{address} given twice")
        seen.add(address)
        rows += plan_add_mailbox(state, address, hashed, quota_mb).rows
    return Plan(f"add mailbox {entries[0][0]}" if len(rows) == 1 else f"add {len(rows)} mailbox(es)",
                tuple(rows))


def plan_set_password(state: State, address: str, hashed: Secret) -> Plan:
    check_address("address", address)
    need_mailbox(state, "address", address)
    row = Row("mailboxes", "update", {"address": address}, before={}, after={"password": hashed})
    return Plan(f"set the password of {address}", (row,), (_flush(address),))


def plan_set_quota(state: State, address: str, quota_mb: int | str) -> Plan:
    check_address("address", address)
    found = need_mailbox(state, "address", address)
    quota = 0 if quota_mb == "default" else check_quota("quota_mb", quota_mb) * 1048576
    if found["quota_bytes"] == quota:
        return Plan(f"set the quota of {address}")
    row = Row("mailboxes", "update", {"address": address},
              before={"quota_bytes": found["quota_bytes"]}, after={"quota_bytes": quota})
    return Plan(f"set the quota of {address}", (row,), (_flush(address),))


def plan_set_active(state: State, address: str, active: bool) -> Plan:
    check_address("address", address)
    found = need_mailbox(state, "address", address)
    verb = "enable" if active else "disable"
    if found["active"] == active:
        return Plan(f"{verb} {address}")
    row = Row("mailboxes", "update", {"address": address},
              before={"active": int(found["active"])}, after={"active": int(active)})
    effects = (_flush(address),) if active else (_flush(address), _kick(address))
    note = ("" if active else "mail to it is still delivered and kept; no login on any port "
            "(IMAP, SMTP AUTH, ManageSieve) until it is enabled again")
    return Plan(f"{verb} {address}", (row,), effects, (note,) if note else ())


def plan_remove_mailbox(state: State, address: str, *, cascade: bool = False,
                        purge: bool = False, backup_enabled: bool = False,
                        stamp: str | None = None) -> Plan:
    check_address("address", address)
    found = need_mailbox(state, "address", address)
    if purge and not backup_enabled:
        raise ManageError("purge", "there is no backup repository to archive the mail in "
                                   "first; remove without --purge (the mail is moved aside)")
    refs = state.pointing_at(address)
    rows = [Row("mailboxes", "delete", {"address": address},
                before={"active": int(found["active"]), "quota_bytes": found["quota_bytes"]})]
    if refs["aliases"] or refs["catch-alls"]:
        if not cascade:
            named = ", ".join(refs["aliases"] + refs["catch-alls"])
            raise ManageError("address", f"{address} is the destination of {named}: remove "
                                         "those first, or pass --cascade to remove them with it")
        for src in refs["aliases"]:
            rows.append(Row("aliases", "delete", {"source": src, "destination": address}))
        for dom in refs["catch-alls"]:
            rows.append(Row("catchall", "delete", {"domain": dom[1:]},
                            before={"destination": address}))
    stamp = stamp or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    keep = _archive_then_delete(address, stamp) if purge else _set_aside(address, stamp)
    return Plan(f"remove mailbox {address}", tuple(rows),
                (_kick(address), _flush(address), keep))


def _resolves(state: State, address: str, extra: dict[str, frozenset[str]]) -> bool:
    aliases = {**state.aliases, **extra}
    return address in state.mailboxes or bool(aliases.get(address))


def _loop(aliases: dict[str, frozenset[str]], start: str) -> list[str] | None:
    """A cycle through ``start`` in the alias graph, if any."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for d in sorted(aliases.get(node, ())):
            if d == start:
                return path + [d]
            if d not in seen:
                seen.add(d)
                stack.append((d, path + [d]))
    return None


def plan_add_alias(state: State, source: str, destinations: list[str]) -> Plan:
    check_address("source", source)
    if not destinations:
        raise ManageError("destinations", "at least one destination is required")
    for i, d in enumerate(destinations):
        check_address(f"destinations[{i}]", d)
    _need_domain(state, "source", source.split("@")[1])
    if source in state.mailboxes:
        raise ManageError("source", f"{source} is a mailbox; an alias may not shadow it")
    current = state.aliases.get(source, frozenset())
    new = [d for d in dict.fromkeys(destinations) if d not in current]
    wanted = current | frozenset(new)
    for i, d in enumerate(destinations):
        if d == source:
            raise ManageError(f"destinations[{i}]", f"{d} is the alias itself (a loop)")
        if d.split("@")[1] not in state.domains:
            raise ManageError(f"destinations[{i}]",
                              f"{d} is outside this server's domains: forwarding out would "
                              "break SPF at the destination, and mailops does not run SRS; "
                              "refused (ask the user to forward from their own client, or "
                              "add the domain here)")
        if not _resolves(state, d, {source: wanted}):
            raise ManageError(f"destinations[{i}]", f"{d} is neither a mailbox nor an alias here")
    loop = _loop({**state.aliases, source: wanted}, source)
    if loop:
        raise ManageError("destinations", "alias loop: " + " -> ".join(loop))
    rows = tuple(Row("aliases", "insert", {"source": source, "destination": d}) for d in new)
    return Plan(f"alias {source} -> {', '.join(sorted(wanted))}", rows)


def plan_remove_alias(state: State, source: str, destinations: list[str] | None = None) -> Plan:
    check_address("source", source)
    current = state.aliases.get(source)
    if current is None:
        raise ManageError("source", f"no alias {source}")
    gone = sorted(current) if not destinations else destinations
    for i, d in enumerate(gone):
        check_address(f"destinations[{i}]", d)
        if d not in current:
            raise ManageError(f"destinations[{i}]", f"{source} does not point to {d}")
    left = current - set(gone)
    if not left:
        refs = state.pointing_at(source)
        if refs["aliases"] or refs["catch-alls"]:
            raise ManageError("source", f"{source} is the destination of "
                                        f"{', '.join(refs['aliases'] + refs['catch-alls'])}; "
                                        "remove those first")
    rows = tuple(Row("aliases", "delete", {"source": source, "destination": d}) for d in gone)
    return Plan(f"remove alias {source}" + (f" -> {', '.join(gone)}" if destinations else ""),
                rows)


def plan_set_catchall(state: State, domain: str, destination: str) -> Plan:
    check_domain("domain", domain)
    check_address("destination", destination)
    _need_domain(state, "domain", domain)
    if destination.split("@")[1] not in state.domains or not _resolves(state, destination, {}):
        raise ManageError("destination", f"{destination} is neither a mailbox nor an alias here")
    found = state.catchall.get(domain)
    if found == destination:
        return Plan(f"catch-all @{domain}")
    row = (Row("catchall", "insert", {"domain": domain}, after={"destination": destination})
           if found is None else
           Row("catchall", "update", {"domain": domain}, before={"destination": found},
               after={"destination": destination}))
    return Plan(f"catch-all @{domain} -> {destination}", (row,),
                notes=("mailboxes and aliases of the domain still get their own mail: the "
                       "catch-all takes only addresses that exist nowhere else",))


def plan_clear_catchall(state: State, domain: str) -> Plan:
    check_domain("domain", domain)
    found = state.catchall.get(domain)
    if found is None:
        return Plan(f"clear the catch-all of {domain}")
    return Plan(f"clear the catch-all of {domain}",
                (Row("catchall", "delete", {"domain": domain}, before={"destination": found}),))


def plan_add_domain(state: State, domain: str, *, dkim: Effect | None = None) -> Plan:
    check_domain("domain", domain)
    if domain in state.domains:
        if state.domains[domain]:
            raise ManageError("domain", f"{domain} is a mail domain here already")
        return Plan(f"add domain {domain}", (Row("domains", "update", {"name": domain},
                                                 before={"active": 0}, after={"active": 1}),))
    rows = (Row("domains", "insert", {"name": domain}, after={"active": 1}),)
    return Plan(f"add domain {domain}", rows, (dkim,) if dkim else ())


def plan_remove_domain(state: State, domain: str) -> Plan:
    check_domain("domain", domain)
    if domain not in state.domains:
        raise ManageError("domain", f"{domain} is not a mail domain here")
    boxes = [a for a in state.mailboxes if a.endswith("@" + domain)]
    aliases = [a for a in state.aliases if a.endswith("@" + domain)]
    if boxes or aliases:
        listed = ", ".join((boxes + aliases)[:5]) + (" ..." if len(boxes) + len(aliases) > 5 else "")
        raise ManageError("domain", f"{domain} still has {len(boxes)} mailbox(es) and "
                                    f"{len(aliases)} alias(es) ({listed}); remove them first")
    # the catch-all row refers to the domain: it goes first
    rows = [Row("catchall", "delete", {"domain": domain},
                before={"destination": state.catchall[domain]})] if domain in state.catchall else []
    rows.append(Row("domains", "delete", {"name": domain},
                    before={"active": int(state.domains[domain])}))
    return Plan(f"remove domain {domain}", tuple(rows),
                notes=("its DKIM key stays on the server (remove it by hand once the DNS "
                       "record is gone)",))


# -- passwords ------------------------------------------------------------------------
def generate_password() -> Secret:
    return Secret(_secrets.token_urlsafe(18))


def write_password_file(address: str, password: Secret, directory: Path | None = None) -> Path:
    """A generated initial password, in a 0600 file in a 0700 directory (out of the repository)."""
    import os
    directory = directory or PASSWORD_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    path = directory / f"{address}.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, password.reveal().encode() + b"\n")
    finally:
        os.close(fd)
    return path


def hasher(session) -> Callable[[Secret], Secret]:
    """Hash passwords here with the parameters' cost, in the best scheme the server's
    dovecot knows (asked once)."""
    from mailops.core.passwords import hash_password
    pol = policy_of(session.params)
    scheme = scheme_for_host(session.host, pol)

    def hash_one(password: Secret) -> Secret:
        try:
            return Secret(hash_password(password, scheme, sha512_rounds=pol.sha512_rounds,
                                        bcrypt_cost=pol.bcrypt_cost))
        except ValueError as exc:
            raise ManageError("password", str(exc)) from None
    return hash_one


def hash_for(session, password: Secret) -> Secret:
    return hasher(session)(password)
