"""The compiled engine (mailops/_pflogc.c) against the reference, mailops.insight.pflog.Summary,
output for output: on lines written to catch each hand-written matcher out (the places
where a regular expression's leftmost, lazy or optional parts decide), on any block
boundary, on every line ending Python's universal newlines know, and with the rare lines
filed in many small batches.  test_pflog.py runs it against Debian's pflogsumm too."""
import datetime as dt
import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pflog_corpus as corpus  # noqa: E402
from mailops.insight import pflog, pflogc  # noqa: E402

TODAY = dt.date(2026, 12, 15)

# each line is here for a reason the comment at its end gives
EDGES = [
    "Dec  1 10:00:00 mx postfix/smtpd[1]: AAA: client=a.example.net[203.0.113.5]",
    "Dec  1 10:00:01 mx postfix/qmgr[2]: AAA: from=<Ünïcode.Üser@Exämple.NET>, size=1000, nrcpt=2",
    "Dec  1 10:00:01 mx postfix/smtpd[1]: AAB: client=b.example.net[203.0.113.6]",
    "Dec  1 10:00:01 mx postfix/qmgr[2]: AAB: from=<Ünïcode.Üser@exÄmple.net>, size=10, nrcpt=1",  # merges
    "Dec  1 10:00:02 mx postfix/lmtp[3]: AAA: to=<Ü@LAB.Test>, relay=x, delay=0.1, dsn=2.0.0, status=sent (ok)",
    "Dec  1 10:00:02 mx postfix/lmtp[3]: AAB: to=<ü@lab.test>, relay=x, delay=1e1, status=sent (ok)",  # odd delay
    "Dec  1 10:00:02 mx postfix/lmtp[3]: AAB: to=<@lab.test>, relay=x, delay=.5, status=sent (ok)",  # '@' first
    "Dec  1 10:00:02 mx postfix/lmtp[3]: AAB: to=<noat>, relay=x, delay=5., status=bounced (x)",
    "Dec  1 10:00:03 mx postfix/smtpd[1]: AAC: client=unknown",            # gimme_domain is ""
    "Dec  1 10:00:03 mx postfix/qmgr[2]: AAC: from=<z@example.org>, size=5, nrcpt=1",  # not counted
    "Dec  1 10:00:04 mx postfix/smtpd[1]: AAD: client=x.example.co.uk[203.0.113.7]",
    "Dec  1 10:00:04 mx postfix/qmgr[2]: AAD: from=<>, size=0, nrcpt=1",    # size 0 is false
    "Dec  1 10:00:04 mx postfix/qmgr[2]: AAD: from=<late@example.org>, size=7, nrcpt=1",
    "Dec  1 10:00:05 mx postfix/pickup[9]: AAE: uid=0 from=<root>",
    "Dec  1 10:00:05 mx postfix/qmgr[2]: AAE: from=<Root>, size=70, nrcpt=1",  # pickup: the address
    "Dec  1 10:00:05 mx postfix/pickup[9]: AAF: sender=@Odd",
    "Dec  1 10:00:05 mx postfix/qmgr[2]: AAF: from=<@Odd>, size=71, nrcpt=1",
    "Dec  1 10:00:06 mx postfix/smtp[4]: AAG: to=<w@ext.example>, orig_to=<o@x>, relay=none, "
    "conn_use=2, delay=5, delays=0/0/5/0, dsn=4.4.1, status=deferred (refused)",
    "Dec  1 10:00:06 mx postfix/smtp[4]: AAG: to=<w@ext.example>, relay=none, delay=7, "
    "status=deferred (refused)",                                            # one deferred id
    "Dec  1 10:00:07 mx postfix/smtp[4]: AAH: to=<bad>, status=sent to=<b@x.example>, relay=r, "
    "delay=1, status=sent (a second to=< is the match)",
    "Dec  1 10:00:07 mx postfix/smtp[4]: AAH: to=<c@x.example>, relay=r, delay=1, status=sent "
    "(forwarded as BBB)",
    "Dec  1 10:00:08 mx postfix/cleanup[5]: AAI: milter-reject: END-OF-MESSAGE from a[203.0.113.5]: "
    "5.7.1 Gtube; from=<x@y> to=<u@lab.test> proto=ESMTP helo=<a>",
    "Dec  1 10:00:08 mx postfix/cleanup[5]: AAJ: noreject: header x warning: body free; from=<a@b>",
    "Dec  1 10:00:08 mx postfix/cleanup[5]: AAJ: hold: nowhere then discard: body spam from "
    "x[1.2.3.4]; from=<a@b> to=<c@d>",                                      # the second keyword
    "Dec  1 10:00:08 mx postfix/cleanup[5]: AAK: warning: header Subject: hi from x[1.2.3.4]; "
    "from=<a@b> to=<c@d> proto=ESMTP helo=<x>",
    "Dec  1 10:00:09 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from u[203.0.113.9]: 550 5.1.1 "
    "<a@lab.test>: Recipient address rejected: User unknown; from=<s@x> to=<a@lab.test> proto=ESMTP",
    "Dec  1 10:00:09 mx postfix/postscreen[6]: NOQUEUE: reject: RCPT from [203.0.113.10]:4000: 550 "
    "5.7.1 Service unavailable; client [203.0.113.10] blocked using zen.example; proto=SMTP",
    "Dec  1 10:00:09 mx postfix/smtpd[1]: AAL: reject_warning: RCPT from u[203.0.113.9]: 450 "
    "4.7.1 Client host rejected: cannot find your hostname; proto=ESMTP",
    "Dec  1 10:00:09 mx postfix/smtpd[1]: NOQUEUE: milter-reject: RCPT from a[203.0.113.5]: 451 "
    "4.7.1 Try again later; from=<> to=<u@lab.test> proto=ESMTP helo=<a>",  # not counted
    "Dec  1 10:00:10 mx postfix/submission/smtpd[7]: warning: unknown[198.51.100.3]: SASL PLAIN "
    "authentication failed: UGFzc3dvcmQ6",
    "Dec  1 10:00:10 mx postfix/smtps/smtpd[7]: warning: unknown[198.51.100.4]: SASL LOGIN "
    "authentication failed: x",
    "Dec  1 10:00:10 mx postfix/submission[7]: AAM: client=c[203.0.113.1]",  # cmd "submission"
    "Dec  1 10:00:10 mx postfix-script[8]: warning: not owned by postfix",
    "Dec  1 10:00:10 mx postfix[8]: fatal: no",
    "Dec  1 10:00:10 mx postfix/master[8]: warning: process died",
    "Dec  1 10:00:10 mx postfix/master[8]: AAN: to=<m@x>, relay=r, delay=1, status=sent (master)",
    "Dec  1 10:00:11 mx postfix/smtpd[1]: ::: : : AAO: client=y[203.0.113.2]",  # the queue id
    "Dec  1 10:00:11 mx postfix/smtpd[1]: AAP: client=,h.example.com[203.0.113.8]",  # (.+?)(,|$)
    "Dec  1 10:00:11 mx postfix/qmgr[2]: AAP: from=<c@d>, size=3, nrcpt=1",
    "Dec  1 10:00:12 mx postfix/smtpd[1]: [ID 197553 mail.info] AAQ: client=s[203.0.113.3]",
    "Dec  1 10:00:12 mx postfix/smtpd[1]: [ID x mail.info] AAR: client=s[203.0.113.3]",  # no tag
    "Dec 01 25:00:12 mx postfix/smtpd[1]: AAS: client=s[203.0.113.3]",      # no such hour
    "Dez  1 10:00:12 mx postfix/smtpd[1]: AAT: client=s[203.0.113.3]",      # no such month
    "Dec  1 10:00:12  postfix/smtpd[1]: AAU: client=s[203.0.113.3]",        # no host
    "Dec  1 10:00:12 mx\u00a0x postfix/smtpd[1]: AAV: client=s[203.0.113.3]",  # U+00A0 is \\s
    "Dec 1 10:00:12 mx postfix/smtpd[1]: AAW: client=s[203.0.113.3]",
    "Dec  2 10:00:12 mx postfix/smtpd[1]: AAX: client=s[203.0.113.3]",
    "2026-12-03T10:00:00.123+01:00 mx postfix/smtpd[1]: AAY: client=r[203.0.113.4]",
    "2026-12-03T10:00:00Z mx postfix/qmgr[2]: AAY: from=<r@r.example>, size=9, nrcpt=1",
    "2026-12-03T10:00:00.Z mx postfix/smtpd[1]: AAZ: client=r[203.0.113.4]",  # no digits
    "2025-12-03T10:00:00Z mx postfix/smtpd[1]: AB1: client=r[203.0.113.4]",   # another year
    "Dec  1 10:00:07 mx postfix/smtp[4]: AB2: to=<f@x.example>, relay=r, delay=1, status=sent "
    "(250 forwarded, not as)",
    "Dec  1 10:00:13 mx postfix/smtpd[1]: AB0: client=\udcff[203.0.113.4]",  # undecodable
    "Dec  1 10:00:13 mx dovecot: imap-login: Login: user=<u@lab.test>",
]


def _write(path: Path, lines: list[str], ending: str = "\n") -> None:
    path.write_bytes(ending.join(lines).encode("utf-8", "surrogateescape") + ending.encode())


STATE = ["n", "per_day", "per_hour", "day_count", "rejects", "warns", "holds", "discards",
         "warnings", "sasl_failures", "sendg_user", "sendg_dom", "recip_user", "recip_dom"]


def _same(log: Path, day: dt.date | None = None) -> dict:
    """Every output, and every table behind it (the delay sums and maxima too)."""
    ref = pflog.summarize([log], day=day, today=TODAY)
    got = pflogc.summarize([log], day=day, today=TODAY)
    for name in STATE:
        assert getattr(got, name) == getattr(ref, name), name
    ref, got = ref.to_dict(), got.to_dict()
    for key in ref:
        assert got[key] == ref[key], key
    return ref


def test_the_compiled_engine_is_built():
    """pip builds it (setup.py, optional so mailops installs without a compiler): here,
    where bin/workbook installed it, it must be there, or the CLI's auto is not it."""
    assert pflogc.available()


def test_each_matcher_on_the_lines_written_to_catch_it_out(tmp_path):
    log = tmp_path / "edges.log"
    _write(log, EDGES)
    ref = _same(log)
    g = ref["grand_totals"]
    # the lines above do count: a matcher that counts nothing cannot pass
    assert g["received"] >= 8 and g["delivered"] >= 4 and g["deferrals"] == 2
    assert g["deferred"] == 1 and g["rejected"] >= 3 and g["held"] == 0
    assert g["discarded"] == 1 and g["reject_warnings"] == 3 and g["forwarded"] == 1
    assert ref["sasl_failures_by_ip"] == {"198.51.100.3": 1, "198.51.100.4": 1}
    assert "ünïcode.Üser@exämple.net".split("@")[1] in ref["messages_by_sender_domain"]
    _same(log, day=dt.date(2026, 12, 1))
    _same(log, day=dt.date(2026, 12, 3))


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_any_block_boundary_and_line_ending(tmp_path, ending):
    """Lines split anywhere between blocks, "\\r\\n" split between its two bytes too."""
    log = tmp_path / "x.log"
    text = []
    for t, prog, msg in corpus.events(300, seed=41, days=2):
        text.append(f"{corpus.stamp(t, 'syslog')} mx {prog}[1]: {msg}")
    _write(log, text + EDGES, ending)
    ref = pflog.summarize([log], today=TODAY).to_dict()
    data = log.read_bytes()
    rnd = random.Random(7)
    for _ in range(5):
        cuts, at = [], 0
        while at < len(data):
            n = rnd.choice([1, 2, 3, 50, 4000])
            cuts.append(data[at:at + n])
            at += n
        assert pflogc.summarize_blocks(cuts, today=TODAY).to_dict() == ref
    crlf = data.find(b"\r\n")
    if crlf > 0:
        halves = [data[:crlf + 1], data[crlf + 1:]]
        assert pflogc.summarize_blocks(halves, today=TODAY).to_dict() == ref


def test_mixed_endings_and_a_last_line_without_one(tmp_path):
    log = tmp_path / "x.log"
    body = "\n".join(EDGES[:10]) + "\r\n" + "\r".join(EDGES[10:20]) + "\n" + "\n".join(EDGES[20:])
    log.write_bytes(body.encode("utf-8", "surrogateescape"))   # no end after the last line
    _same(log)


def test_rare_lines_filed_in_small_batches(tmp_path, monkeypatch):
    """The rejects and warnings held in C are bounded: filed every RARE_BATCH distinct lines;
    the figures do not depend on where the batches fall."""
    log = tmp_path / "x.log"
    corpus.write(log, 3000, "maillog", seed=43, days=3)
    ref = pflogc.summarize([log], today=TODAY).to_dict()
    monkeypatch.setattr(pflogc, "RARE_BATCH", 3)
    seen = []
    real = pflogc._file_rare
    monkeypatch.setattr(pflogc, "_file_rare", lambda s, rare: (seen.append(len(rare)),
                                                               real(s, rare)))
    blocks = [log.read_bytes()[i:i + 2000] for i in range(0, log.stat().st_size, 2000)]
    assert pflogc.summarize_blocks(blocks, today=TODAY).to_dict() == ref
    assert len(seen) > 10 and max(seen) < 200
    assert ref == pflog.summarize([log], today=TODAY).to_dict()


def test_gz_and_several_files_in_order(tmp_path):
    a, b = tmp_path / "mail.log.1.gz", tmp_path / "mail.log"
    corpus.write(tmp_path / "a", 500, "syslog", seed=44, days=2)
    corpus.write(b, 500, "syslog", seed=45, days=2)
    with gzip.open(a, "wb") as f:
        f.write((tmp_path / "a").read_bytes())
    ref = pflog.summarize([a, b], today=TODAY).to_dict()
    assert pflogc.summarize([a, b], today=TODAY).to_dict() == ref
    assert ref["grand_totals"]["received"] > 0


def test_the_cli_chooses_it_and_says_when_it_cannot(tmp_path, monkeypatch):
    log = tmp_path / "x.log"
    corpus.write(log, 200, "syslog", seed=46, days=2)
    run = [sys.executable, "-m", "mailops.cli.main", "logs", "summary", "--json"]
    auto = subprocess.run(run + [str(log)], capture_output=True, text=True, check=True).stdout
    compiled = subprocess.run(run + ["--engine", "compiled", str(log)], capture_output=True,
                              text=True, check=True).stdout
    assert auto == compiled
    from mailops.cli import main as cli
    monkeypatch.setattr(pflogc, "_pflogc", None)
    assert cli.main(["logs", "summary", "--engine", "compiled", str(log)]) == 2
    with pytest.raises(RuntimeError, match="not built"):
        pflogc.summarize([log])


def test_the_filing_process_gives_the_same_figures_in_the_same_order(tmp_path, monkeypatch):
    """From PARALLEL_FROM bytes on a forked process files the rare lines, batch by batch;
    the JSON is the stream engine's to the byte (insertion order decides ties in
    sasl_failures_by_ip, so the batches must be filed in their order)."""
    log = tmp_path / "x.log"
    corpus.write(log, 3000, "syslog", seed=47, days=3)
    monkeypatch.setattr(pflogc, "PIPE_BATCH", 5)
    monkeypatch.setattr(pflogc, "PARALLEL_FROM", 0)
    monkeypatch.setattr(pflogc, "READ", 4096)
    used, worker = [], pflogc._Worker
    monkeypatch.setattr(pflogc, "_Worker", type("W", (worker,), {
        "__call__": lambda self, rare: (used.append(len(rare)), worker.__call__(self, rare))}))
    got = pflogc.summarize([log], today=TODAY)
    assert len(used) > 20
    ref = pflog.summarize([log], today=TODAY)
    assert json.dumps(got.to_dict()) == json.dumps(ref.to_dict())
    assert ref.sasl_failures and ref.rejects


def test_an_error_in_the_filing_process_reaches_the_caller(tmp_path, monkeypatch):
    log = tmp_path / "x.log"
    corpus.write(log, 300, "syslog", seed=48, days=1)

    def broken(self, kind, line, count=1):
        raise ValueError("filing broke")
    monkeypatch.setattr(pflog.Summary, "_reject_entry", broken)
    with pytest.raises(RuntimeError, match="ValueError: filing broke"):
        pflogc.summarize([log], today=TODAY, parallel=True)
    with pytest.raises(ValueError, match="filing broke"):
        pflogc.summarize([log], today=TODAY, parallel=False)
