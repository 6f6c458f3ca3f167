"""Managing mail users on a running server: what the management notebook and
the ``mailops user|alias|domain|catchall`` commands call.

Each ``plan_*`` function reads the server once and returns a
:class:`mailops.manage.Plan` (rows to write, actions after, notes); nothing is
written until :func:`apply`.  Passwords are hashed here, with the cost from the
parameters, and travel only as hashes on stdin.
"""
from __future__ import annotations

import getpass
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import accounts as manage
from mailops.core.layout import VHOSTS
from .accounts import Effect, ManageError, Outcome, Plan, State
from mailops.core.resources.rspamd import DkimKey
from mailops.core.secrets import Secret, SecretError, resolve

LAST_LOGIN_PREFIX = "last-login/"
COLUMNS = ["address", "active", "quota_mb", "used_mb", "used_pct", "messages", "disk_mb",
           "last_login", "created"]


def state(session) -> State:
    return manage.read_state(session.host)


def apply(session, plan: Plan, dry_run: bool = False) -> Outcome:
    return manage.apply(session.host, plan, dry_run=dry_run)


# -- passwords --------------------------------------------------------------------------
def password_from(source: str, *, generate: bool = True, base: Path | None = None
                  ) -> Secret | None:
    """A password: ``prompt`` (getpass, typed twice), ``generate`` (None: made at
    planning; refused unless ``generate``), or a secret reference
    (``file:PATH[#key]``, ``env:NAME``, relative to ``base``, default the working directory)."""
    if source == "generate":
        if not generate:
            raise ManageError("password", "a password change takes prompt, file:... or env:...")
        return None
    if source == "prompt":
        try:
            first = getpass.getpass("new password: ")
            again = getpass.getpass("again: ")
        except Exception as exc:  # noqa: BLE001 - papermill's kernel cannot ask
            raise ManageError("password", f"cannot prompt here ({type(exc).__name__}): give "
                                          "generate, file:PATH[#key] or env:NAME") from None
        if first != again:
            raise ManageError("password", "the two entries differ")
        if len(first) < 12:
            raise ManageError("password", "at least 12 characters")
        return Secret(first)
    try:
        return resolve(source, base or Path.cwd())
    except SecretError as exc:
        raise ManageError("password", str(exc)) from None


# -- mailboxes --------------------------------------------------------------------------
def plan_add_mailbox(session, address: str, password: Secret | None = None,
                     quota_mb: int | None = None) -> Plan:
    """Add a mailbox; without a password one is generated and, at apply, written to a
    0600 file under ~/.mailops/initial-passwords/ (its path is shown, never the password)."""
    return _plan_add(session, [(address, password)], quota_mb)


def plan_add_mailboxes(session, addresses: list[str], quota_mb: int | None = None) -> Plan:
    """Many mailboxes in one transaction, each with a generated password in its own file."""
    return _plan_add(session, [(a, None) for a in addresses], quota_mb)


def _plan_add(session, entries: list[tuple[str, Secret | None]], quota_mb: int | None) -> Plan:
    for i, (a, _) in enumerate(entries):
        manage.check_address("address" if len(entries) == 1 else f"addresses[{i}]", a)
    st = state(session)
    generated: dict[str, Secret] = {}
    for a, given in entries:
        if given is None:
            generated[a] = manage.generate_password()
    passwords = [given or generated[a] for a, given in entries]
    hash_one = manage.hasher(session)
    # the cost is deliberate (tens of ms each): spread over the cores (bcrypt frees the GIL)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        hashed = list(pool.map(hash_one, passwords))
    plan = manage.plan_add_mailboxes(st, [(a, h, quota_mb) for (a, _), h in zip(entries, hashed)])
    if not generated:
        return plan

    def keep(h):
        paths = [manage.write_password_file(a, p) for a, p in generated.items()]
        if len(paths) == 1:
            return f"initial password of {next(iter(generated))} in {paths[0]}"
        return f"{len(paths)} initial password file(s) in {manage.PASSWORD_DIR}"
    what = (f"password to {manage.PASSWORD_DIR}/{next(iter(generated))}.txt"
            if len(generated) == 1 else f"passwords to {manage.PASSWORD_DIR}/")
    return Plan(plan.action, plan.rows, (Effect(f"write the generated {what} (0600)", keep),))


def plan_set_password(session, address: str, password: Secret) -> Plan:
    manage.check_address("address", address)
    return manage.plan_set_password(state(session), address, manage.hash_for(session, password))


def set_password(session, address: str, password: Secret) -> float:
    """Set a mailbox's password now; returns the seconds until it was live."""
    start = time.monotonic()
    apply(session, plan_set_password(session, address, password))
    return time.monotonic() - start


def plan_set_quota(session, address: str, quota_mb: int | str) -> Plan:
    plan = manage.plan_set_quota(state(session), address, quota_mb)
    declared = [mb for mb in session.params.mail.mailboxes if mb.address == address]
    if declared and not plan.empty:
        note = (f"{address} is declared in the parameters with quota_mb "
                f"{declared[0].quota_mb}: the next provisioning run sets that again; change "
                "the parameters file to keep this")
        return Plan(plan.action, plan.rows, plan.effects, plan.notes + (note,))
    return plan


def plan_disable(session, address: str) -> Plan:
    return manage.plan_set_active(state(session), address, False)


def plan_enable(session, address: str) -> Plan:
    return manage.plan_set_active(state(session), address, True)


def plan_remove_mailbox(session, address: str, *, cascade: bool = False,
                        purge: bool = False) -> Plan:
    return manage.plan_remove_mailbox(state(session), address, cascade=cascade, purge=purge,
                                      backup_enabled=session.params.backup.enabled)


# -- aliases, catch-alls, domains ---------------------------------------------------------
def plan_add_alias(session, source: str, destinations: list[str]) -> Plan:
    return manage.plan_add_alias(state(session), source, destinations)


def plan_remove_alias(session, source: str, destinations: list[str] | None = None) -> Plan:
    return manage.plan_remove_alias(state(session), source, destinations)


def plan_set_catchall(session, domain: str, destination: str) -> Plan:
    return manage.plan_set_catchall(state(session), domain, destination)


def plan_clear_catchall(session, domain: str) -> Plan:
    return manage.plan_clear_catchall(state(session), domain)


def plan_add_domain(session, domain: str) -> Plan:
    """A domain row and, when rspamd signs mail, its DKIM key (made on the server with
    the rspamd step's code); :func:`dns_records` shows what to publish."""
    manage.check_domain("domain", domain)
    p = session.params
    dkim = None
    if p.rspamd.enabled:
        key = DkimKey(domain, p.rspamd.dkim_selector)
        if not session.host.run(["test", "-f", key.path], check=False).ok:
            dkim = Effect(f"make the DKIM key {key.path} (selector {key.selector})",
                          lambda h: key.apply(h, None) or f"DKIM key {key.path} made")
    return manage.plan_add_domain(state(session), domain, dkim=dkim)


def plan_remove_domain(session, domain: str) -> Plan:
    return manage.plan_remove_domain(state(session), domain)


def dns_records(session, domain: str):
    """What to publish for a mail domain: MX, SPF, DMARC and (when its key exists) DKIM."""
    from mailops.provision.dnsrecords import domain_records
    return domain_records(session, domain)


# -- one entry point for the notebook ------------------------------------------------------
ACTIONS = ("list", "add", "passwd", "quota", "disable", "enable", "remove", "alias-add",
           "alias-remove", "catchall-set", "catchall-clear", "domain-add", "domain-remove")


def plan_for(session, action: str, *, address: str = "", destinations=(), domain: str = "",
             quota_mb: int = 0, password: str = "prompt", cascade: bool = False,
             purge: bool = False) -> Plan:
    """The plan for one of :data:`ACTIONS` (the management notebook's parameters)."""
    dest = list(destinations)
    if action == "list":
        return Plan("list (nothing to change)")
    if action == "add":
        return plan_add_mailbox(session, address, password_from(password), quota_mb or None)
    if action == "passwd":
        return plan_set_password(session, address, password_from(password, generate=False))
    if action == "quota":
        return plan_set_quota(session, address, quota_mb or "default")
    if action in ("disable", "enable"):
        return (plan_disable if action == "disable" else plan_enable)(session, address)
    if action == "remove":
        return plan_remove_mailbox(session, address, cascade=cascade, purge=purge)
    if action == "alias-add":
        return plan_add_alias(session, address, dest)
    if action == "alias-remove":
        return plan_remove_alias(session, address, dest or None)
    if action == "catchall-set":
        if len(dest) != 1:
            raise ManageError("destinations", "catchall-set takes exactly one destination")
        return plan_set_catchall(session, domain, dest[0])
    if action == "catchall-clear":
        return plan_clear_catchall(session, domain)
    if action == "domain-add":
        return plan_add_domain(session, domain)
    if action == "domain-remove":
        return plan_remove_domain(session, domain)
    raise ManageError("action", f"{action!r}: one of {', '.join(ACTIONS)}")


# -- listing ------------------------------------------------------------------------------
USAGE = r"""doveadm -f tab quota get -A 2>/dev/null; echo '@@du'
cd "$1" 2>/dev/null && du -s --block-size=1 -- */* 2>/dev/null; echo '@@login'
if command -v redis-cli >/dev/null; then
  t=$(mktemp); redis-cli --scan --pattern "$2*" > "$t" 2>/dev/null
  cat "$t"; echo '@@values'
  xargs -r redis-cli --raw mget < "$t" 2>/dev/null; rm -f "$t"
fi
"""


def parse_usage(out: str) -> dict[str, dict]:
    """``doveadm quota get -A``, ``du`` and the last-login keys -> per-address figures."""
    quota, _, rest = out.partition("@@du\n")
    du, _, login = rest.partition("@@login\n")
    keys, _, values = login.partition("@@values\n")
    info: dict[str, dict] = {}
    for line in quota.splitlines()[1:]:
        f = line.split("\t")
        if len(f) >= 5 and f[2] in ("STORAGE", "MESSAGE"):
            d = info.setdefault(f[0], {})
            if f[2] == "STORAGE":
                d["used_kib"] = int(f[3])
            else:
                d["messages"] = int(f[3])
    for line in du.splitlines():
        size, _, rel = line.partition("\t")
        if "/" in rel and size.isdigit():
            domain, local = rel.split("/", 1)
            info.setdefault(f"{local}@{domain}", {})["disk_bytes"] = int(size)
    for k, v in zip(keys.splitlines(), values.splitlines()):
        if v.isdigit():
            info.setdefault(k[len(LAST_LOGIN_PREFIX):], {})["last_login"] = int(v)
    return info


def mailboxes(session, domain: str | None = None):
    """Every mailbox (or a domain's) as a DataFrame: address, active, quota, quota used
    (dovecot's own figure), messages, size on disk, last IMAP login, created.  Two
    round trips whatever the count."""
    import pandas as pd
    if domain is not None:
        manage.check_domain("domain", domain)
    st = state(session)
    out = session.host.run(["sh", "-c", USAGE, "mailops_usage", VHOSTS, LAST_LOGIN_PREFIX],
                           timeout=600).out
    usage = parse_usage(out)
    default = session.params.mail.default_quota_mb
    rows = []
    for address, mb in st.mailboxes.items():
        if domain and not address.endswith("@" + domain):
            continue
        u = usage.get(address, {})
        quota_mb = mb["quota_bytes"] / 1048576 if mb["quota_bytes"] else default
        used = u.get("used_kib", 0) / 1024
        login = u.get("last_login")
        rows.append({"address": address, "active": mb["active"], "quota_mb": round(quota_mb, 1),
                     "used_mb": round(used, 2),
                     "used_pct": round(100 * used / quota_mb, 1) if quota_mb else None,
                     "messages": u.get("messages", 0),
                     "disk_mb": round(u.get("disk_bytes", 0) / 1048576, 2),
                     "last_login": pd.Timestamp(login, unit="s", tz="UTC") if login else pd.NaT,
                     "created": pd.Timestamp(mb["created"]) if mb["created"] else pd.NaT})
    return pd.DataFrame(rows, columns=COLUMNS)


def list_mailboxes(session) -> list[dict]:
    """Address, active and quota of every mailbox (never the hashes)."""
    return [{"address": a, "active": m["active"], "quota_bytes": m["quota_bytes"]}
            for a, m in state(session).mailboxes.items()]


def aliases(session):
    import pandas as pd
    st = state(session)
    rows = [{"source": s, "destinations": ", ".join(sorted(d))} for s, d in sorted(st.aliases.items())]
    rows += [{"source": "@" + dom, "destinations": d + " (catch-all)"}
             for dom, d in sorted(st.catchall.items())]
    return pd.DataFrame(rows, columns=["source", "destinations"])
