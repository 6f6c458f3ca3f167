"""fail2ban on the lab host, for real: wrong IMAP passwords from one lab address
get it refused on 993 while another address still connects, wrong SMTP AUTH on
587 likewise; the bans are in fail2ban's sqlite; every jail's filter matches the
lab's own log lines (fail2ban-regex)."""
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mailops.provision import verify
from mailops.provision.checks import smtp
from mailops.core.host import LocalHost
from mailops.provision.session import Session
from mailops.provision.steps import fail2ban as f2b

# extra client addresses on the lab bridge (documentation range; /32, no route changes)
IMAP_ATTACKER, SMTP_ATTACKER, BYSTANDER = "198.51.100.2", "198.51.100.3", "198.51.100.4"
LATE_ATTACKER = "198.51.100.5"          # after the logs were rotated
# one failure, fewer than maxretry: a new address each run (fail2ban keeps counting
# an address's failures across runs within findtime)
QUIET = f"198.51.100.{random.randint(100, 199)}"
ADDRESSES = (IMAP_ATTACKER, SMTP_ATTACKER, BYSTANDER, LATE_ATTACKER, QUIET)


@pytest.fixture(scope="module")
def addresses(lab_up):
    local = LocalHost()
    for a in ADDRESSES:
        local.run(["ip", "addr", "replace", f"{a}/32", "dev", lab_up.bridge])
    yield
    for a in ADDRESSES:
        local.run(["ip", "addr", "del", f"{a}/32", "dev", lab_up.bridge], check=False)


@pytest.fixture(scope="module")
def host(params, addresses):
    with Session(params) as s:
        # dovecot slows every login from an address by its past failures (auth penalty,
        # kept in memory): a restart lets a re-run meet the same server as a first run; and
        # postfix's idle smtpd processes would meet the old auth connection gone (454) once
        s.host.run(["sh", "-c", "service dovecot restart </dev/null >/dev/null 2>&1; "
                                "postfix reload >/dev/null 2>&1; "
                                "for i in $(seq 1 50); do [ -n \"$(ss -ltnH 'sport = :993')\" ] "
                                "&& exit 0; sleep 0.2; done; exit 1"], timeout=60)
        s.host.run(["fail2ban-client", "unban", "--all"])
        yield s.host
        s.host.run(["fail2ban-client", "unban", "--all"])


def tls_connect(t, port, src):
    raw = socket.create_connection((t.address, port), timeout=10, source_address=(src, 0))
    return t.context().wrap_socket(raw, server_hostname=t.hostname)


def imap_wrong_login(t, src, user):
    with tls_connect(t, 993, src) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        s.sendall(f'a LOGIN "{user}" "wrong-password"\r\n'.encode())
        line = f.readline()
        while line.startswith(b"*"):
            line = f.readline()
        assert line.startswith(b"a NO"), line


def smtp_wrong_auth(t, src, user):
    import base64
    import smtplib
    s = smtplib.SMTP(t.address, 587, timeout=15, local_hostname="attacker.lab.test",
                     source_address=(src, 0))
    s._host = t.hostname
    try:
        s.starttls(context=t.context())
        s.ehlo()
        code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(
            f"\0{user}\0wrong-password".encode()).decode())
        assert code == 535, code
    finally:
        s.close()


def fail_from(wrong_login, t, src, n, user="alice@lab.test"):
    """``n`` wrong logins from ``src``, in parallel (each is slowed by dovecot on purpose)."""
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda _: wrong_login(t, src, user), range(n)))


def banned(host, jail):
    out = host.run(["fail2ban-client", "status", jail]).out
    line = next(x for x in out.splitlines() if "Banned IP list" in x)
    return line.split(":", 1)[1].split()


def wait_banned(host, jail, ip, wait=30):
    deadline = time.monotonic() + wait
    while ip not in banned(host, jail):
        assert time.monotonic() < deadline, f"{ip} not banned by {jail}: {banned(host, jail)}"
        time.sleep(0.5)


def refused(t, port, src, wait=0.0):
    """Whether ``src`` is refused on ``port``, waiting up to ``wait`` seconds: fail2ban lists
    a ban before its action has added the nftables rule (the first ban creates the table)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            socket.create_connection((t.address, port), timeout=5,
                                     source_address=(src, 0)).close()
        except ConnectionRefusedError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.3)


def in_sqlite(host, jail, ip):
    out = host.run(["sqlite3", "-readonly", "-cmd", ".timeout 10000", f2b.DB_FILE,
                    f"SELECT count(*) FROM bans WHERE jail = '{jail}' AND ip = '{ip}'"]).out
    return int(out.strip())


def test_wrong_imap_passwords_ban_that_address_only(params, host):
    t = verify.target_from(params)
    fail_from(imap_wrong_login, t, IMAP_ATTACKER, params.fail2ban.dovecot.maxretry)
    wait_banned(host, "dovecot", IMAP_ATTACKER)
    assert refused(t, 993, IMAP_ATTACKER, wait=10)
    with tls_connect(t, 993, BYSTANDER) as s:       # another address still gets in
        assert s.makefile("rb").readline().startswith(b"* OK")
    if IMAP_ATTACKER not in banned(host, "recidive"):   # (re-runs in a day: a repeat offender)
        assert not refused(t, 587, IMAP_ATTACKER)    # the dovecot jail bans IMAP ports only
    assert in_sqlite(host, "dovecot", IMAP_ATTACKER) >= 1


def test_wrong_smtp_auth_on_587_bans_that_address_only(params, host):
    t = verify.target_from(params)
    fail_from(smtp_wrong_auth, t, SMTP_ATTACKER, params.fail2ban.postfix_sasl.maxretry)
    wait_banned(host, "postfix-sasl", SMTP_ATTACKER)
    assert all(refused(t, port, SMTP_ATTACKER, wait=10) for port in (25, 465, 587))
    s = socket.create_connection((t.address, 587), timeout=5, source_address=(BYSTANDER, 0))
    assert s.recv(100).startswith(b"220")
    s.close()
    assert in_sqlite(host, "postfix-sasl", SMTP_ATTACKER) >= 1


def test_fewer_failures_than_maxretry_ban_nobody(params, host):
    t = verify.target_from(params)
    imap_wrong_login(t, QUIET, "bob@example.test")
    time.sleep(2)
    assert QUIET not in banned(host, "dovecot") and not refused(t, 993, QUIET)


def managesieve_wrong_login(t, user):
    """ManageSieve (RFC 5804): STARTTLS, then AUTHENTICATE PLAIN with a wrong password."""
    import base64

    def until_ok(f):
        while True:
            line = f.readline()
            assert line, "connection closed"
            if line.startswith((b"OK", b"NO", b"BYE")):
                return line
    raw = socket.create_connection((t.address, 4190), timeout=10)
    f = raw.makefile("rb")
    until_ok(f)
    raw.sendall(b"STARTTLS\r\n")
    assert until_ok(f).startswith(b"OK")
    s = t.context().wrap_socket(raw, server_hostname=t.hostname)
    f = s.makefile("rb")
    until_ok(f)                                  # capabilities again, over TLS
    cred = base64.b64encode(f"\0{user}\0wrong-password".encode()).decode()
    s.sendall(f'AUTHENTICATE "PLAIN" "{cred}"\r\n'.encode())
    assert until_ok(f).startswith(b"NO")
    s.sendall(b"LOGOUT\r\n")
    s.close()


def test_managesieve_failures_are_counted_too(params, host):
    t = verify.target_from(params)
    managesieve_wrong_login(t, "alice@lab.test")     # from the gateway: ignored, but logged
    deadline = time.monotonic() + 15
    while True:
        out = host.run(["fail2ban-regex", "--print-all-matched", f2b.DOVECOT_LOG,
                        "/etc/fail2ban/filter.d/mailops-dovecot.conf"], timeout=120).out
        if "managesieve-login" in out or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "managesieve-login" in out


def fail2ban_regex(host, log, filt):
    out = host.run(["fail2ban-regex", log, filt], timeout=120).out
    line = next(x for x in out.splitlines() if x.startswith("Lines:"))
    return int(line.split(",")[2].split()[0])          # "... N matched, ..."


def test_every_jail_filter_matches_the_lab_log_lines(params, host):
    # the tests above made the failed-login lines; a spam refusal is made here (from the
    # gateway, on the ignore list: logged, not banned)
    smtp.gtube_refused(verify.target_from(params), "alice@lab.test")
    time.sleep(1)
    assert fail2ban_regex(host, f2b.DOVECOT_LOG, "/etc/fail2ban/filter.d/mailops-dovecot.conf") >= 5
    assert fail2ban_regex(host, f2b.POSTFIX_LOG, "postfix[mode=auth]") >= 5
    assert fail2ban_regex(host, f2b.POSTFIX_LOG, "/etc/fail2ban/filter.d/mailops-rspamd.conf") >= 1
    assert fail2ban_regex(host, f2b.LOG_FILE, "recidive") >= 2
    # and no line of a successful login or delivery
    ok_lines = host.run(["sh", "-c", "grep -h -e 'Login: user=' -e 'status=sent' "
                         f"{f2b.DOVECOT_LOG} {f2b.POSTFIX_LOG} | tail -n 200 > /tmp/ok.log; "
                         "wc -l < /tmp/ok.log"]).out
    assert int(ok_lines) > 0
    for filt in ("/etc/fail2ban/filter.d/mailops-dovecot.conf", "postfix[mode=auth]",
                 "/etc/fail2ban/filter.d/mailops-rspamd.conf"):
        assert fail2ban_regex(host, "/tmp/ok.log", filt) == 0, filt


def test_jails_settings_are_the_parameters(params, host):
    f = params.fail2ban
    assert host.run(["fail2ban-client", "get", "dovecot", "maxretry"]).out.strip() == str(
        f.dovecot.maxretry)
    purge = host.run(["fail2ban-client", "get", "dbpurgeage"]).out.split()[-1]
    assert purge.removesuffix("seconds") == str(f.dbpurgeage_days * 86400), purge
    ignored = host.run(["fail2ban-client", "get", "dovecot", "ignoreip"]).out
    assert "198.51.100.1/32" in ignored or "198.51.100.1" in ignored
    status = host.run(["fail2ban-client", "status"]).out
    assert "sshd" not in status            # no log of sshd in the lab: no jail that cannot start


def test_logs_rotate_and_the_daemons_and_fail2ban_follow(params, host):
    t = verify.target_from(params)
    host.run(["logrotate", "--force", "/etc/logrotate.d/mailops"])
    assert host.run(["sh", "-c", "ls /var/log/dovecot.log.1 /var/log/postfix.log.1"],
                    check=False).ok
    fail_from(imap_wrong_login, t, LATE_ATTACKER, params.fail2ban.dovecot.maxretry)
    wait_banned(host, "dovecot", LATE_ATTACKER)          # read from the new dovecot.log
    assert LATE_ATTACKER in host.read_file(f2b.DOVECOT_LOG).decode()
    smtp.deliver(t, 25, None, "bob@example.test", "bob@example.test")
    assert b"status=sent" in host.read_file(f2b.POSTFIX_LOG)   # postfix writes on after copytruncate
