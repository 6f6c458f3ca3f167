"""`mailops logs summary` against Debian's pflogsumm itself, on the same files: every
figure of the grand totals, per day, per hour, per domain, the reject reasons and
the warnings must be what pflogsumm prints (its k/m rounding applied to ours).
Skipped only where pflogsumm is not installed (bin/workbook installs it)."""
import datetime as dt
import gzip
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pflog_corpus as corpus  # noqa: E402
from mailops.insight import pflog, pflogc, pflogfast  # noqa: E402

# the reference (line by line), the compiled engine the CLI uses and the vectorised one:
# each must be exact
ENGINES = pytest.mark.parametrize("engine", [pflog.summarize, pflogc.summarize,
                                             pflogfast.summarize],
                                  ids=["stream", "compiled", "polars"])

PFLOGSUMM = shutil.which("pflogsumm") or "/usr/sbin/pflogsumm"
needs_pflogsumm = pytest.mark.skipif(not Path(PFLOGSUMM).exists(),
                                     reason="Debian's pflogsumm is not installed")


def units(v) -> str:
    """pflogsumm's adj_int_units, printed with %d."""
    v = v or 0
    if v > 536870912:
        return f"{int(v / 1048576)}m"
    if v > 524288:
        return f"{int(v / 1024)}k"
    return str(int(v))


TOTALS = {"received": "received", "delivered": "delivered", "forwarded": "forwarded",
          "bounced": "bounced", "reject warnings": "reject_warnings", "held": "held",
          "bytes received": "bytes_received", "bytes delivered": "bytes_delivered",
          "senders": "senders", "sending hosts/domains": "sending_hosts_domains",
          "recipients": "recipients", "recipient hosts/domains": "recipient_hosts_domains"}


def parse_pflogsumm(out: str) -> dict:
    """pflogsumm's report, the sections these tests compare."""
    r: dict = {"totals": {}, "per_day": {}, "per_hour": {}, "recip": {}, "sendg": {},
               "rejects": {}, "warnings": {}, "sasl": Counter()}
    section, typ, prog = "", "", ""
    for line in out.splitlines():
        if line and not line.startswith(" ") and not line.startswith("-") and not (
                section == "Grand Totals" and line == "messages"):
            section, typ, prog = line.strip(), "", ""
            continue
        if section == "Grand Totals":
            m = re.match(r"^\s+(\d+)([ km])\s+(.+?)\s*$", line)
            if m:
                name, value = m.group(3), m.group(1) + m.group(2).strip()
                if name.startswith("deferred"):
                    r["totals"]["deferred"] = value
                    d = re.search(r"\((\d+)([ km]) deferrals\)", name)
                    r["totals"]["deferrals"] = (d.group(1) + d.group(2).strip()) if d else "0"
                elif name.startswith("rejected") or name.startswith("discarded"):
                    key = "rejected" if name.startswith("rejected") else "discarded"
                    r["totals"][key] = value
                    r["totals"][key + "_pct"] = re.search(r"\((\d+)%\)", name).group(1)
                else:
                    r["totals"][TOTALS[name]] = value
        elif section.startswith("Per-Day"):
            m = re.match(r"^\s+(\d{4}-\d{2}-\d{2})\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", line)
            if m:
                r["per_day"][m.group(1)] = list(m.groups()[1:])
        elif section.startswith("Per-Hour"):
            m = re.match(r"^\s+(\d{2}):00-\d{2}:00\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", line)
            if m:
                r["per_hour"][int(m.group(1))] = list(m.groups()[1:])
        elif section.startswith("Host/Domain Summary: Message Delivery"):
            m = re.match(r"^\s+(\d+[km]?)\s+(\d+[km]?)\s+(\d+[km]?)\s+\S+ \S\s+\S+ \S\s+(\S+)$", line)
            if m:
                r["recip"][m.group(4)] = list(m.groups()[:3])
        elif section.startswith("Host/Domain Summary: Messages Received"):
            m = re.match(r"^\s+(\d+[km]?)\s+(\d+[km]?)\s+(\S+)$", line)
            if m:
                r["sendg"][m.group(3)] = list(m.groups()[:2])
        elif section == "message reject detail":
            m = re.match(r"^  (\S.*)$", line)
            if m:
                typ = m.group(1)
                continue
            m = re.match(r"^    (\S.*) \(total: (\d+)\)$", line)
            if m:
                r["rejects"][(typ, m.group(1))] = int(m.group(2))
        elif section == "Warnings":
            m = re.match(r"^  (\S+) \(total: (\d+)\)$", line)
            if m:
                prog = m.group(1)
                r["warnings"][prog] = int(m.group(2))
                continue
            m = re.match(r"^\s+(\d+)\s+(.*)$", line)
            if m and prog == "smtpd":
                s = re.search(r"\[([0-9a-fA-F.:]+)\]: SASL \S+ authentication failed", m.group(2))
                if s:
                    r["sasl"][s.group(1)] += int(m.group(1))
    return r


def ours(s) -> dict:
    d = s.to_dict()
    g = d["grand_totals"]
    totals = {k: units(v) for k, v in g.items() if not k.endswith("_pct")}
    totals["rejected_pct"], totals["discarded_pct"] = str(g["rejected_pct"]), str(g["discarded_pct"])
    per_day = {r["date"]: [units(r[k]) for k in ("received", "delivered", "deferred", "bounced",
                                                 "rejected")] for r in d["per_day"]}
    per_hour = {r["hour"]: [units(int(r[k] / d["days"] + 0.5)) for k in
                            ("received", "delivered", "deferred", "bounced", "rejected")]
                for r in d["per_hour"]}
    return {"totals": totals, "per_day": per_day, "per_hour": per_hour,
            "recip": {k: [units(v["delivered"]), units(v["bytes"]), units(v["deferrals"])]
                      for k, v in d["deliveries_by_recipient_domain"].items()},
            "sendg": {k: [units(v["messages"]), units(v["bytes"])]
                      for k, v in d["messages_by_sender_domain"].items()},
            "rejects": {(r["type"], r["reason"]): r["count"] for r in d["top_reject_reasons"]},
            "warnings": d["warnings_by_program"], "sasl": Counter(d["sasl_failures_by_ip"])}


def pflogsumm(*files) -> dict:
    out = subprocess.run([PFLOGSUMM, "--iso-date-time", *map(str, files)], capture_output=True,
                         text=True, check=True, timeout=600).stdout
    return parse_pflogsumm(out)


def assert_same(mine: dict, theirs: dict, traffic: bool = True) -> None:
    """Every section equal (pflogsumm prints a per-day table only for more than one day)."""
    for key in ("totals", "per_day", "per_hour", "recip", "sendg", "rejects", "warnings", "sasl"):
        if key == "per_day" and len(mine["per_day"]) == 1 and not theirs["per_day"]:
            continue
        assert mine[key] == theirs[key], key
    assert theirs["totals"]["received"] != "0"
    if traffic:
        assert theirs["rejects"] and theirs["sasl"]


@needs_pflogsumm
@ENGINES
@pytest.mark.parametrize("fmt,seed", [("syslog", 1), ("maillog", 2), ("rfc3339", 3)])
def test_every_figure_equals_pflogsumm(tmp_path, fmt, seed, engine):
    log = tmp_path / f"{fmt}.log"
    corpus.write(log, 3000, fmt, seed=seed, solaris_every=40 if fmt == "rfc3339" else 0)
    assert_same(ours(engine([log])), pflogsumm(log))


@needs_pflogsumm
@ENGINES
def test_several_files_and_gz_equal_pflogsumm_on_their_concatenation(tmp_path, engine):
    a, b = tmp_path / "mail.log.1", tmp_path / "mail.log"
    corpus.write(a, 1500, "syslog", seed=7, days=5)
    corpus.write(b, 1500, "syslog", seed=8, days=5)
    with open(a, "rb") as src, gzip.open(tmp_path / "mail.log.2.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    both = tmp_path / "both.log"
    both.write_bytes(a.read_bytes() + b.read_bytes())
    assert_same(ours(engine([tmp_path / "mail.log.2.gz", b])), pflogsumm(both))


@needs_pflogsumm
@ENGINES
def test_one_day_in_postfix_zero_padded_format(tmp_path, engine):
    """`--day` on postfix's own `Nov 03` lines (pflogsumm's -d would miss days 1-9 there):
    equal to pflogsumm over that day's lines alone."""
    log = tmp_path / "postfix.log"
    corpus.write(log, 3000, "maillog", seed=4)
    day = corpus.first_day() + dt.timedelta(days=2)
    prefix = f"{corpus.MONTHS[day.month - 1]} {day.day:02d} "
    only = tmp_path / "day.log"
    only.write_text("".join(line for line in log.read_text().splitlines(True)
                            if line.startswith(prefix)))
    mine = engine([log], day=day)
    assert list(ours(mine)["per_day"]) == [day.isoformat()]
    theirs = pflogsumm(only)
    m = ours(mine)
    for key in ("totals", "recip", "sendg", "rejects", "warnings", "sasl"):
        assert m[key] == theirs[key], key


def test_definitions_pflogsumm_follows():
    """Each line kind where it counts (and where it must not)."""
    s = pflog.Summary(this_year=2026, this_month=11)
    for line in [
        "Dec  1 10:00:00 mx postfix/smtpd[1]: AAA: client=a.example.net[203.0.113.5]",
        "Dec  1 10:00:01 mx postfix/qmgr[2]: AAA: from=<X@Example.NET>, size=1000, nrcpt=2 (queue active)",
        "Dec  1 10:00:01 mx postfix/qmgr[2]: AAA: from=<X@Example.NET>, size=1000, nrcpt=2 (queue active)",
        "Dec  1 10:00:02 mx postfix/lmtp[3]: AAA: to=<u@lab.test>, relay=x, delay=0.1, delays=0/0/0/0, dsn=2.0.0, status=sent (250 ok)",
        "Dec  1 10:00:02 mx postfix/local[3]: AAA: to=<v@lab.test>, relay=local, delay=0.1, delays=0/0/0/0, dsn=2.0.0, status=sent (forwarded as BBB)",
        "Dec  1 10:00:03 mx postfix/smtp[4]: CCC: to=<w@ext.example>, relay=none, delay=5, delays=0/0/5/0, dsn=4.4.1, status=deferred (connect to x[1.2.3.4]:25: Connection refused)",
        "Dec  1 10:10:03 mx postfix/smtp[4]: CCC: to=<w@ext.example>, relay=none, delay=600, delays=0/0/5/0, dsn=4.4.1, status=deferred (connect to x[1.2.3.4]:25: Connection refused)",
        "Dec  1 10:00:04 mx postfix/smtpd[1]: NOQUEUE: milter-reject: RCPT from a[203.0.113.5]: 451 4.7.1 Try again later; from=<> to=<u@lab.test> proto=ESMTP helo=<a>",
        "Dec  1 10:00:05 mx postfix/cleanup[5]: DDD: milter-reject: END-OF-MESSAGE from a[203.0.113.5]: 5.7.1 Gtube pattern; from=<x@y> to=<u@lab.test> proto=ESMTP helo=<a>",
        "Dec  1 10:00:06 mx dovecot: imap-login: Login: user=<u@lab.test>",
    ]:
        s.feed(line + "\n")
    g = s.grand_totals()
    assert (g["received"], g["delivered"], g["forwarded"], g["deferred"], g["deferrals"],
            g["rejected"]) == (1, 1, 1, 1, 2, 1)
    assert g["bytes_received"] == 1000 and g["senders"] == 1      # the second from= not again
    assert s.sendg_user == {"X@example.net": [1, 1000]}           # the domain lower-cased
    assert g["rejected_pct"] == 50 and g["recipient_hosts_domains"] == 1   # 1 of 1 + 1
    assert s.top_reject_reasons() == [{"type": "cleanup", "reason": "END-OF-MESSAGE", "count": 1}]


def test_cli_summary_json_and_text(tmp_path):
    log = tmp_path / "x.log"
    corpus.write(log, 400, "syslog", seed=5)
    out = subprocess.run([sys.executable, "-m", "mailops.cli.main", "logs", "summary", "--json",
                          str(log)], capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    assert set(d) >= {"grand_totals", "per_day", "per_hour", "top_reject_reasons",
                      "sasl_failures_by_ip", "warnings_by_program", "messages_by_sender_domain",
                      "deliveries_by_recipient_domain"}
    assert d["grand_totals"] == pflog.summarize([log]).grand_totals()
    txt = subprocess.run([sys.executable, "-m", "mailops.cli.main", "logs", "summary", str(log)],
                         capture_output=True, text=True, check=True).stdout
    assert f" {d['grand_totals']['received']:6d}   received" in txt
    stream = subprocess.run([sys.executable, "-m", "mailops.cli.main", "logs", "summary", "--json",
                             "--engine", "stream", str(log)], capture_output=True, text=True,
                            check=True).stdout
    assert json.loads(stream) == d
    bad = subprocess.run([sys.executable, "-m", "mailops.cli.main", "logs", "summary", "--day",
                          "2026-13-01", str(log)], capture_output=True, text=True)
    assert bad.returncode == 2 and "day" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "mailops.cli.main", "logs", "summary",
                              str(tmp_path / "nope.log")], capture_output=True, text=True)
    assert missing.returncode == 2 and "nope.log" in missing.stderr


def test_per_day_keeps_the_rfc3339_year():
    """pflogsumm replaces an RFC 3339 year with this year's (or last year's); not here."""
    s = pflog.Summary(this_year=2026, this_month=11)
    s.feed("2019-03-04T10:00:00.000000+00:00 mx postfix/smtpd[1]: AAA: client=a[203.0.113.5]\n")
    assert list(s.per_day) == ["2019-03-04"]


@pytest.mark.parametrize("fast_engine", [pflogc.summarize, pflogfast.summarize],
                         ids=["compiled", "polars"])
@pytest.mark.parametrize("fmt,seed,day", [("syslog", 21, None), ("maillog", 22, 3),
                                          ("rfc3339", 23, None), ("rfc3339", 24, 5)])
def test_the_fast_engines_equal_the_reference(tmp_path, fmt, seed, day, fast_engine):
    """Every output, to the last domain and reason, including the Solaris tags, lines
    of other programs, undecodable bytes, a line without its end and a one-day filter."""
    log = tmp_path / "x.log"
    corpus.write(log, 2500, fmt, seed=seed, days=8, solaris_every=30)
    with open(log, "ab") as f:
        f.write(b"Dec  1 10:00:00 mx postfix/smtpd[1]: warning: bad \xff\xfe bytes\n")
        f.write(b"Dec  1 25:00:00 mx postfix/smtpd[1]: ZZZ: client=a[203.0.113.9]\n")  # no hour 25
        f.write(b"Dec  1 10:00:01 mx postfix/qmgr[2]: ABC: from=<x@y>, size=10, nrcpt=1")
    when = corpus.first_day() + dt.timedelta(days=day) if day is not None else None
    ref = pflog.summarize([log], day=when).to_dict()
    fast = fast_engine([log], day=when).to_dict()
    for key in ref:
        assert fast[key] == ref[key], key
    assert ref["grand_totals"]["received"] > 0


def test_vectorised_reject_reasons_equal_the_reference():
    import polars as pl
    texts = [text for _, prog, text in corpus.events(4000, seed=31, days=3)
             if "reject" in text or "hold:" in text or "discard:" in text]
    texts = [f"postfix/smtpd[1]: {t}" for t in texts] + [
        "postfix/smtpd[9]: NOQUEUE: reject: RCPT from a[203.0.113.1]: 554 5.7.1 "
        "Service unavailable; Client host [203.0.113.1] blocked using zen.example; "
        "from=<a@b> to=<c@d> proto=ESMTP helo=<a>", "nothing to see"]
    typ, reas = pflogfast.reject_reasons(pl.Series(texts))
    assert list(zip(typ, reas)) == [pflog.reject_reason(t)[:2] for t in texts]
