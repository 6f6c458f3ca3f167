"""Postfix log figures with pflogsumm's definitions, exactly (Debian's 1.1.5-8).

A streaming parser: one compiled-regex pass over the lines, memory bounded by the
number of queue ids still open and the distinct senders, recipients and reasons.
It reads plain and ``.gz`` files, syslog timestamps (``Dec  1`` and postfix's own
``maillog_file`` with ``Dec 01``) and RFC 3339 ones.  The figures follow
pflogsumm's code (``/usr/sbin/pflogsumm``), quirks included, where it is a matter
of definition:

- delivered counts ``status=sent`` recipients, except those "forwarded as";
  deferred counts distinct queue ids, deferrals the lines; bounced the lines;
- rejected counts smtpd/postscreen ``reject:`` lines (plus ``reject_warning``,
  ``hold`` and ``discard`` in their own figures) and cleanup's
  ``(milter-)reject: header|body|END-OF-MESSAGE``; smtpd's ``NOQUEUE:
  milter-reject`` is not counted (pflogsumm's rule);
- the percentages are truncated: int(100 × rejected / (delivered + rejected + discarded));
- bytes and senders come from qmgr's ``from=<>, size=`` of messages that smtpd or
  pickup received in the same log, each queue id once.

Where pflogsumm is wrong, this is right, and says so: ``--day`` matches postfix's
zero-padded ``Dec 01`` too (pflogsumm's ``-d`` misses days 1-9 there), and an RFC
3339 timestamp keeps its own year (pflogsumm replaces it with this year's).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import gzip
import io
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Iterator

MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                      "Sep", "Oct", "Nov", "Dec"))}

_SYSLOG = re.compile(r"^(\w{3}) {1,2}(\d{1,2}) (\d{2}):(\d{2}):(\d{2}) \S+ (.+)$")
_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?"
                      r"(?:[+-]\d{2}:\d{2}|Z) \S+ (.+)$")
_CMD = re.compile(r"^(?:postfix)(?:/(?:smtps|submission))?/([^\[:]*).*?: ([^:\s]+)")
_CMD2 = re.compile(r"^((?:postfix)(?:-script)?)(?:\[\d+\])?: ([^:\s]+)")
_ID_STUFF = re.compile(r": \[ID \d+ [^\]]+\] ")
_CLEANUP = re.compile(r"/cleanup\[\d+\]: .*?\b((?:milter-)?reject|warning|hold|discard): "
                      r"(header|body|END-OF-MESSAGE) (.*)$")
_CLIENT = re.compile(r"\[\d+\]: \w+: client=(.+?)(,|$)")
_SMTPD_REJ = re.compile(r"\[\d+\]: \w+: (reject(?:_warning)?|hold|discard): ")
_FROM = re.compile(r"from=<([^>]*)>, size=(\d+)")
_TO = re.compile(r"to=<([^>]*)>, (?:orig_to=<[^>]*>, )?relay=([^,]+), (?:conn_use=[^,]+, )?"
                 r"delay=([^,]+), (?:delays=[^,]+, )?(?:dsn=[^,]+, )?status=(\S+)(.*)$")
_PICKUP = re.compile(r": (sender|uid)=")
_REJ_PARTS = re.compile(r"^.* \b(?:reject(?:_warning)?|hold|discard): (\S+) from (\S+?): (.*)$")
_SASL = re.compile(r"\[([0-9a-fA-F.:]+)\]: SASL \S+ authentication failed")
# reasons pflogsumm rewrites (the first is counted by client, the others by domain)
_REJ_SPECIAL = [(re.compile(r"^.*?\d{3} (Improper use of SMTP command pipelining);.*$"), r"\1"),
                (re.compile(r"^.*?\d{3} (Message size exceeds fixed limit);.*$"), r"\1"),
                (re.compile(r"^.*?\d{3} (Server configuration (?:error|problem));.*$"),
                 r"(Local) \1")]


# a reject kind: its detail table (a Summary attribute) and its figure
_TABLES = {"reject": ("rejects", "rejected"), "reject_warning": ("warns", "reject_warnings"),
           "hold": ("holds", "held"), "discard": ("discards", "discarded")}


def _trim(text: str, n: int) -> str:
    return text[:n - 3] + "..." if len(text) > n else text


def _lower_domain(addr: str) -> str:
    """pflogsumm's ``s/(@.+)/\\L$1/``: everything from the first '@' in lower case."""
    at = addr.find("@")
    return addr if at < 0 else addr[:at] + addr[at:].lower()


_HOST_IP4 = re.compile(r"^([^\[]*)\[((?:\d{1,3}\.){3}\d{1,3})\]")
_HOST_IP6 = re.compile(r"^([^/]*)/([0-9a-f.:]+)", re.I)
_HOST_OTHER = re.compile(r"^([^\[(/]*)[\[(/]([^\])]+)[\])]:?\d*$")
_LAST_LABELS = re.compile(r"^(.*)\.([^.]+)\.([^.]{3}|[^.]{2,3}\.[^.]{2})$")


@functools.lru_cache(maxsize=1 << 16)
def gimme_domain(text: str) -> str:
    """pflogsumm's client "host/domain": the last two labels of the name (three for a
    two-letter second level), else the address."""
    m = _HOST_IP4.match(text) or _HOST_IP6.match(text) or _HOST_OTHER.match(text)
    domain, ip = (m.group(1), m.group(2)) if m else ("", "")
    if domain in ("", "unknown"):
        return ip
    m = _LAST_LABELS.match(domain)
    return f"{m.group(2)}.{m.group(3)}".lower() if m else domain


# reject_reason's rewrites, compiled once; a pattern anchored at both ends (^...$) that
# re.sub would replace by its group 1 is applied as "group 1 when it matches"
_R_ADDR = re.compile(r"^(\d{3} <).*?(>:)")
_R_PROTOCOL = re.compile(r"^(?:\d{3} \d\.\d\.\d )(Protocol error);.*$")
_R_FIRST = re.compile(r"^(?:.*?[:;] )(?:\[[^\]]+\] )?([^;,]+)[;,].*$")
_R_ADDRESS_REJECTED = re.compile(r"^((?:Sender|Recipient) address rejected: [^:]+):.*$")
_R_BLOCKED = re.compile(r"(client|Client host|Sender address) .+? blocked")
_R_MAIL = re.compile(r"^\d{3} (?:<.+>: )?([^;:]+)[;:]?.*$")
_R_OTHER = re.compile(r"^(?:.*[:;] )?([^,]+).*$")
_R_TO = re.compile(r"to=<([^>]+)>")
_R_UNKNOWN = re.compile(r"\d{3} <([^>]+)>: User unknown ")
_R_TO_LOOSE = re.compile(r"to=<(.*?)(?:[, ]|$)")
_R_FROM = re.compile(r"from=<([^>]+)>")
_R_RECIPIENT = re.compile(r"^(Recipient address rejected:|User unknown( |$))")
_R_PIPELINING_CLIENT = re.compile(r"^.+? from (\S+?):.*$")


def _group1(pattern: re.Pattern, text: str) -> str:
    """re.sub(pattern, r"\1", text) for a pattern anchored at both ends."""
    m = pattern.match(text)
    return m.group(1) if m else text


def reject_reason(line: str) -> tuple[str, str, str]:
    """(type, reason as pflogsumm prints it, the data it counts it under)."""
    m = _REJ_PARTS.match(line)
    if not m:
        return "", "", ""
    typ, client, rest = m.groups()
    reas = rest
    if typ in ("RCPT", "DATA", "CONNECT"):
        a = _R_ADDR.match(reas)
        if a:
            reas = a.group(1) + a.group(2) + reas[a.end():]
        reas = _group1(_R_PROTOCOL, reas)
        reas = _group1(_R_FIRST, reas)
        reas = _group1(_R_ADDRESS_REJECTED, reas)
        reas = _R_BLOCKED.sub("blocked", reas, count=1)
    elif typ == "MAIL":
        reas = _group1(_R_MAIL, reas)
    else:
        reas = _group1(_R_OTHER, reas)
    to = _R_TO.search(rest) or _R_UNKNOWN.search(rest) or _R_TO_LOOSE.search(rest)
    to = to.group(1) if to else "<>"
    frm = _R_FROM.search(rest)
    frm = frm.group(1) if frm else "<>"
    if reas.startswith("Sender address rejected:"):
        return typ, reas, frm
    if _R_RECIPIENT.match(reas):
        return typ, reas, to
    for i, (pattern, replacement) in enumerate(_REJ_SPECIAL):
        s = pattern.match(reas)
        if s:
            reas = s.expand(replacement)
            if i == 0:                                 # pipelining: counted by the client
                return typ, reas, _R_PIPELINING_CLIENT.match(line).group(1)
            break
    return typ, reas, gimme_domain(client)


@dataclasses.dataclass
class Summary:
    """The figures; feed lines with :meth:`feed`, read them with :meth:`to_dict`."""
    this_year: int = dataclasses.field(default_factory=lambda: dt.date.today().year)
    this_month: int = dataclasses.field(default_factory=lambda: dt.date.today().month - 1)
    day: dt.date | None = None

    def __post_init__(self):
        self.n = Counter()                       # the grand totals' counters
        self.per_day: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
        self.per_hour = [[0] * 5 for _ in range(24)]
        self.day_count = 0
        self._last_day = None
        self.rejects = defaultdict(Counter)      # (type, reason) -> Counter(data)
        self.warns = defaultdict(Counter)
        self.holds = defaultdict(Counter)
        self.discards = defaultdict(Counter)
        self.warnings = defaultdict(Counter)     # program -> Counter(reason)
        self.sasl_failures = Counter()           # client address -> failures
        self.sendg_user: dict[str, list[int]] = {}
        self.sendg_dom: dict[str, list[int]] = {}
        self.recip_user: dict[str, list[int]] = {}
        self.recip_dom: dict[str, list[float]] = {}   # count, bytes, defers, delay sum, max
        self._rcvd: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        self._deferred: set[str] = set()
        self._dates: dict[tuple[str, str], tuple] = {}     # (month, day) -> year, day, key, wanted

    # -- one line -----------------------------------------------------------------------
    def _date_ok(self, y, mon, d) -> bool:
        return self.day is None or (mon + 1, d) == (self.day.month, self.day.day) and (
            y is None or y == self.day.year)

    def feed(self, line: str) -> None:
        if ": [ID " in line:
            line = _ID_STUFF.sub(": ", line, count=1)
        m = _SYSLOG.match(line)
        if m:
            mon_s, day_s, hour_s, _, _, rest = m.groups()
            when = self._dates.get((mon_s, day_s))
            if when is None:
                mon = MONTHS.get(mon_s)
                if mon is None:
                    return
                year = self.this_year - 1 if mon > self.this_month else self.this_year
                when = self._dates[(mon_s, day_s)] = (
                    year, int(day_s), f"{year:04d}-{mon + 1:02d}-{int(day_s):02d}",
                    self._date_ok(None, mon, int(day_s)))
            year, day, key, ok = when
            if not ok:
                return
            hour = int(hour_s)
            if hour > 23:                   # no such hour: not a postfix log line
                return
        else:
            m = _RFC3339.match(line)
            if not m:
                return
            year, mon, day = int(m.group(1)), int(m.group(2)) - 1, int(m.group(3))
            hour, rest = int(m.group(4)), m.group(7)
            if hour > 23 or not self._date_ok(year, mon, day):
                return
            key = f"{year:04d}-{mon + 1:02d}-{day:02d}"
        c = _CMD.match(rest) or _CMD2.match(rest)
        if not c:
            return
        cmd, qid = c.groups()
        rest = rest.rstrip("\n")
        if day != self._last_day:
            self._last_day = day
            self.day_count += 1
        n, pd, ph = self.n, self.per_day[key], self.per_hour[hour]

        if cmd == "cleanup":
            r = _CLEANUP.search(rest)
            if r:
                self._count(self._cleanup_entry(r), ph, pd)
                return
        if qid == "warning":
            self._warning_entry(cmd, rest)
            return
        if qid in ("fatal", "panic"):
            return
        if qid in _TABLES:
            self._reject(qid, rest, ph, pd)
            return
        if cmd == "master":
            return
        if cmd in ("smtpd", "postscreen"):
            r = _CLIENT.search(rest)
            if r:
                self._received(qid, gimme_domain(r.group(1)), ph, pd)
                return
            r = _SMTPD_REJ.search(rest)
            if r:
                self._reject(r.group(1), rest, ph, pd)
            return
        r = _FROM.search(rest)
        if r:
            if self._sizes.get(qid):
                return
            addr, size = r.group(1), int(r.group(2))
            addr = _lower_domain(addr) if addr else "from=<>"
            self._sizes[qid] = size
            whence = self._rcvd.pop(qid, None)
            if whence:
                dom = addr.split("@", 1)[1] if re.match(r"^[^@]+@.+$", addr) else (
                    addr if whence == "pickup" else whence)
                self._add(self.sendg_dom, dom, size)
                self._add(self.sendg_user, addr, size)
                n["bytes_received"] += size
            return
        r = _TO.search(rest)
        if r:
            addr, relay, delay, status, tail = r.groups()
            addr = _lower_domain(addr)
            dom = re.sub(r"^[^@]+@", "", addr, count=1)
            delay_f = _num(delay)
            if status == "sent":
                if "forwarded as " in tail:
                    n["forwarded"] += 1
                    return
                rd = self.recip_dom.setdefault(dom, [0, 0, 0, 0.0, 0.0])
                rd[0] += 1
                rd[3] += delay_f
                rd[4] = max(rd[4], delay_f)
                ru = self.recip_user.setdefault(addr, [0, 0])
                ru[0] += 1
                ph[1] += 1
                pd[1] += 1
                n["delivered"] += 1
                size = self._sizes.get(qid, 0)
                rd[1] += size
                ru[1] += size
                n["bytes_delivered"] += size
            elif status == "deferred":
                ph[2] += 1
                pd[2] += 1
                n["deferrals"] += 1
                if qid not in self._deferred:
                    self._deferred.add(qid)
                    n["deferred"] += 1
                rd = self.recip_dom.setdefault(dom, [0, 0, 0, 0.0, 0.0])
                rd[2] += 1
                rd[4] = max(rd[4], delay_f)
            elif status == "bounced":
                ph[3] += 1
                pd[3] += 1
                n["bounced"] += 1
            return
        if cmd == "pickup" and _PICKUP.search(rest):
            self._received(qid, "pickup", ph, pd)

    def _received(self, qid: str, whence: str, ph, pd) -> None:
        """A message received, from a client's host/domain or ``pickup``."""
        ph[0] += 1
        pd[0] += 1
        self.n["received"] += 1
        self._rcvd[qid] = whence

    @staticmethod
    def _add(table: dict, key: str, size: int) -> None:
        row = table.setdefault(key, [0, 0])
        row[0] += 1
        row[1] += size

    def _count(self, kind: str, ph, pd) -> None:
        """Count a reject, reject warning, hold or discard in its figure, hour and day."""
        self.n[_TABLES[kind][1]] += 1
        ph[4] += 1
        pd[4] += 1

    def _reject(self, kind: str, line: str, ph, pd) -> None:
        self._count(kind, ph, pd)
        self._reject_entry(kind, line)

    # the detail tables of the lines pflogsumm normalises (mailops.insight.pflogc feeds them the
    # distinct lines its compiled loop kept, with their counts)
    def _reject_entry(self, kind: str, line: str, count: int = 1) -> None:
        typ, reason, data = reject_reason(line)
        getattr(self, _TABLES[kind][0])[(typ, reason)][data] += count

    def _cleanup_entry(self, r: re.Match, count: int = 1) -> str:
        """cleanup's reject, warning, hold or discard (an ``_CLEANUP`` match); its kind."""
        sub, where, rmdr = r.groups()
        rmdr = _trim(re.sub(r"( from \S+?)?; from=<.*$", "", rmdr, count=1), 64)
        # pflogsumm files these under type "cleanup", reason header/body/END-OF-MESSAGE
        kind = {"milter-reject": "reject", "warning": "reject_warning"}.get(sub, sub)
        getattr(self, _TABLES[kind][0])[("cleanup", where)][rmdr] += count
        return kind

    def _warning_entry(self, cmd: str, rest: str, count: int = 1) -> None:
        reason = _trim(re.sub(r"^.*warning: ", "", rest, count=1), 66)
        self.warnings[cmd][reason] += count
        s = _SASL.search(rest)
        if s and cmd == "smtpd":
            self.sasl_failures[s.group(1)] += count

    # -- results ---------------------------------------------------------------------------
    def grand_totals(self) -> dict:
        n = self.n
        total = n["delivered"] + n["rejected"] + n["discarded"]
        return {
            "received": n["received"], "delivered": n["delivered"], "forwarded": n["forwarded"],
            "deferred": n["deferred"], "deferrals": n["deferrals"], "bounced": n["bounced"],
            "rejected": n["rejected"],
            "rejected_pct": int(n["rejected"] / total * 100) if total else 0,
            "reject_warnings": n["reject_warnings"], "held": n["held"],
            "discarded": n["discarded"],
            "discarded_pct": int(n["discarded"] / total * 100) if total else 0,
            "bytes_received": n["bytes_received"], "bytes_delivered": n["bytes_delivered"],
            "senders": len(self.sendg_user), "sending_hosts_domains": len(self.sendg_dom),
            "recipients": len(self.recip_user),
            # domains with a delivery (pflogsumm does not count deferral-only ones)
            "recipient_hosts_domains": sum(1 for v in self.recip_dom.values() if v[0])}

    def top_reject_reasons(self) -> list[dict]:
        rows = [{"type": typ, "reason": reason, "count": sum(c.values())}
                for (typ, reason), c in self.rejects.items()]
        return sorted(rows, key=lambda r: (-r["count"], r["type"], r["reason"]))

    def to_dict(self) -> dict:
        return {
            "grand_totals": self.grand_totals(),
            "per_day": [{"date": d, "received": v[0], "delivered": v[1], "deferred": v[2],
                         "bounced": v[3], "rejected": v[4]} for d, v in sorted(self.per_day.items())],
            "per_hour": [{"hour": h, "received": v[0], "delivered": v[1], "deferred": v[2],
                          "bounced": v[3], "rejected": v[4]} for h, v in enumerate(self.per_hour)],
            "top_reject_reasons": self.top_reject_reasons(),
            "sasl_failures_by_ip": dict(self.sasl_failures.most_common()),
            "warnings_by_program": {cmd: sum(c.values()) for cmd, c in sorted(self.warnings.items())},
            "messages_by_sender_domain": {d: {"messages": v[0], "bytes": v[1]} for d, v in
                                          sorted(self.sendg_dom.items(), key=lambda kv: (-kv[1][0], kv[0]))},
            "deliveries_by_recipient_domain": {
                d: {"delivered": v[0], "bytes": v[1], "deferrals": v[2]} for d, v in
                sorted(self.recip_dom.items(), key=lambda kv: (-kv[1][0], kv[0]))},
            "days": self.day_count}


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def lines(paths: Iterable[str | Path]) -> Iterator[str]:
    """Every line of the files, ``.gz`` ones decompressed; undecodable bytes replaced."""
    for p in paths:
        p = Path(p)
        raw = gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")
        with io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as f:
            yield from f


def input_size(paths) -> int:
    """The files' size, compressed ones counted 8 times (postfix logs compress ~8-10x)."""
    return sum(Path(p).stat().st_size * (8 if str(p).endswith(".gz") else 1) for p in paths)


def blocks(paths: Iterable[str | Path], size: int = 32 << 20) -> Iterator[bytes]:
    """Whole lines, about ``size`` bytes at a time, across files (``.gz`` decompressed);
    every block ends with a newline."""
    for p in paths:
        p = Path(p)
        with gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb") as f:
            left = b""
            while data := f.read(size):
                data = left + data
                cut = data.rfind(b"\n") + 1
                left = data[cut:]
                if cut:
                    yield data[:cut]
            if left:
                yield left + b"\n"


def line_blocks(lines: Iterable[str], batch: int = 100_000) -> Iterator[bytes]:
    """Lines from elsewhere (the store) as blocks of ``batch`` lines, UTF-8."""
    chunk = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= batch:
            yield ("\n".join(chunk) + "\n").encode()
            chunk = []
    if chunk:
        yield ("\n".join(chunk) + "\n").encode()


def summarize(paths: Iterable[str | Path], day: dt.date | None = None,
              today: dt.date | None = None) -> Summary:
    today = today or dt.date.today()
    s = Summary(this_year=today.year, this_month=today.month - 1, day=day)
    feed = s.feed
    for line in lines(paths):
        feed(line)
    return s


def text(s: Summary) -> str:
    """The grand totals as pflogsumm prints them (plain numbers, no k/m units)."""
    g = s.grand_totals()
    out = ["Grand Totals", "------------", "messages", "",
           f" {g['received']:6d}   received", f" {g['delivered']:6d}   delivered",
           f" {g['forwarded']:6d}   forwarded",
           f" {g['deferred']:6d}   deferred" + (f"  ({g['deferrals']} deferrals)" if g["deferrals"] else ""),
           f" {g['bounced']:6d}   bounced", f" {g['rejected']:6d}   rejected ({g['rejected_pct']}%)",
           f" {g['reject_warnings']:6d}   reject warnings", f" {g['held']:6d}   held",
           f" {g['discarded']:6d}   discarded ({g['discarded_pct']}%)", "",
           f" {g['bytes_received']:6d}   bytes received", f" {g['bytes_delivered']:6d}   bytes delivered",
           f" {g['senders']:6d}   senders", f" {g['sending_hosts_domains']:6d}   sending hosts/domains",
           f" {g['recipients']:6d}   recipients",
           f" {g['recipient_hosts_domains']:6d}   recipient hosts/domains", ""]
    if s.per_day:
        out += ["Per-Day Traffic Summary", "    date          received  delivered   deferred    "
                "bounced     rejected"]
        out += [f"    {d}    {v[0]:6d}     {v[1]:6d}     {v[2]:6d}     {v[3]:6d}     {v[4]:6d}"
                for d, v in sorted(s.per_day.items())]
    top = s.top_reject_reasons()[:20]
    if top:
        out += ["", "Top reject reasons", *[f"  {r['count']:6d}  {r['type']}: {r['reason']}"
                                           for r in top]]
    return "\n".join(out) + "\n"
