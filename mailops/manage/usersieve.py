"""Each user's own sieve rules, and the vacation (out-of-office) an admin sets.

Users' scripts are read and written with ``doveadm sieve`` (dovecot 2.3 and 2.4,
no user password), so scripts a user uploaded over ManageSieve are the same
scripts: they are listed, and a put that would replace one with other content
is refused unless asked for, after its diff was shown.  Every script is parsed
here first (sievelib), then compiled by the server before it is stored; a
script that fails leaves the old one in place and active.

The vacation is an admin script in ``<home>/sieve-admin/`` that dovecot runs
before the user's own script (40-dovecot), so the user's rules keep working
while it is on and the user cannot switch it off by uploading a script.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import json
import re

from mailops.core.facts import dovecot_series
from .accounts import Effect, ManageError, Plan, check_address, home_of, need_mailbox, read_state
from mailops.remote import source

VACATION = "vacation"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FOLDER = re.compile(r"^[^\x00-\x1f\x7f\"\\*%]{1,200}$")


# -- validation -------------------------------------------------------------------------
def check_name(field: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ManageError(field, f"{name!r} is not a script name: letters, digits, . _ - "
                                 "(at most 64, not starting with a dot)")
    return name


def check_script(text: str, field: str = "script") -> str:
    """Parse a sieve script here (sievelib); the server compiles it again before storing."""
    from sievelib.parser import Parser
    if not isinstance(text, str) or not text.strip():
        raise ManageError(field, "the script is empty")
    parser = Parser()
    if not parser.parse(text):
        raise ManageError(field, f"not valid sieve: {parser.error}")
    return text


def _q(text: str) -> str:
    """A sieve quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- reading ----------------------------------------------------------------------------
def _helper(host, req: dict) -> dict:
    res = host.run(["python3", "-c", source("sieveadmin"), "sieveadmin", req["op"]],
                   stdin=json.dumps(req).encode(), timeout=120)
    return json.loads(res.out)


def _user_scripts(host, address: str) -> list[dict]:
    out = host.run(["doveadm", "sieve", "list", "-u", address]).out
    return [{"name": line.split()[0], "active": line.rstrip().endswith("ACTIVE"), "owner": "user"}
            for line in out.splitlines() if line.strip()]


def _vacation_text(host, address: str) -> str | None:
    """The admin's vacation script of ``address`` (None when there is none)."""
    return _helper(host, {"op": "get", "home": home_of(address), "name": VACATION})["text"] or None


def scripts(session, address: str) -> list[dict]:
    """The user's scripts (name, active) and the admin's (vacation)."""
    check_address("address", address)
    rows = _user_scripts(session.host, address)
    if _vacation_text(session.host, address):
        rows.append({"name": VACATION, "active": True, "owner": "admin (runs first)"})
    return rows


def table(session, address: str):
    import pandas as pd
    return pd.DataFrame(scripts(session, address), columns=["name", "active", "owner"])


def show(session, address: str, name: str) -> str | None:
    check_address("address", address)
    check_name("name", name)
    return _get(session.host, address, name)


def _get(host, address: str, name: str) -> str | None:
    r = host.run(["doveadm", "sieve", "get", "-u", address, name], check=False)
    if not r.ok:
        return None
    # doveadm's pager formatter puts a "sieve script:" line before the text (2.3 and 2.4)
    head, _, text = r.out.partition("\n")
    return text if head == "sieve script:" else r.out


def _diff(old: str | None, new: str | None, name: str) -> str:
    return "".join(difflib.unified_diff((old or "").splitlines(True), (new or "").splitlines(True),
                                        f"{name} (on the server)" if old is not None else "/dev/null",
                                        f"{name} (planned)" if new is not None else "/dev/null"))


# -- the user's scripts -------------------------------------------------------------------
def plan_put(session, address: str, name: str, text: str, *, activate: bool = False,
             replace: bool = False) -> Plan:
    check_address("address", address)
    check_name("name", name)
    check_script(text)
    need_mailbox(read_state(session.host), "address", address)
    old = _get(session.host, address, name)
    if old is not None and old == text:
        if not activate or any(s["name"] == name and s["active"]
                               for s in _user_scripts(session.host, address)):
            return Plan(f"sieve script {name} of {address}")
    if old is not None and old != text and not replace:
        raise ManageError("name", f"{address} has a script {name!r} with other content (perhaps "
                                  "uploaded over ManageSieve); read the diff and pass "
                                  "replace=True (--replace) to overwrite it:\n"
                                  + _diff(old, text, name))
    argv = ["doveadm", "sieve", "put", "-u", address] + (["-a"] if activate else []) + [name]
    eff = Effect(f"compile and store {name}" + (" and make it the active script" if activate else ""),
                 lambda h: h.run(argv, stdin=text.encode()) and f"stored {name}"
                 + (" (active)" if activate else ""))
    return Plan(f"sieve script {name} of {address}", (), (eff,), diff_text=_diff(old, text, name))


def plan_activate(session, address: str, name: str) -> Plan:
    check_address("address", address)
    check_name("name", name)
    current = _user_scripts(session.host, address)
    if not any(s["name"] == name for s in current):
        raise ManageError("name", f"{address} has no script {name!r}")
    if any(s["name"] == name and s["active"] for s in current):
        return Plan(f"activate {name} of {address}")
    return Plan(f"activate {name} of {address}", (), (Effect(
        f"make {name} the active script (the others stay stored)",
        lambda h: h.run(["doveadm", "sieve", "activate", "-u", address, name]) and None),))


def plan_deactivate(session, address: str) -> Plan:
    check_address("address", address)
    if not any(s["active"] for s in _user_scripts(session.host, address)):
        return Plan(f"deactivate the sieve script of {address}")
    return Plan(f"deactivate the sieve script of {address}", (), (Effect(
        "no active script (all stay stored)",
        lambda h: h.run(["doveadm", "sieve", "deactivate", "-u", address]) and None),))


def plan_delete(session, address: str, name: str) -> Plan:
    check_address("address", address)
    check_name("name", name)
    old = _get(session.host, address, name)
    if old is None:
        raise ManageError("name", f"{address} has no script {name!r}")
    active = any(s["name"] == name and s["active"] for s in _user_scripts(session.host, address))
    argv = ["doveadm", "sieve", "delete", "-u", address] + (["-a"] if active else []) + [name]
    return Plan(f"delete sieve script {name} of {address}", (), (Effect(
        f"delete {name}" + (" (the active script: no rules run afterwards)" if active else ""),
        lambda h: h.run(argv) and None),), diff_text=_diff(old, None, name))


# -- dry runs on the server -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TestResult:
    subject: str
    ok: bool
    actions: str


def test(session, address: str, script: str, messages: list[str | bytes],
         sender: str = "sender@example.org") -> list[TestResult]:
    """What ``script`` would do with each message (sieve-test on the server: the
    actions are listed, nothing is delivered, filed or sent)."""
    check_address("address", address)
    check_script(script)
    texts = [m.decode("utf-8", "replace") if isinstance(m, bytes) else m for m in messages]
    reply = _helper(session.host, {"op": "test", "script": script, "messages": texts,
                                   "recipient": address, "sender": sender,
                                   "series": dovecot_series(session.info)})
    out = []
    for text, r in zip(texts, reply["results"]):
        m = re.search(r"(?im)^subject:[ \t]*(.*)$", text.split("\n\n", 1)[0])
        body = r["out"].strip()
        actions = body.split("Performed actions:", 1)[-1].strip() if r["code"] == 0 else \
            (r["err"] or body).strip()[-600:]
        out.append(TestResult(m.group(1).strip() if m else "(no subject)", r["code"] == 0,
                              actions))
    return out


def test_table(results: list[TestResult]):
    import pandas as pd
    return pd.DataFrame([dataclasses.asdict(r) for r in results], columns=["subject", "ok", "actions"])


# -- a small rule builder -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rule:
    """If ``field`` (a header, or ``from``/``to``/``cc`` compared as addresses)
    ``match``es (contains|is|matches) ``value``: ``action`` (fileinto|discard|redirect|flag)
    with ``argument`` (a folder, an address, a flag)."""
    field: str
    value: str
    action: str
    argument: str = ""
    match: str = "contains"
    stop: bool = True

    def check(self, i: int) -> None:
        f = f"rules[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9-]{1,60}", self.field):
            raise ManageError(f + ".field", f"{self.field!r} is not a header name")
        if self.match not in ("contains", "is", "matches"):
            raise ManageError(f + ".match", "contains, is or matches")
        if any(ord(c) < 32 for c in self.value):
            raise ManageError(f + ".value", "no control characters")
        if self.action == "fileinto":
            if not _FOLDER.fullmatch(self.argument or ""):
                raise ManageError(f + ".argument", f"{self.argument!r} is not a folder name")
        elif self.action == "redirect":
            check_address(f + ".argument", self.argument)
        elif self.action == "flag":
            if not re.fullmatch(r"\\?[A-Za-z$]{1,40}", self.argument or ""):
                raise ManageError(f + ".argument", "a flag such as \\Flagged or $label1")
        elif self.action != "discard":
            raise ManageError(f + ".action", "fileinto, discard, redirect or flag")


def build(rules: list[Rule]) -> str:
    """Readable sieve for the rules, in order; the first matching rule with ``stop`` ends."""
    if not rules:
        raise ManageError("rules", "at least one rule")
    for i, r in enumerate(rules):
        r.check(i)
    need = set()
    lines = []
    for r in rules:
        test_ = (f"address :{r.match} {_q(r.field.lower())} {_q(r.value)}"
                 if r.field.lower() in ("from", "to", "cc", "sender", "reply-to") else
                 f"header :{r.match} {_q(r.field)} {_q(r.value)}")
        if r.action == "fileinto":
            need |= {"fileinto", "mailbox"}
            act = f"fileinto :create {_q(r.argument)};"
        elif r.action == "redirect":
            act = f"redirect {_q(r.argument)};"
        elif r.action == "flag":
            need.add("imap4flags")
            act = f"addflag {_q(r.argument)};"
        else:
            act = "discard;"
        lines.append(f"# {r.field} {r.match} {r.value!r} -> {r.action} {r.argument}".rstrip())
        lines.append(f"if {test_} {{\n    {act}" + ("\n    stop;" if r.stop else "") + "\n}")
    head = f"require [{', '.join(_q(n) for n in sorted(need))}];\n" if need else ""
    return "# written by mailops' rule builder\n" + head + "\n".join(lines) + "\n"


# -- vacation ----------------------------------------------------------------------------------
def aliases_of(state, address: str) -> list[str]:
    """Every alias that ends up delivering to ``address`` (directly or through other aliases)."""
    found: set[str] = set()
    frontier = {address}
    while frontier:
        nxt = {s for s, d in state.aliases.items() if d & frontier} - found
        found |= nxt
        frontier = nxt
    catch = [f"@{dom}" for dom, d in state.catchall.items() if d == address]
    return sorted(found) + catch


def vacation_script(start: dt.date, end: dt.date, subject: str, body: str, days: int,
                    addresses: list[str]) -> str:
    addr = ", ".join(_q(a) for a in addresses if not a.startswith("@"))
    return (
        "# vacation set by the postmaster with mailops (runs before the user's own rules)\n"
        'require ["vacation", "date", "relational"];\n'
        f'if allof (currentdate :value "ge" "date" {_q(start.isoformat())},\n'
        f'          currentdate :value "le" "date" {_q(end.isoformat())}) {{\n'
        f"    vacation :days {days} :subject {_q(subject)}"
        + (f"\n        :addresses [{addr}]" if addr else "")
        + f"\n        {_q(body)};\n}}\n")


def plan_vacation(session, address: str, start: dt.date | str, end: dt.date | str,
                  subject: str, body: str, days: int = 7) -> Plan:
    """An out-of-office reply from ``start`` to ``end`` (inclusive, server time):
    at most once per sender per ``days``, never to ``<>``, lists, bulk or
    auto-submitted mail (dovecot's vacation rules), also for mail to the user's
    aliases.  It stops by itself after ``end``."""
    check_address("address", address)
    start_d, end_d = _date("start", start), _date("end", end)
    if end_d < start_d:
        raise ManageError("end", f"{end_d} is before the start {start_d}")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 60:
        raise ManageError("days", f"{days!r}: a whole number from 1 to 60")
    if not isinstance(subject, str) or not subject.strip() or any(ord(c) < 32 for c in subject):
        raise ManageError("subject", "one line of text is required")
    if not isinstance(body, str) or not body.strip():
        raise ManageError("body", "the reply's text is required")
    st = read_state(session.host)
    need_mailbox(st, "address", address)
    text = vacation_script(start_d, end_d, subject, body, days, aliases_of(st, address))
    check_script(text)
    home = home_of(address)
    old = _vacation_text(session.host, address)
    if old == text:
        return Plan(f"vacation of {address}")
    eff = Effect(f"compile and install the vacation script in {home}/sieve-admin/",
                 lambda h: _helper(h, {"op": "put", "home": home, "name": VACATION,
                                       "text": text}) and
                 f"vacation on from {start_d} to {end_d}")
    return Plan(f"vacation of {address}", (), (eff,), diff_text=_diff(old, text, VACATION))


def plan_vacation_off(session, address: str) -> Plan:
    check_address("address", address)
    home = home_of(address)
    old = _vacation_text(session.host, address)
    if old is None:
        return Plan(f"vacation of {address} off")
    return Plan(f"vacation of {address} off", (), (Effect(
        "remove the vacation script", lambda h: _helper(h, {"op": "remove", "home": home,
                                                            "name": VACATION}) and None),),
        diff_text=_diff(old, None, VACATION))


def _date(field: str, value) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ManageError(field, f"{value!r} is not a date YYYY-MM-DD") from None


ACTIONS = ("list", "put", "activate", "deactivate", "delete", "vacation", "vacation-off")


def plan_for(session, action: str, address: str, *, name: str = "", script: str = "",
             rules=(), activate: bool = False, replace: bool = False,
             vacation: dict | None = None) -> Plan:
    """The plan for one of :data:`ACTIONS` (the sieve notebook's parameters); ``rules``
    (dicts of :class:`Rule`'s fields) build the script when ``script`` is empty."""
    if action == "list":
        return Plan("list (nothing to change)")
    if action == "put":
        text = script_from(script, rules)
        if not text:
            raise ManageError("script", "put needs a script or rules")
        return plan_put(session, address, name, text, activate=activate, replace=replace)
    if action == "activate":
        return plan_activate(session, address, name)
    if action == "deactivate":
        return plan_deactivate(session, address)
    if action == "delete":
        return plan_delete(session, address, name)
    if action == "vacation":
        return plan_vacation(session, address, **(vacation or {}))
    if action == "vacation-off":
        return plan_vacation_off(session, address)
    raise ManageError("action", f"{action!r}: one of {', '.join(ACTIONS)}")


def script_from(script: str = "", rules=()) -> str:
    """``script`` itself, else the script built from ``rules`` (dicts of Rule's fields)."""
    if script or not rules:
        return script
    built = []
    for i, r in enumerate(rules):
        try:
            built.append(Rule(**r))
        except TypeError as exc:
            raise ManageError(f"rules[{i}]", f"{exc} (fields: field, value, action, argument, "
                                             "match, stop)") from None
    return build(built)


def active_text(session, address: str) -> str:
    """The text of the user's active script ("" when none is active)."""
    active = [s["name"] for s in _user_scripts(session.host, address) if s["active"]]
    return (_get(session.host, address, active[0]) or "") if active else ""
