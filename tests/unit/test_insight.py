"""Collect, the store, the analysis tables, status parsing, the schedule and the
HTML reports, without a lab: the collect helper runs for real against log files
on this machine (``local://``), rotated the ways logrotate rotates them."""
import base64
import datetime as dt
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import browser  # noqa: E402
import pflog_corpus as corpus  # noqa: E402
from mailops.insight import collect as mc  # noqa: E402
from mailops.provision import dnsrecords  # noqa: E402
from mailops.insight import queries as mi  # noqa: E402
from mailops.insight import pflog, report, schedule, status  # noqa: E402
from mailops.core.params import load_params  # noqa: E402
from mailops.provision.session import Session  # noqa: E402
from mailops.insight.store import Store, StoreError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def local_params(tmp_path, **insight):
    data = {"target": "local://", "hostname": "mx1.example.org", "mail_domains": ["example.org"],
            "addresses": ["203.0.113.10"], "fail2ban": {"enabled": False},
            "backup": {"enabled": False}, "insight": {"store": "store", **insight}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Parameters for this machine, a log directory, a store; postqueue is not asked."""
    monkeypatch.setattr(mc, "request", _no_queue(mc.request))
    logs = tmp_path / "log"
    logs.mkdir()
    pf = local_params(tmp_path)
    return load_params(pf), logs, Store(tmp_path / "store"), pf


def _no_queue(request):
    def wrapped(params, state, logs=None, logs_only=False):
        return {**request(params, state, logs, logs_only), "queue": False}
    return wrapped


def run(params, store, logs, **kw):
    with Session(params) as s:
        return mc.collect(s, store, logs={"postfix": str(logs / "postfix.log")}, **kw)


def stored_lines(store):
    if not store.has("postfix"):
        return []
    return list(store.query("SELECT line FROM {postfix} ORDER BY seq")["line"])


def append(path, lines):
    with open(path, "a") as f:
        f.writelines(line + "\n" for line in lines)


def mk(i, day=1):
    return f"Dec {day:2d} 10:{i // 60 % 60:02d}:{i % 60:02d} mx1 postfix/smtpd[1]: line {i}"


def test_collect_twice_adds_nothing_and_rotation_loses_nothing(env):
    params, logs, store, _ = env
    log = logs / "postfix.log"
    append(log, [mk(i) for i in range(100)])
    r = run(params, store, logs)
    assert r.added == {"postfix": 100} and r.round_trips == 1, r
    assert run(params, store, logs).added == {}
    # rename rotation (create): lines written before and after, both kept once
    append(log, [mk(i) for i in range(100, 110)])
    os.rename(log, logs / "postfix.log.1")
    append(log, [mk(i) for i in range(110, 120)])
    assert run(params, store, logs).added == {"postfix": 20}
    # copytruncate: copy, then truncate in place (same inode, a new first line)
    append(log, [mk(i) for i in range(120, 125)])
    os.rename(logs / "postfix.log.1", logs / "postfix.log.2")
    shutil.copy(log, logs / "postfix.log.1")
    with open(log, "w"):
        pass
    append(log, [mk(i) for i in range(125, 130)])
    # delaycompress: .2 compressed into .2.gz (a new file, same content)
    with open(logs / "postfix.log.2", "rb") as src, gzip.open(logs / "postfix.log.2.gz", "wb") as d:
        d.write(src.read())
    os.unlink(logs / "postfix.log.2")
    assert run(params, store, logs).added == {"postfix": 10}
    assert run(params, store, logs).added == {}
    got = stored_lines(store)
    assert got == [mk(i) for i in range(130)], got[-5:]
    cursors = store.state("mx1")["cursors"]["postfix"]
    assert any(c["final"] and c["path"].endswith(".gz") for c in cursors.values())
    # months later, the .gz still there: its cursor is kept, nothing is read twice
    state = store.state("mx1")
    for c in state["cursors"]["postfix"].values():
        c["seen"] -= 90 * 86400
    store.save_state("mx1", state)
    assert run(params, store, logs).added == {}
    assert len(stored_lines(store)) == 130
    # a rotated file deleted for good: its cursor goes after a month
    os.unlink(logs / "postfix.log.2.gz")
    state = store.state("mx1")
    for c in state["cursors"]["postfix"].values():
        c["seen"] -= 90 * 86400
    store.save_state("mx1", state)
    run(params, store, logs)
    assert len(store.state("mx1")["cursors"]["postfix"]) == 2


def test_a_partial_line_waits_for_its_end(env):
    params, logs, store, _ = env
    log = logs / "postfix.log"
    append(log, [mk(0)])
    with open(log, "a") as f:
        f.write(mk(1)[:20])
    assert run(params, store, logs).added == {"postfix": 1}
    with open(log, "a") as f:
        f.write(mk(1)[20:] + "\n")
    assert run(params, store, logs).added == {"postfix": 1}
    assert stored_lines(store) == [mk(0), mk(1)]


def test_large_logs_take_several_round_trips_and_lose_nothing(env, monkeypatch):
    params, logs, store, _ = env
    monkeypatch.setattr(mc, "MAX_BYTES", 4096)
    lines = [mk(i) for i in range(1000)]
    append(logs / "postfix.log", lines)
    r = run(params, store, logs)
    assert r.round_trips > 5 and r.added == {"postfix": 1000}
    assert stored_lines(store) == lines


def test_one_writer_per_host(env):
    params, logs, store, _ = env
    append(logs / "postfix.log", [mk(0)])
    with store.writer("mx1"):
        with pytest.raises(StoreError, match="another collection of mx1 is running"):
            run(params, store, logs)
    with pytest.raises(StoreError, match="not a host name"):
        store.state("../etc")


def test_postfix_figures_from_the_store_equal_pflogsumm_on_the_file(env):
    params, logs, store, _ = env
    log = logs / "postfix.log"
    corpus.write(log, 1500, "syslog", seed=11, days=5)
    run(params, store, logs)
    start = corpus.first_day()
    p = mi.Period(start, start + dt.timedelta(days=6), params.timezone)
    mine = mi.postfix_summary(store, "mx1", p).to_dict()
    direct = pflog.summarize([log]).to_dict()
    assert mine["grand_totals"]["received"] > 100
    assert mine == direct
    # one day of the store equals pflogsumm's one-day filter on the file
    day = start + dt.timedelta(days=2)
    one = mi.postfix_summary(store, "mx1", mi.Period(day, day, params.timezone)).to_dict()
    assert one["grand_totals"] == pflog.summarize([log], day=day).to_dict()["grand_totals"]


def test_a_syslog_mail_log_gives_the_same_figures(env):
    params, logs, store, _ = env
    log = logs / "mail.log"
    corpus.write(log, 800, "syslog", seed=12, days=3)
    with open(log, "a") as f:
        f.write(f"{corpus.stamp(dt.datetime.combine(corpus.first_day(), dt.time(1)), 'syslog')} "
                "mx1 dovecot: imap-login: Login: user=<u@x>\n")
    with Session(params) as s:
        mc.collect(s, store, logs={"mail": str(log)})
    start = corpus.first_day()
    p = mi.Period(start, start + dt.timedelta(days=4), params.timezone)
    assert mi.postfix_table(store, "mx1") == "mail"
    assert mi.postfix_summary(store, "mx1", p).to_dict() == pflog.summarize([log]).to_dict()


def _reply(rows, *, wrapped=False, newest="n1", t=None):
    import zstandard
    c = zstandard.ZstdCompressor()
    return {"time": t or time.time(), "logs": {}, "more": False,
            "history": {"key": "rs_historymx1_zst", "rows": [
                base64.b64encode(c.compress(json.dumps(r).encode())).decode() for r in rows],
                "length": len(rows), "nrows": 200, "wrapped": wrapped, "newest": newest}}


def _row(i, t0, action="no action", score=0.5):
    return {"unix_time": t0 + i, "message-id": f"m{i}@x", "action": action, "score": score,
            "required_score": 15, "time_real": 0.004, "size": 900, "ip": "203.0.113.9",
            "sender_smtp": f"a{i % 3}@spam.example", "rcpt_smtp": ["u@example.org"],
            "user": "unknown", "subject": f"s{i}", "is_skipped": False,
            "symbols": {"MIME_GOOD": {"score": -0.1}, "BAYES_SPAM": {"score": 3.0}}}


def test_history_rows_are_deduplicated_and_a_wrap_is_a_gap(env):
    params, _, store, _ = env
    t0 = time.time() - 600
    added, warnings, state = {}, [], {}
    tz = mc.ZoneInfo("UTC")
    mc._absorb(store, "mx1", tz, state, _reply([_row(i, t0) for i in range(10)]), added,
               warnings, True)
    assert added["rspamd"] == 10 and not warnings
    # the same rows again (a helper that lost its place): nothing added twice
    added = {}
    mc._absorb(store, "mx1", tz, state, _reply([_row(i, t0) for i in range(5, 12)], newest="n2"),
               added, warnings, True)
    assert added["rspamd"] == 2
    # the history wrapped: rows between the last seen one and the oldest left are lost
    added = {}
    mc._absorb(store, "mx1", tz, state, _reply([_row(i, t0) for i in range(100, 110)],
                                               wrapped=True, newest="n3"), added, warnings, True)
    assert added["rspamd"] == 10
    assert len(warnings) == 1 and "wrapped" in warnings[0] and "lost" in warnings[0]
    gap = state["gaps"][0]
    assert gap["from"] == t0 + 11 and gap["to"] == t0 + 100
    n = store.query("SELECT count(*) AS n, count(DISTINCT message_id) AS d FROM {rspamd}")
    assert (n["n"].iloc[0], n["d"].iloc[0]) == (22, 22)
    sym = store.query("SELECT count(*) AS n FROM {rspamd_symbols}")["n"].iloc[0]
    assert sym == 44


def test_rspamd_tables(env):
    params, _, store, _ = env
    t0 = time.time() - 3600
    rows = [_row(i, t0, *(("reject", 16.0) if i % 4 == 0 else ("no action", 1.0)))
            for i in range(40)]
    mc._absorb(store, "mx1", mc.ZoneInfo("UTC"), {}, _reply(rows), {}, [], True)
    p = mi.period_for("daily", dt.datetime.fromtimestamp(t0, dt.timezone.utc).date())
    counts = mi.action_counts(store, "mx1", p).set_index("action")["messages"].to_dict()
    assert counts == {"reject": 10, "no action": 30}
    top = mi.top_symbols(store, "mx1", p)
    assert list(top["symbol"]) == ["BAYES_SPAM", "MIME_GOOD"] and top["total_score"][0] == 120
    spam = mi.top_spam_sources(store, "mx1", p)
    assert spam["messages"].sum() == 10
    assert mi.scan_times(store, "mx1", p)["p50_ms"].iloc[0] == 4.0
    # another day holds nothing; another host is not read
    empty = mi.period_for("daily", p.start - dt.timedelta(days=3))
    assert mi.action_counts(store, "mx1", empty).empty
    assert mi.action_counts(store, "mx2", p).empty
    with pytest.raises(ValueError, match="not a host name"):
        mi.action_counts(store, "mx1'; DROP", p)


def test_action_counts_from_rspamd_log_count_gtube_and_greylisting_as_stat_does(env):
    params, logs, store, _ = env
    log = logs / "rspamd.log"
    lines = [
        "2026-12-01 08:55:07 #1(rspamd_proxy) <a>; proxy; rspamd_task_write_log: id: <1@x>, "
        "(default: F (no action): [0.90/15.00] [AUTH_NA(1.00){}]), len: 1",
        "2026-12-01 08:55:07 #1(rspamd_proxy) <b>; proxy; rspamd_task_write_log: id: <2@x>, "
        "(default: S (reject): [15.00/15.00] [GTUBE(0.00){}]), len: 1, forced: reject",
        "2026-12-01 08:55:08 #1(rspamd_proxy) <c>; proxy; rspamd_task_write_log: id: <3@x>, "
        "(default: F (soft reject): [5.90/15.00] [GREYLIST(0.00){greylisted;new record;}]), "
        "forced: soft reject \"Try again later\"; score=nan (set by greylist)",
        "2026-12-01 08:55:08 #1(rspamd_proxy) <d>; lua; something else entirely"]
    append(log, lines)
    # collected days later: the lines keep their own day (not the file's, as happened
    # when rspamd's stamps were not parsed and every line took the file's mtime)
    later = dt.datetime(2026, 12, 3, 12, tzinfo=dt.timezone.utc).timestamp()
    os.utime(log, (later, later))
    with Session(params) as s:
        mc.collect(s, store, logs={"rspamd_log": str(log)})
    p = mi.period_for("daily", "2026-12-01")
    got = mi.action_counts(store, "mx1", p).set_index("action")["messages"].to_dict()
    assert got == {"no action": 1, "reject": 1, "greylist": 1}


def test_periods():
    assert mi.period_for("weekly", "2026-12-01").start == dt.date(2026, 11, 25)
    m = mi.period_for("monthly", "2026-02-14")
    assert (m.start, m.end, m.label) == (dt.date(2026, 2, 1), dt.date(2026, 2, 28), "2026-02")
    y = mi.period_for("yearly", "2026-05-05")
    assert (y.days, y.bucket) == (365, "month")
    assert mi.period_for("daily", "2026-12-01").bucket == "hour"
    with pytest.raises(ValueError, match="period must be one of"):
        mi.period_for("hourly", "2026-12-01")
    with pytest.raises(ValueError, match="not a date"):
        mi.period_for("daily", "2026-13-01")


def test_fail2ban_tables_and_banned_now():
    import pandas as pd
    t = pd.Timestamp("2026-12-01 10:00", tz="UTC")
    bans = pd.DataFrame({"time": [t, t + pd.Timedelta("1h"), t + pd.Timedelta("2h")],
                         "jail": ["dovecot", "postfix-sasl", "recidive"],
                         "ip": ["203.0.113.5", "203.0.113.5", "198.51.100.7"]})
    rep = mi.repeat_offenders(bans)
    assert list(rep["ip"]) == ["203.0.113.5"] and rep["jails"].iloc[0] == "dovecot, postfix-sasl"
    per = mi.bans_per_jail_day(bans)
    assert per.loc[dt.date(2026, 12, 1)].sum() == 3
    state = {"last_collect": 1000.0, "fail2ban": {
        "banned": {"dovecot": ["203.0.113.5"], "recidive": ["198.51.100.7"]},
        "bips": [["dovecot", "203.0.113.5", 900, 600, 1], ["recidive", "198.51.100.7", 0, -1, 3]]}}
    now = mi.banned_now(state).set_index("ip")["seconds_left"].to_dict()
    assert now == {"203.0.113.5": 500, "198.51.100.7": "permanent"}


class FakeResolver:
    def __init__(self, answers):
        self.answers = answers

    def ask(self, name, rtype):
        got = self.answers.get((name, rtype), [])
        return ("NOERROR" if got else "NXDOMAIN"), got


def test_status_parsers_and_checks():
    import ipaddress
    from mailops.provision.checks.result import CheckFailed
    addr = [ipaddress.ip_address("203.0.113.10")]
    r = FakeResolver({("example.org", "MX"): ["10 mx1.example.org."],
                      ("mx1.example.org", "A"): ["203.0.113.10"]})
    assert dnsrecords.spf_allows("v=spf1 mx -all", addr, "mx1.example.org", r, "example.org")
    assert dnsrecords.spf_allows("v=spf1 ip4:203.0.113.0/24 -all", addr, "", r, "example.org")
    assert not dnsrecords.spf_allows("v=spf1 ip4:198.51.100.0/24 -all", addr, "", r, "example.org")
    assert status.parse_df("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
                           "/dev/sda1 100 95 5 95% /\n") == {"/": 95}
    facts = {"df": "h\n/dev/sda1 100 95 5 95% /\n", "procs": "master 1\ndovecot 0\n",
             "ports": "LISTEN 0 100 0.0.0.0:25 0.0.0.0:*\nLISTEN 0 100 127.0.0.1:53 0.0.0.0:*\n",
             "mem": "MemTotal: 1000 kB\nMemAvailable: 10 kB\n",
             "queue": json.dumps({"queue_name": "deferred", "arrival_time": time.time() - 90000}),
             "rspamd_log": "x error y\n" * 50 + "ok\n" * 10}
    p = load_params(ROOT / "parameters" / "lab.yaml")
    for fn, evidence in [(lambda: status._disk(facts, "df", "disk use"), "/ 95%"),
                         (lambda: status._services(facts, p), "dovecot"),
                         (lambda: status._ports(facts, p), "0.0.0.0:465"),
                         (lambda: status._memory(facts), "1% of memory"),
                         (lambda: status._queue(facts), "25.0 h old"),
                         (lambda: status._rspamd_log(facts), "50 of the last 60")]:
        with pytest.raises(CheckFailed, match=evidence.replace(".", r"\.")):
            fn()
    loop_only = {"ports": "LISTEN 0 100 127.0.0.1:25 0.0.0.0:*\n"}
    with pytest.raises(CheckFailed, match="0.0.0.0:25"):
        status._ports(loop_only, p)             # a public port on loopback only is down
    ok = status.dnsbl(FakeResolver({}), addr)
    assert len(ok) == 3 and not any(x["listed"] for x in ok)
    listed = status.dnsbl(FakeResolver({("10.113.0.203.zen.spamhaus.org", "A"): ["127.0.0.2"]}),
                          addr)
    assert [x["list"] for x in listed if x["listed"]] == ["zen.spamhaus.org"]


def test_schedule_units_and_cron(tmp_path):
    pf = local_params(tmp_path, collect_every_min=7)
    params = load_params(pf)
    sched = schedule.plan(params, pf, systemd=True, unit_dir=tmp_path / "units")
    names = sorted(p.name for p in sched.files)
    assert "mailops-collect-mx1.timer" in names and "mailops-report-weekly-mx1.service" in names
    assert sorted(sched.enable) == sorted(n for n in names if n.endswith(".timer"))
    assert schedule.install(sched)[-1][:3] == ["systemctl", "enable", "--now"]
    timer = (tmp_path / "units" / "mailops-collect-mx1.timer").read_text()
    assert "OnUnitInactiveSec=7min" in timer
    svc = (tmp_path / "units" / "mailops-report-daily-mx1.service").read_text()
    assert f"report daily --params {pf} --date yesterday" in svc
    if shutil.which("systemd-analyze"):
        res = subprocess.run(["systemd-analyze", "verify", *map(str, sched.files)],
                             capture_output=True, text=True)
        assert "error" not in res.stderr.lower() or "mailops" not in res.stderr, res.stderr
    cron = schedule.plan(params, pf, systemd=False, cron_dir=tmp_path / "cron")
    text = next(iter(cron.files.values()))
    assert text.splitlines()[2].startswith("*/7 * * * * root ") and "collect --params" in text
    assert schedule.install(cron) == []


def test_collect_request_carries_no_secret(tmp_path):
    params = load_params(ROOT / "parameters" / "lab.yaml")
    req = json.dumps(mc.request(params, {}))
    assert "learn-password" in req                      # a path on the server, read there
    from mailops.core.secrets import resolve
    try:
        secret = resolve(params.rspamd.controller_password, params.base_dir).reveal()
    except Exception:  # noqa: BLE001 - no lab secrets on this machine: nothing to leak
        return
    assert secret not in req


@pytest.mark.skipif(not browser.available(), reason="needs chromium and playwright")
def test_reports_open_offline_with_every_chart_and_table(env, tmp_path):
    params, logs, store, pf = env
    corpus.write(logs / "postfix.log", 600, "syslog", seed=3, days=3)
    with Session(params) as s:
        mc.collect(s, store, logs={"postfix": str(logs / "postfix.log")})
    start = corpus.first_day()
    t0 = dt.datetime.combine(start, dt.time(12), dt.timezone.utc).timestamp()
    mc._absorb(store, "mx1", mc.ZoneInfo("UTC"), {}, _reply([_row(i, t0, *(
        ("add header", 7.0) if i % 3 else ("no action", 0.2))) for i in range(30)]), {}, [], True)
    r = report.run(pf, "weekly", (start + dt.timedelta(days=2)).isoformat(), collect=False,
                   reports=tmp_path / "reports", pages=("rspamd", "rejects", "fail2ban"),
                   mail=False, log=lambda m: None)
    assert r.ok, r
    for name in r.pages:
        html = (r.directory / f"{name}.html").read_text()
        assert "cdnjs" not in html and "<script src=\"http" not in html
        page = browser.open_report(r.directory / f"{name}.html")
        assert not page.errors and not page.blocked, (name, page.errors, page.blocked)
        assert page.tables >= 1 and page.images, name
        assert all(i["complete"] and i["w"] > 100 and i["h"] > 100 for i in page.images), name
        assert "Traceback" not in page.text and "Error" not in page.text, name
    rejects = browser.open_report(r.directory / "rejects.html").text
    received = mi.postfix_summary(store, "mx1", mi.period_for(
        "weekly", start + dt.timedelta(days=2))).grand_totals()["received"]
    assert f"received\t{received}" in rejects
    top = browser.open_report(tmp_path / "reports" / "index.html")
    assert "weekly" in top.text and not top.errors and not top.blocked


def test_report_refuses_a_bad_period_and_date(env):
    _, _, _, pf = env
    with pytest.raises(report.ReportError, match="period must be one of"):
        report.run(pf, "hourly", collect=False)
    with pytest.raises(report.ReportError, match="not a date"):
        report.run(pf, "daily", "2026-02-30", collect=False)


def test_dns_check_table_and_records_to_publish():
    import ipaddress
    from types import SimpleNamespace
    from mailops.provision.dnsrecords import DnsRecord
    p = load_params(ROOT / "parameters" / "lab.yaml")
    key = "v=DKIM1; k=rsa; p=" + "A" * 390                  # longer than one TXT string
    dkim = {"lab.test": DnsRecord("mail._domainkey.lab.test", "TXT", key),
            "example.test": None}
    a = str(p.addresses[0])
    published = {
        ("mx1.lab.test", "A"): [a], (ipaddress.ip_address(a).reverse_pointer, "PTR"):
        ["mx1.lab.test."], ("lab.test", "MX"): ["10 mx1.lab.test."],
        ("lab.test", "TXT"): ["v=spf1 mx -all"], ("_dmarc.lab.test", "TXT"):
        ["v=DMARC1; p=quarantine; rua=mailto:postmaster@lab.test"],
        ("_smtp._tls.lab.test", "TXT"): ["v=TLSRPTv1; rua=mailto:postmaster@lab.test"],
        ("mail._domainkey.lab.test", "TXT"): [key],
        ("example.test", "MX"): ["10 mx1.lab.test."],
        ("example.test", "TXT"): ["v=spf1 ip4:198.51.100.0/24 -all"],
        ("_dmarc.example.test", "TXT"): ["v=DMARC1; p=none"]}
    session = SimpleNamespace(params=p)
    rows = status.dns_records(session, FakeResolver(published), dkim)
    got = {(r["name"], r["type"]): r["status"] for r in rows}
    assert all(v == "ok" for k, v in got.items() if k[0].endswith("lab.test") and
               not k[0].endswith("example.test")), got
    assert got[("_smtp._tls.example.test", "TXT (TLS-RPT)")] == "missing"
    check = dnsrecords.DnsCheck("mx1.lab.test", rows)
    assert check.ok is False and "_smtp._tls.example.test. IN TXT" in str(check)
    # a changed SPF (the server's address not allowed) and a removed DKIM record
    wrong = {**published, ("lab.test", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"]}
    del wrong[("mail._domainkey.lab.test", "TXT")]
    rows = {(r["name"], r["type"]): r for r in status.dns_records(session, FakeResolver(wrong),
                                                                   dkim)}
    assert rows[("lab.test", "TXT (SPF)")]["status"] == "different"
    dk = rows[("mail._domainkey.lab.test", "TXT (DKIM)")]
    assert dk["status"] == "missing"
    # the record to publish: zone-file syntax, split into strings of at most 255 bytes
    assert dk["publish"].startswith("mail._domainkey.lab.test. IN TXT \"v=DKIM1; k=rsa; p=")
    assert max(len(s) for s in dk["publish"].split('"')[1::2]) <= 255
    assert "".join(dk["publish"].split('"')[1::2]) == key
