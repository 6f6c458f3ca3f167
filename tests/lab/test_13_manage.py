"""Management on the lab hosts, through the CLI and the notebooks under papermill:
mailboxes (add with a generated or referenced password, list with usage and last
login, disable/enable on every port with mail still delivered, passwd live at once,
remove keeping the mail), aliases, catch-alls and domains; bad input refused with
nothing written; quota warnings and over-quota refusals; users' sieve scripts,
dry runs and the admin vacation (Debian 12, and 13 for the dovecot 2.4 names)."""
import contextlib
import datetime as dt
import imaplib
import json
import smtplib
import socket
import stat
import time
import uuid
from unittest import mock

import pytest

from conftest import LAB_PARAMS, ROOT, mailops_cli
from mailops.manage import accounts as manage, users, usersieve
from mailops.provision.checks.clients import message, target_from
from mailops.core.secrets import Secret
from mailops.provision.session import Session



def cli(*args, params=LAB_PARAMS, check=True, env=None):
    return mailops_cli(*args, "--params", str(params), check=check, env=env)


def tag() -> str:
    return uuid.uuid4().hex[:8]


def login(t, user, password) -> bool:
    try:
        with t.imap_connect() as m:
            m.login(user, password)
        return True
    except imaplib.IMAP4.error:
        return False


def smtp_auth(t, user, password) -> bool:
    with t.smtp(587) as s:
        try:
            s.login(user, password)
            return True
        except smtplib.SMTPAuthenticationError:
            return False


@contextlib.contextmanager
def managesieve(t, user, password):
    """sievelib's ManageSieve client, its STARTTLS checking the lab CA; None: login refused."""
    import ssl
    from sievelib import managesieve as ms
    plain = ssl.create_default_context
    # a refused login waits out dovecot's failure delay (longer after many)
    with mock.patch.object(ms.ssllib, "create_default_context",
                           lambda *a, **k: plain(cafile=t.cafile)), \
            mock.patch.object(ms.Client, "read_timeout", 40):
        c = ms.Client(t.address, 4190, srvhostname=t.hostname)
        ok = c.connect(user, password, starttls=True, authmech="PLAIN")
        try:
            yield c if ok else None
        finally:
            if ok:
                c.logout()


def sieve_auth(t, user, password) -> bool:
    with managesieve(t, user, password) as c:
        return c is not None


def send(t, sender, password, to, subject="hello", body="A short note.\n", headers=None,
         rcpt=None) -> str:
    token = uuid.uuid4().hex
    msg = message(sender, to, token)
    msg.replace_header("Subject", subject)
    msg.set_content(body)
    for k, v in (headers or {}).items():
        msg[k] = v
    with t.smtp(587) as s:
        s.login(sender, password)
        s.send_message(msg, sender, rcpt or [to])
    return token


def wait_for(t, user, password, criteria, wait=20.0, box="INBOX", expect=1) -> list[bytes]:
    deadline = time.monotonic() + wait
    while True:
        with t.imap_connect() as m:
            m.login(user, password)
            typ, _ = m.select(box)            # NO: the folder is not made yet
            found = []
            if typ == "OK":
                _, data = m.search(None, *[f'"{c}"' if " " in c else c for c in criteria])
                found = data[0].split()
            if len(found) >= expect or time.monotonic() > deadline:
                return found
        time.sleep(0.5)


def headers_of(t, user, password, num, box="INBOX") -> str:
    with t.imap_connect() as m:
        m.login(user, password)
        m.select(box)
        return m.fetch(num, "(BODY.PEEK[HEADER])")[1][0][1].decode()


@pytest.fixture
def mailboxes(params):
    """New mailboxes with known passwords (removed, mail purged, afterwards)."""
    made = []

    def make(*locals_, domain="lab.test", session_params=None, quota_mb=None):
        p = session_params or params
        out = []
        with Session(p) as s:
            for local in locals_:
                address = f"{local}-{tag()}@{domain}"
                password = Secret("pw-" + uuid.uuid4().hex)
                users.apply(s, users.plan_add_mailbox(s, address, password, quota_mb))
                made.append((p, address))
                out.append((address, password.reveal()))
        return out
    yield make
    for p, address in made:
        with Session(p) as s:
            if address in users.state(s).mailboxes:
                users.apply(s, users.plan_remove_mailbox(s, address, cascade=True))
            s.host.run(["rm", "-rf", manage.REMOVED_DIR])


# -- mailboxes through the CLI --------------------------------------------------------------
def test_add_list_login_passwd_disable_enable_remove(params, session, tmp_path):
    t = target_from(params)
    addr = f"carol-{tag()}@lab.test"
    add = cli("user", "add", addr, "--quota", "20")           # no terminal: generated
    out = add.stdout + add.stderr
    pw_file = manage.PASSWORD_DIR / f"{addr}.txt"
    assert str(pw_file) in out and "+ mailboxes " + addr in out
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    password = pw_file.read_text().strip()
    assert password not in out
    assert login(t, addr, password)

    listed = json.loads(cli("user", "list", "--domain", "lab.test", "--json").stdout)
    row = next(r for r in listed if r["address"] == addr)
    assert row["quota_mb"] == 20 and row["active"] and row["created"]
    assert row["last_login"], "dovecot's last_login plugin recorded no login"
    assert all(r["address"].endswith("@lab.test") for r in listed)

    dup = cli("user", "add", addr, "--password", "generate", check=False)
    assert dup.returncode == 2 and "exists already" in dup.stderr

    # passwd: live at once, the old one refused at once
    env = {"NEWPW": "pw-" + uuid.uuid4().hex}
    cli("user", "passwd", addr, "--password", "env:NEWPW", env=env)
    assert login(t, addr, env["NEWPW"]) and not login(t, addr, password)
    password = env["NEWPW"]

    # disabled: no login on any port, mail still delivered and kept
    dry = cli("user", "disable", addr, "--dry-run")
    assert "dry run: nothing written" in dry.stdout and login(t, addr, password)
    cli("user", "disable", addr)
    assert not login(t, addr, password)
    assert not smtp_auth(t, addr, password)
    assert not sieve_auth(t, addr, password)
    bob = "bob@example.test"
    token = send(t, bob, t.passwords[bob].reveal(), addr, "while disabled")
    cli("user", "enable", addr)
    assert login(t, addr, password) and smtp_auth(t, addr, password)
    assert wait_for(t, addr, password, ["HEADER", "X-Mailops-Verify", token])

    # remove: refused while an alias points at it; --cascade takes the alias; mail kept
    alias = f"sales-{tag()}@lab.test"
    cli("alias", "add", alias, addr)
    refused = cli("user", "remove", addr, check=False)
    assert refused.returncode == 2 and alias in refused.stderr and "--cascade" in refused.stderr
    assert addr in users.state(session).mailboxes
    gone = cli("user", "remove", addr, "--cascade")
    assert "mail kept in" in gone.stdout
    st = users.state(session)
    assert addr not in st.mailboxes and alias not in st.aliases
    kept = gone.stdout.split("mail kept in ")[1].split()[0]
    assert session.host.run(["test", "-d", kept + "/mdbox"], check=False).ok
    assert not login(t, addr, password)
    session.host.run(["rm", "-rf", kept])
    pw_file.unlink()


def test_a_client_that_follows_the_settings_logs_in_on_every_port_they_name(params, mailboxes):
    """`mailops user settings`: every row is tried as a client would take it (the TLS it
    says, the user name it says, the user's password), and a disabled mailbox is refused."""
    [(addr, password)] = mailboxes("dora")
    rows = json.loads(cli("user", "settings", addr, "--json").stdout)
    t = target_from(params)
    assert [r["port"] for r in rows] == [993, 465, 587, 4190]
    for r in rows:
        assert r["host"] == params.hostname and r["username"] == addr
        if r["protocol"] == "IMAP":
            with t.imap_connect() as m:
                assert m.login(r["username"], password)[0] == "OK"
        elif r["protocol"] == "SMTP":
            with t.smtp(r["port"], "implicit" if r["security"] == "SSL/TLS" else "starttls") as c:
                assert c.login(r["username"], password)[0] == 235
        else:                                 # ManageSieve: STARTTLS offered in its greeting
            greeting = b""
            with socket.create_connection((t.address, r["port"]), timeout=10) as sock:
                while b"\r\nOK" not in greeting and len(greeting) < 65536:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    greeting += chunk
            assert b'"STARTTLS"' in greeting, greeting
    cli("user", "disable", addr)
    refused = mailops_cli("user", "settings", addr, "--params", str(LAB_PARAMS), check=False)
    assert refused.returncode == 2 and "is disabled" in refused.stderr, refused.stderr


def test_purge_archives_in_borg_before_deleting(params, session, mailboxes):
    (addr, pw), = mailboxes("purge")
    t = target_from(params)
    token = send(t, "bob@example.test", t.passwords["bob@example.test"].reveal(), addr)
    assert wait_for(t, addr, pw, ["HEADER", "X-Mailops-Verify", token])
    out = cli("user", "remove", addr, "--purge").stdout
    archive = out.split("borg archive ")[-1].split(",")[0]
    assert archive.startswith(f"removed-{addr}-")
    listed = session.host.run(["/usr/local/sbin/mailops-borg", "list", "--short", "::" + archive]).out
    assert any("mdbox/storage" in line for line in listed.splitlines())
    assert not session.host.run(["test", "-e", manage.home_of(addr)], check=False).ok
    session.host.run(["/usr/local/sbin/mailops-borg", "delete", "::" + archive], timeout=300)


BAD = [
    (["user", "add", 'a"b@lab.test', "--password", "generate"], "address"),
    (["user", "add", "a%b@lab.test", "--password", "generate"], "address"),
    (["user", "add", "x';drop table mailboxes;--@lab.test", "--password", "generate"], "address"),
    (["user", "add", "a\n@lab.test", "--password", "generate"], "control character"),
    (["user", "add", "a" * 70 + "@lab.test", "--password", "generate"], "too long"),
    (["user", "add", "x@bücher.test", "--password", "generate"], "xn--bcher-kva.test"),
    (["user", "add", "alice@lab.test", "--password", "generate"], "exists already"),
    (["user", "add", "x@nowhere.test", "--password", "generate"], "domain add"),
    (["user", "quota", "alice@lab.test", "0"], "quota_mb"),
    (["user", "quota", "alice@lab.test", "-3"], "quota_mb"),
    (["alias", "add", "alice@lab.test", "bob@example.test"], "shadow"),
    (["alias", "add", "fw@lab.test", "someone@elsewhere.org"], "SRS"),
    (["alias", "add", "team@lab.test", "postmaster@lab.test", "team@lab.test"], "loop"),
    (["domain", "remove", "lab.test"], "remove them first"),
    (["catchall", "set", "lab.test", "nobody@lab.test"], "neither"),
    (["sieve", "vacation", "alice@lab.test", "--start", "2026-12-10", "--end", "2026-12-01",
      "--body", "x"], "before the start"),
]


def test_bad_input_is_refused_naming_the_field_and_writes_nothing(params, session):
    before = users.state(session)
    for args, words in BAD:
        r = cli(*args, check=False)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert words in r.stderr and "nothing was written" in r.stderr, (args, r.stderr)
    assert users.state(session) == before


def test_alias_catchall_and_domain(params, session, mailboxes):
    t = target_from(params)
    (dest, pw), = mailboxes("dest")
    alias = f"info-{tag()}@lab.test"
    cli("alias", "add", alias, dest)
    bob = "bob@example.test"
    token = send(t, bob, t.passwords[bob].reveal(), alias, rcpt=[alias])
    assert wait_for(t, dest, pw, ["HEADER", "X-Mailops-Verify", token])
    cli("alias", "remove", alias)
    assert alias not in users.state(session).aliases

    domain = f"d{tag()}.test"
    added = cli("domain", "add", domain).stdout
    assert f"mail._domainkey.{domain}" in added and "v=DKIM1" in added and " MX " in added
    assert session.host.run(["test", "-f", f"/var/lib/rspamd/dkim/{domain}.mail.key"],
                            check=False).ok
    (box, bpw), = mailboxes("x", domain=domain)
    cli("catchall", "set", domain, box)
    token = send(t, bob, t.passwords[bob].reveal(), f"anything@{domain}",
                 rcpt=[f"anything@{domain}"])
    assert wait_for(t, box, bpw, ["HEADER", "X-Mailops-Verify", token])
    refused = cli("domain", "remove", domain, check=False)
    assert refused.returncode == 2 and "1 mailbox" in refused.stderr
    cli("user", "remove", box, "--cascade")
    cli("domain", "remove", domain)
    assert domain not in users.state(session).domains
    session.host.run(["rm", "-f", f"/var/lib/rspamd/dkim/{domain}.mail.key"])


def test_users_notebook_under_papermill(params, session, tmp_path):
    import papermill
    from mailops.core.kernel import execute
    addr = f"nb-{tag()}@lab.test"
    out = tmp_path / "users.ipynb"
    nb = ROOT / "notebooks" / "management" / "users.ipynb"
    rec = tmp_path / "rec.json"
    execute(nb, out, {"params_file": str(LAB_PARAMS), "action": "add", "address": addr,
                      "password": "generate", "quota_mb": 30, "dry_run": True,
                      "record_file": str(rec)}, cwd=str(nb.parent))
    assert json.loads(rec.read_text())["status"] == "planned"
    assert addr not in users.state(session).mailboxes
    execute(nb, out, {"params_file": str(LAB_PARAMS), "action": "add", "address": addr,
                      "password": "generate", "quota_mb": 30, "dry_run": False,
                      "record_file": str(rec)}, cwd=str(nb.parent))
    record = json.loads(rec.read_text())
    assert record["status"] == "applied"
    assert f"mail settings for {addr}: user name {addr}" in out.read_text()   # onboarding
    assert users.state(session).mailboxes[addr]["quota_bytes"] == 30 * 1048576
    password = (manage.PASSWORD_DIR / f"{addr}.txt").read_text().strip()
    assert password not in out.read_text() and password not in rec.read_text()
    with pytest.raises(papermill.PapermillExecutionError, match="exists already"):
        execute(nb, out, {"params_file": str(LAB_PARAMS), "action": "add", "address": addr,
                          "password": "generate", "dry_run": False}, cwd=str(nb.parent))
    cli("user", "remove", addr)
    session.host.run(["rm", "-rf", manage.REMOVED_DIR])
    (manage.PASSWORD_DIR / f"{addr}.txt").unlink()


# -- quota warnings and over quota (both dovecot series) --------------------------------------
def filler(kib: int) -> str:
    line = "The quarterly report is attached below for the archive of the committee.\n"
    return line * (kib * 1024 // len(line))


def test_quota_warnings_once_per_crossing_and_over_quota_refused(any_lab, mailboxes):
    path, p = any_lab
    t = target_from(p)
    (box, pw), (sender, spw) = mailboxes("full", "sender", session_params=p)
    with Session(p) as s:
        users.apply(s, users.plan_set_quota(s, box, 1))          # 1 MiB
    warn = lambda pct: wait_for(t, box, pw, ["SUBJECT", f"is {pct}% full"], wait=8)  # noqa: E731
    send(t, sender, spw, box, "part one", filler(860))             # 84 %: crosses 80
    assert len(warn(80)) == 1 and not warn(95)
    send(t, sender, spw, box, "part two", filler(140))             # 98 %: crosses 95
    assert len(warn(95)) == 1 and len(warn(80)) == 1
    # over quota and its grace (2.3: 10 %, 2.4: 1 MiB)
    token = send(t, sender, spw, box, "part three", filler(1500))
    bounced = wait_for(t, sender, spw, ["BODY", token], wait=30)
    assert bounced, "the over-quota message was neither delivered nor returned to its sender"
    assert not wait_for(t, box, pw, ["HEADER", "X-Mailops-Verify", token], wait=1)
    with Session(p) as s:
        log = s.host.run(["grep", "-c", f"to=<{box}>.*status=bounced.*[Qq]uota",
                          "/var/log/postfix.log"], check=False).out.strip()
    assert int(log or 0) >= 1
    assert len(warn(80)) == 1 and len(warn(95)) == 1              # once per crossing


# -- users' sieve scripts and the vacation (both dovecot series) -------------------------------
def test_sieve_scripts_validated_compiled_and_never_clobbered(any_lab, mailboxes):
    path, p = any_lab
    t = target_from(p)
    (box, pw), = mailboxes("sieve", session_params=p)
    rules = usersieve.build([usersieve.Rule("subject", "invoice", "fileinto", "Billing/2026"),
                             usersieve.Rule("from", "noisy@example.test", "flag", "\\Flagged",
                                            stop=False)])
    with Session(p) as s:
        users.apply(s, usersieve.plan_put(s, box, "rules", rules, activate=True))
        results = usersieve.test(s, box, rules, [
            "From: a@example.org\nSubject: Your invoice 42\n\nhi\n",
            "From: b@example.org\nSubject: lunch\n\nhi\n"])
        assert "Billing/2026" in results[0].actions and "create mailbox" in results[0].actions
        assert "Billing" not in results[1].actions and all(r.ok for r in results)
        # sievelib refuses this one; the server's compiler refuses one sievelib lets through
        with pytest.raises(Exception, match="not valid sieve"):
            usersieve.plan_put(s, box, "broken", 'fileinto "x";', activate=True)
        with pytest.raises(Exception, match="exited"):
            users.apply(s, usersieve.plan_put(s, box, "rules2", 'require "fileinto";\n'
                                                                 'fileinto "x"', activate=True,
                                              replace=True))
        active = [x["name"] for x in usersieve.scripts(s, box) if x["active"]]
        assert active == ["rules"]
    # a script the user uploads over ManageSieve is listed and not overwritten silently
    with managesieve(t, box, pw) as c:
        assert c.putscript("phone", 'require "fileinto";\nif header :is "x-a" "b" '
                                    '{ fileinto "B"; }\n')
    with Session(p) as s:
        assert "phone" in [x["name"] for x in usersieve.scripts(s, box)]
        with pytest.raises(manage.ManageError, match="other content.*replace"):
            usersieve.plan_put(s, box, "phone", "keep;\n")
        assert "fileinto" in usersieve.show(s, box, "phone")
    # the active rules file for real
    token = send(t, "bob@example.test", load_pw(p, "bob@example.test"), box, "invoice 7")
    assert wait_for(t, box, pw, ["HEADER", "X-Mailops-Verify", token], box="Billing/2026")


def load_pw(p, user):
    return target_from(p).passwords[user].reveal()


def test_vacation_replies_once_to_people_and_never_to_machines(any_lab, mailboxes):
    path, p = any_lab
    t = target_from(p)
    (user, upw), = mailboxes("away", session_params=p)
    alias = f"office-{tag()}@lab.test"
    senders = dict(mailboxes("s1", "s2", "s3", "s4", "s5", "s6", domain="example.test",
                             session_params=p))
    s1, s2, s3, s4, s5, s6 = senders
    today = dt.date.today()
    with Session(p) as s:
        users.apply(s, users.plan_add_alias(s, alias, [user]))
        users.apply(s, usersieve.plan_put(s, user, "own", usersieve.build(
            [usersieve.Rule("subject", "invoice", "fileinto", "Billing")]), activate=True))
        plan = usersieve.plan_vacation(s, user, today - dt.timedelta(days=1),
                                       today + dt.timedelta(days=1), "Away this week",
                                       "I am away; back on Monday.", days=1)
        assert alias in plan.diff()                        # :addresses lists the alias
        users.apply(s, plan)
    replies = lambda who: wait_for(t, who, senders[who], ["SUBJECT", "Away this week"],  # noqa: E731
                                   wait=6)
    send(t, s1, senders[s1], user, "first")
    assert len(replies(s1)) == 1
    assert "auto-replied" in headers_of(t, s1, senders[s1], replies(s1)[0]).lower()
    send(t, s1, senders[s1], user, "second")              # same sender, same period
    tok = send(t, s1, senders[s1], user, "invoice 9")     # the user's own rules still run
    assert wait_for(t, user, upw, ["HEADER", "X-Mailops-Verify", tok], box="Billing")
    assert len(replies(s1)) == 1
    send(t, s2, senders[s2], alias, "to the alias", rcpt=[alias])
    assert len(replies(s2)) == 1
    for who, headers in ((s3, {"Auto-Submitted": "auto-generated"}),
                         (s4, {"Precedence": "bulk"}),
                         (s5, {"List-Id": "<news.example.test>"})):
        tok = send(t, who, senders[who], user, "machine", headers=headers)
        assert wait_for(t, user, upw, ["HEADER", "X-Mailops-Verify", tok])
        assert not replies(who), headers
    # a null sender: nothing to reply to (sent inbound on port 25, as a bounce comes:
    # From a domain of its own; one of ours would fail DMARC and go to Junk unread)
    with t.smtp(25) as c:
        msg = message(s6, user, uuid.uuid4().hex)
        msg.replace_header("From", "Mail Delivery System <MAILER-DAEMON@mx.elsewhere.invalid>")
        c.send_message(msg, "<>", [user])
    assert wait_for(t, user, upw, ["HEADER", "X-Mailops-Verify", msg["X-Mailops-Verify"]])
    assert not replies(s6)
    # ended: a vacation whose end date has passed replies to nobody
    with Session(p) as s:
        users.apply(s, usersieve.plan_vacation(s, user, today - dt.timedelta(days=5),
                                               today - dt.timedelta(days=1), "Away this week",
                                               "I was away.", days=1))
    send(t, s6, senders[s6], user, "after the end")
    assert not replies(s6)
    with Session(p) as s:
        users.apply(s, usersieve.plan_vacation_off(s, user))
        assert "vacation" not in [x["name"] for x in usersieve.scripts(s, user)]


def test_sieve_cli(params, mailboxes, tmp_path):
    (box, _), = mailboxes("cli")
    script = tmp_path / "s.sieve"
    script.write_text('require ["fileinto"];\nif header :contains "subject" "x" { fileinto "X"; }\n')
    mail = tmp_path / "m.eml"
    mail.write_text("From: a@example.org\nSubject: x marks\n\nhi\n")
    assert "+++ one (planned)" in cli("sieve", "put", box, "one", str(script), "--activate").stdout
    assert "one" in cli("sieve", "list", box).stdout
    assert "fileinto" in cli("sieve", "show", box, "one").stdout
    assert "store message in folder: X" in cli("sieve", "test", box, str(script), str(mail)).stdout
    script.write_text("keep;\n")
    refused = cli("sieve", "put", box, "one", str(script), check=False)
    assert refused.returncode == 2 and "--replace" in refused.stderr
    cli("sieve", "deactivate", box)
    cli("sieve", "delete", box, "one")
    assert "one" not in cli("sieve", "list", box).stdout
