"""Reliability and the outside review: TLS audited by testssl, SMTP smuggling
refused (and the probe shown to catch it), no rspamd error per message in the
lab, postfix not stalling after a dovecot restart, checks that survive -O."""
import json
import socket
import ssl
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from mailops.provision import verify
from mailops.provision.checks import smtp
from mailops.provision.session import Session

# testssl 3.0.8 speaks no ManageSieve STARTTLS: 4190 is checked by hand below
TLS_PORTS = {25: "smtp", 465: None, 587: "smtp", 993: None}


def run_testssl(address: str, hostname: str, port: int, starttls: str | None, ca: str,
                out) -> list[dict]:
    """testssl against ``hostname`` (the name the certificate is for) at ``address``:
    every check that can rate a finding above INFO (protocols, cipher categories, forward
    secrecy, server preferences, server defaults and the certificate, vulnerabilities);
    not the client simulations, which only rate INFO and take a third of the time."""
    args = ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
            "--ip", address, "--add-ca", ca, "--jsonfile", str(out), "-p", "-s", "-f", "-P",
            "-S", "-U"]
    if starttls:
        args += ["--starttls", starttls]
    subprocess.run(args + [f"{hostname}:{port}"], capture_output=True, timeout=600)
    return json.loads(out.read_text())


def pebble_issued(findings: list[dict]) -> bool:
    return any(f["id"].startswith("cert_caIssuers") and "Pebble" in f["finding"]
               for f in findings)


def lab_ca_limit(finding: dict, findings: list[dict]) -> bool:
    """The one finding that is the lab CA's, not the server's: pebble puts no CRL or OCSP
    address in what it issues (Let's Encrypt's certificates carry a CRL address)."""
    return finding["id"].startswith("cert_revocation") and pebble_issued(findings)


def test_testssl_finds_nothing_high_or_critical(params, tmp_path):
    """Debian's testssl against every TLS port, the lab CA trusted: no HIGH or
    CRITICAL finding (aNULL ciphers were CRITICAL on 25/465/587), TLS >= 1.2."""
    ca = verify.target_from(params).cafile
    address = str(params.addresses[0])
    with ThreadPoolExecutor(len(TLS_PORTS)) as pool:
        found = dict(zip(TLS_PORTS, pool.map(
            lambda item: run_testssl(address, params.hostname, item[0], item[1], ca,
                                     tmp_path / f"{item[0]}.json"),
            TLS_PORTS.items())))
    bad = {port: [(f["id"], f["finding"]) for f in findings
                  if f["severity"] in ("HIGH", "CRITICAL") and not lab_ca_limit(f, findings)]
           for port, findings in found.items()}
    assert not any(bad.values()), bad
    for port, findings in found.items():
        trust = {f["id"]: f["finding"] for f in findings if f["id"].startswith("cert_")}
        assert any(k.startswith("cert_chain_of_trust") and v.startswith("passed")
                   for k, v in trust.items()), (port, trust)
    for port, findings in found.items():
        offered = {f["id"]: f["finding"] for f in findings}
        assert "not offered" in offered.get("TLS1_1", "not offered"), (port, offered.get("TLS1_1"))
        assert "not offered" in offered.get("cipherlist_aNULL", "not offered"), port
        assert offered.get("TLS1_2") or offered.get("TLS1_3"), port


def managesieve_tls(address: str, hostname: str, ctx: ssl.SSLContext) -> str:
    with socket.create_connection((address, 4190), timeout=10) as raw:
        f = raw.makefile("rb")
        while not f.readline().startswith(b"OK"):
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"OK"), "STARTTLS refused"
        with ctx.wrap_socket(raw, server_hostname=hostname) as s:
            return s.version()


def test_managesieve_tls_is_1_2_or_newer(params):
    t = verify.target_from(params)
    assert managesieve_tls(t.address, t.hostname, t.context()) in ("TLSv1.2", "TLSv1.3")
    old = t.context()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        managesieve_tls(t.address, t.hostname, old)


def test_smtp_smuggling_probe_refused_and_able_to_fail(params):
    """Every non-standard end-of-DATA keeps one message; with postfix's default
    on Debian 12 (smtpd_forbid_bare_newline = no) the same probe catches the split."""
    t = verify.target_from(params)
    probe = lambda: [verify.check(n, lambda n=n, e=e: smtp.smuggling(t, "alice@lab.test", n, e))  # noqa: E731
                     for n, e in smtp.SMUGGLING_ENDINGS.items()]
    assert all(c.ok for c in probe()), probe
    with Session(params) as s:
        s.host.run(["postconf", "-e", "smtpd_forbid_bare_newline=no"])
        s.host.run(["postfix", "reload"])
        try:
            time.sleep(1)
            weak = probe()
        finally:
            s.host.run(["postconf", "-e", "smtpd_forbid_bare_newline=normalize"])
            s.host.run(["postfix", "reload"])
    assert sum(not c.ok for c in weak) >= 3, weak


def test_no_rspamd_error_per_message_in_the_lab(params):
    """Lookups that cannot work in the lab (RBL, SURBL, ASN, fuzzy) are not made:
    mail from outside leaves no error line in rspamd's log."""
    t = verify.target_from(params)
    with Session(params) as s:
        before = int(s.host.run(["sh", "-c", "wc -l < /var/log/rspamd/rspamd.log"]).out)
        for _ in range(3):
            smtp.deliver(t, 25, None, "alice@lab.test", "alice@lab.test")
        time.sleep(1)
        new = s.host.run(["tail", "-n", f"+{before + 1}", "/var/log/rspamd/rspamd.log"]).out
    scans = [ln for ln in new.splitlines() if "rspamd_task_write_log" in ln]
    errors = [ln for ln in new.splitlines()
              if "error looking up" in ln or "query refused" in ln or "<error>" in ln.lower()]
    assert len(scans) >= 3, new[-2000:]
    assert not errors, errors[:5]


def test_dovecot_restart_does_not_suspend_lmtp_delivery(params):
    """A dovecot restart refuses LMTP for a moment: postfix must not mark the
    destination dead for minutes ("delivery temporarily suspended"): mail sent
    while it was down arrives within a minute of its return."""
    t = verify.target_from(params)
    with Session(params) as s:
        s.host.run(["sh", "-c", "service dovecot stop </dev/null >/dev/null 2>&1"])
        tokens = []
        try:
            for _ in range(5):
                token = uuid.uuid4().hex
                with t.smtp(25) as c:
                    c.send_message(verify.message("verify@mx1.lab.test", "alice@lab.test", token),
                                   "verify@mx1.lab.test", ["alice@lab.test"])
                tokens.append(token)
            time.sleep(2)
            queued = s.host.run(["postqueue", "-j"]).out
            assert len(queued.splitlines()) >= 5, queued   # deferred while dovecot is down
        finally:
            s.host.run(["sh", "-c", "service dovecot start </dev/null >/dev/null 2>&1"])
        started = time.monotonic()
        while s.host.run(["postqueue", "-j"]).out.strip() and time.monotonic() - started < 75:
            time.sleep(2)
        took = time.monotonic() - started
        log = s.host.run(["tail", "-n", "400", "/var/log/postfix.log"]).out
    assert took < 75, f"queue not empty {took:.0f} s after dovecot came back"
    assert all(verify.find_and_delete(t, "alice@lab.test", tok, wait=10) for tok in tokens)
    assert "delivery temporarily suspended" not in log



def test_scheduled_purge_gives_deleted_mails_space_back(params):
    """mdbox keeps expunged mail in its storage files until `doveadm purge`:
    the daily job (cron here, a timer under systemd) frees it."""
    t = verify.target_from(params)
    storage = "/var/mail/vhosts/example.test/bob/mdbox/storage"
    size = lambda h: int(h.run(["du", "-sb", storage]).out.split()[0])  # noqa: E731
    with Session(params) as s:
        cron = s.host.read_file("/etc/cron.d/mailops-purge").decode()
        assert f"{params.mail.purge_at.split(':')[1].lstrip('0') or '0'} " \
               f"{params.mail.purge_at.split(':')[0].lstrip('0') or '0'} * * * root " \
               "/usr/local/sbin/mailops-purge" in cron
        s.host.run(["/usr/local/sbin/mailops-purge"])
        before = size(s.host)
        big = "x" * 1000 + "\n"
        tokens = []
        for _ in range(3):
            tok = uuid.uuid4().hex
            msg = verify.message("verify@mx1.lab.test", "bob@example.test", tok)
            msg.set_content(big * 300)                         # about 300 KB each
            with t.smtp(25) as c:
                c.send_message(msg, "verify@mx1.lab.test", ["bob@example.test"])
            tokens.append(tok)
        time.sleep(1)
        assert all(verify.find_and_delete(t, "bob@example.test", tok) for tok in tokens)
        after_delete = size(s.host)
        assert after_delete >= before + 600_000, (before, after_delete)   # expunged, not freed
        s.host.run(["/usr/local/sbin/mailops-purge"])
        after_purge = size(s.host)
        log = s.host.run(["tail", "-n", "2", "/var/log/mailops/purge.log"]).out
    assert after_purge <= before + 100_000, (before, after_delete, after_purge)
    assert "purge end, exit 0" in log


def test_sshd_key_only_and_unattended_upgrades(params):
    """Password logins refused by our own file (not only the lab's), checked by
    sshd -t before the reload; unattended upgrades on; verify shows both."""
    import paramiko
    with Session(params) as s:
        h = s.host
        ours = h.run(["sh", "-c", "printf 'Include /etc/ssh/sshd_config.d/05-mailops.conf\\n' "
                      ">/run/t.conf && sshd -T -f /run/t.conf | grep -E "
                      "'^(passwordauthentication|kbdinteractiveauthentication) '; "
                      ": >/run/t.conf && sshd -T -f /run/t.conf | grep '^passwordauthentication '; "
                      "rm -f /run/t.conf"]).out.split("\n")
        assert ours[:3] == ["passwordauthentication no", "kbdinteractiveauthentication no",
                            "passwordauthentication yes"], ours    # without it: yes
        auto = h.run(["apt-config", "dump", "APT::Periodic::Unattended-Upgrade"]).out
        assert '"1"' in auto and h.run(["dpkg-query", "-W", "unattended-upgrades"]).ok
        checks = {n: verify.check(n, f) for n, f in verify.server_checks(params, s)[:2]}
    assert all(c.ok for c in checks.values()), checks
    assert "key-only" in checks["ssh password logins"].evidence
    client = paramiko.SSHClient()
    client.load_host_keys(str(params.path(params.ssh.known_hosts)))
    try:
        client.connect(str(params.addresses[0]), username="root", password="wrong-password",
                       look_for_keys=False, allow_agent=False, timeout=10)
        raise AssertionError("a password login was accepted")
    except paramiko.AuthenticationException as exc:
        assert "password" not in str(getattr(exc, "allowed_types", ["publickey"])), exc
    finally:
        client.close()
