"""Collect, the analysis tables, status and the HTML reports on the lab host.

Known traffic in, known counts out: clean, add-header, GTUBE and greylisted
messages counted per action in the store equal what was sent and the change of
rspamd's own /stat counters; bans equal fail2ban's sqlite and fail2ban-client;
collect twice adds nothing; a forced log rotation loses nothing; a wrapped rspamd
history is reported as a gap; the daily report's pages open in headless Chromium
with the network blocked, every chart drawn, no error."""
import datetime as dt
import json
import smtplib
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from mailops.insight import collect as mc
from mailops.insight import queries as mi
from mailops.insight import report, status
from mailops.provision import verify
from mailops.provision.session import Session
from mailops.insight.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import browser  # noqa: E402

USER = "alice@lab.test"
BAN_IP = "203.0.113.77"


@pytest.fixture(scope="module")
def store(params, tmp_path_factory):
    return Store(tmp_path_factory.mktemp("store"))


def collect(params, store):
    with Session(params) as s:
        return mc.collect(s, store)


def send25(t, subject: str, body: str = "An ordinary letter about the garden.\n"):
    """One message from the lab gateway on port 25 (as another MTA would send it);
    returns the SMTP reply code of the refusal, or 250."""
    token = uuid.uuid4().hex            # its own sender and body: greylisting keys on them
    msg = verify.message(f"s{token[:12]}@gw.lab.test", USER, token)
    msg.replace_header("Subject", subject)
    msg.set_content(body + f"\n{token}\n")
    try:
        with t.smtp(25) as s:
            s.send_message(msg, f"s{token[:12]}@gw.lab.test", [USER])
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code
    except smtplib.SMTPRecipientsRefused as exc:
        return next(iter(exc.recipients.values()))[0]
    return 250


def send587(t, subject: str) -> int:
    """One message from a signed-in user (no greylisting for them)."""
    msg = verify.message(USER, USER, uuid.uuid4().hex)
    msg.replace_header("Subject", subject)
    with t.smtp(587) as s:
        s.login(USER, t.passwords[USER].reveal())
        refused = s.send_message(msg, USER, [USER])
    return 250 if not refused else 550


def test_known_traffic_counted_per_action_equals_rspamd_stat(params, store):
    collect(params, store)                          # the baseline
    before = store.state("mx1")["stat"]
    t = verify.target_from(params)
    run = uuid.uuid4().hex[:8]
    sent = {"no action": 4, "add header": 3, "reject": 2, "greylist": 2}   # as sent
    codes = []
    for i in range(sent["no action"]):
        codes.append(send25(t, f"insight {run} clean {i}"))
    for i in range(sent["add header"]):     # from 25 it would be greylisted first
        codes.append(send587(t, f"insight {run} mailops-lab-add-header {i}"))
    for i in range(sent["reject"]):
        codes.append(send25(t, f"insight {run} gtube {i}", verify.smtp.GTUBE + "\n"))
    for i in range(sent["greylist"]):
        codes.append(send25(t, f"insight {run} mailops-lab-greylist {i}"))
    assert codes.count(250) == sent["no action"] + sent["add header"], codes
    assert codes.count(554) == sent["reject"] and codes.count(451) == sent["greylist"], codes
    time.sleep(1)
    r = collect(params, store)
    assert r.ok, r
    after = store.state("mx1")["stat"]
    want = {"no action": 4, "add header": 3, "reject": 2, "greylist": 2}
    # replies the user's own sieve rules send (a vacation, say) are scanned too
    generated = store.query("SELECT count(*) AS n FROM {rspamd} WHERE time >= $t AND "
                            "message_id LIKE 'dovecot-sieve-%'",
                            t=pd.Timestamp(before["time"]).floor("s"))["n"].iloc[0]
    want["no action"] += int(generated)
    delta = {k: after[f"action_{k.replace(' ', '_')}"] - before[f"action_{k.replace(' ', '_')}"]
             for k in want}
    full = {k[7:]: after[k] - before[k] for k in after if k.startswith("action_")}
    assert delta == want, (delta, full)
    assert after["scanned"] - before["scanned"] == sum(want.values())
    # the notebooks' table (from rspamd's log, which rspamd writes out a little later)
    p = mi.period_for("daily", dt.date.today(), params.timezone)
    since = pd.Timestamp(before["time"]).floor("s")
    deadline = time.monotonic() + 20
    while True:
        counts = mi.action_counts(store, "mx1", p, since=since,
                                  thresholds={"greylist": params.rspamd.greylist,
                                              "add header": params.rspamd.add_header,
                                              "reject": params.rspamd.reject})
        counts = counts.set_index("action")["messages"].to_dict()
        if sum(counts.values()) >= sum(delta.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
        collect(params, store)
    assert counts == {k: v for k, v in delta.items() if v}, (counts, delta)
    # the history has the same messages, but for GTUBE (refused before the filters ran)
    rows = store.query("SELECT action, subject FROM {rspamd} WHERE subject LIKE $s",
                       s=f"insight {run} %")
    # (where the greylisted ones are rspamd's "soft reject")
    hist = rows["action"].value_counts().to_dict()
    assert hist == {"no action": 4, "add header": 3, "soft reject": 2}, rows


def test_collect_twice_adds_nothing(params, store):
    collect(params, store)
    r = collect(params, store)
    assert r.round_trips == 1
    assert {k: v for k, v in r.added.items() if v and k not in ("stat", "queue")} == {}, r.added


def test_forced_log_rotation_loses_nothing(params, store, session):
    marks = [f"mailops-rotation-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    h = session.host
    h.run(["postlog", "-t", "postfix/insight-test", marks[0]])
    collect(params, store)
    h.run(["postlog", "-t", "postfix/insight-test", marks[1]])       # not yet collected
    h.run(["logrotate", "-f", "/etc/logrotate.d/mailops"])      # postfix.log -> .1
    h.run(["postlog", "-t", "postfix/insight-test", marks[2]])
    h.run(["logrotate", "-f", "/etc/logrotate.d/mailops"])      # .1 -> .2.gz
    listing = h.run(["sh", "-c", "ls /var/log/postfix.log*"]).out
    assert ".2.gz" in listing, listing
    r = collect(params, store)
    assert r.ok, r
    found = store.query("SELECT line FROM {postfix} WHERE line LIKE '%mailops-rotation-%'")
    for m in marks:
        n = sum(m in line for line in found["line"])
        assert n == 1, (m, n, listing)
    again = collect(params, store)
    assert "postfix" not in again.added, again.added


def test_bans_equal_fail2ban_sqlite_and_client(params, store, session):
    h = session.host
    h.run(["fail2ban-client", "set", "dovecot", "banip", BAN_IP])
    try:
        collect(params, store)
        db = json.loads(h.run(["python3", "-c", (
            "import sqlite3, json; c = sqlite3.connect('file:/var/lib/fail2ban/fail2ban.sqlite3"
            "?mode=ro', uri=True); print(json.dumps(c.execute('SELECT jail, ip, timeofban "
            "FROM bans').fetchall()))")]).out)
        stored = store.query("SELECT jail, ip, epoch(time)::BIGINT AS t FROM {fail2ban}")
        assert sorted(map(tuple, db)) == sorted(zip(stored["jail"], stored["ip"], stored["t"]))
        now = mi.banned_now(store.state("mx1"))
        client = h.run(["fail2ban-client", "get", "dovecot", "banip"]).out.split()
        ours = sorted(now[now["jail"] == "dovecot"]["ip"])
        assert ours == sorted(client) and BAN_IP in ours, (ours, client)
        left = now[now["ip"] == BAN_IP]["seconds_left"].iloc[0]
        assert 0 < left <= params.fail2ban.dovecot.bantime_s
    finally:
        h.run(["fail2ban-client", "set", "dovecot", "unbanip", BAN_IP], check=False)


def test_wrapped_history_is_reported_as_a_gap(params, store, session):
    collect(params, store)
    key = store.state("mx1")["history"]["key"]
    tag = uuid.uuid4().hex[:8]
    n = params.rspamd.history_rows
    # rspamd's own LPUSH + LTRIM, n + 1 new rows (plain JSON, as with `compress = false`):
    # every row seen last time is gone
    script = ("local t = tonumber(ARGV[3]) for i = 1, tonumber(ARGV[1]) do "
              "redis.call('LPUSH', KEYS[1], '{\"unix_time\":' .. (t + i / 1000) .. "
              "',\"message-id\":\"wrap-' .. ARGV[4] .. '-' .. i .. '\",\"action\":\"no action\",\"score\":0}') end "
              "redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1) "
              "return redis.call('LLEN', KEYS[1])")
    session.host.run(["redis-cli", "EVAL", script, "1", key, str(n + 1), str(n),
                      str(int(time.time())), tag])
    r = collect(params, store)
    assert any("wrapped" in w and "lost" in w for w in r.warnings), r
    assert store.state("mx1")["gaps"], store.state("mx1")
    wrapped = store.query("SELECT count(*) AS n FROM {rspamd} WHERE message_id LIKE $m",
                          m=f"wrap-{tag}-%")
    assert wrapped["n"].iloc[0] == n            # every row still in the list was kept
    again = collect(params, store)
    assert not any("wrapped" in w for w in again.warnings), again


def test_status_checks_the_server(params, session):
    r = status.run(session)
    by = {c.name: c for c in r.checks}
    for name in ("services running", "ports answering", "certificates", "disk", "inodes",
                 "memory", "mail queue", "last backup"):
        assert by[name].ok, by[name]
    assert "RSA" in by["certificates"].evidence and "EC" in by["certificates"].evidence
    with session.host.forward(53) as port:
        dns = {x["name"] + " " + x["type"]: x["status"] for x in
               status.dns_records(session, status.Resolver(port))}
    assert dns["lab.test MX"] == "ok" and dns["_dmarc.lab.test TXT (DMARC)"] == "ok", dns
    # a stopped service fails the check, and the command exits 1
    session.host.run(["fail2ban-client", "stop"])
    session.host.run(["sh", "-c", "for i in $(seq 50); do pgrep -x fail2ban-server || exit 0; "
                                  "sleep 0.1; done; exit 1"], check=False)
    try:
        bad = status.run(session)
        failed = {c.name: c.evidence for c in bad.checks if not c.ok}
        assert "fail2ban-server" in failed.get("services running", ""), failed
    finally:
        session.host.run(["fail2ban-client", "start"], check=False)
        session.host.run(["sh", "-c", "for i in $(seq 50); do fail2ban-client ping && exit 0; "
                                      "sleep 0.2; done; exit 1"])


@pytest.mark.skipif(not browser.available(), reason="needs chromium and playwright")
def test_daily_report_opens_offline_with_every_chart(params, tmp_path):
    from conftest import LAB_PARAMS
    r = report.run(LAB_PARAMS, "daily", "today", reports=tmp_path, mail=False,
                   log=lambda m: None)
    assert r.ok, r
    assert set(r.pages) == {"status", "rspamd", "rejects", "fail2ban"}
    for name in r.pages:
        page = browser.open_report(r.directory / f"{name}.html")
        assert not page.errors and not page.blocked, (name, page.errors, page.blocked)
        assert page.tables >= 1, name
        if name != "status":
            assert page.images and all(i["complete"] and i["w"] > 0 for i in page.images), name
    top = browser.open_report(tmp_path / "index.html")
    assert "daily" in top.text and not top.errors


def test_report_is_mailed_through_the_servers_submission(params, tmp_path):
    """insight.report_to: the pages arrive as attachments in the mailbox, sent as the
    first mailbox through 587 (no password in any output)."""
    import yaml
    from conftest import LAB_PARAMS
    data = yaml.safe_load(Path(LAB_PARAMS).read_text())
    data["insight"] = {"report_to": "bob@example.test"}
    # beside lab.yaml, so its relative paths resolve the same way
    pf = Path(LAB_PARAMS).parent / f".test-report-{uuid.uuid4().hex[:8]}.yaml"
    pf.write_text(yaml.safe_dump(data))
    try:
        r = report.run(pf, "daily", "today", collect=False, reports=tmp_path,
                       pages=("rspamd",), log=lambda m: None)
    finally:
        pf.unlink()
    assert r.mailed_to == "bob@example.test" and r.ok, r
    t = verify.target_from(params)
    subject = f"mailops daily report {r.label} for mx1"
    deadline = time.monotonic() + 20
    with t.imap("bob@example.test") as m:
        while True:
            m.select("INBOX")
            _, found = m.search(None, "SUBJECT", f'"{subject}"')
            if found[0].split() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        uid = found[0].split()[-1]
        _, got = m.fetch(uid, "(RFC822)")
        m.store(uid, "+FLAGS", "\\Deleted")
        m.expunge()
    import email
    import email.policy
    msg = email.message_from_bytes(got[0][1], policy=email.policy.default)
    names = [part.get_filename() for part in msg.iter_attachments()]
    assert names == ["index.html", "rspamd.html"], names
    password = t.passwords["alice@lab.test"].reveal()
    assert password not in str(r) and password.encode() not in got[0][1]
