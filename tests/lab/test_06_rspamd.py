"""rspamd on the lab host: GTUBE refused at SMTP time (add_header and X-Spam: test_07),
DKIM signatures verified independently, the controller behind a hashed
password on loopback, and postfix's documented behaviour while rspamd is down."""
import urllib.error
import urllib.request
import uuid

import dkim
import pytest

from mailops.provision import verify
from mailops.provision.checks.clients import take
from mailops.provision.dnsrecords import DnsRecord, dkim_records
from mailops.core.resources.rspamd import PASSWORD_FILE, dkim_record
from mailops.core.secrets import resolve
from mailops.provision.session import Session

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def send(t, port, login, rcpt, subject, body="A short note about the lab.\n"):
    token = uuid.uuid4().hex
    msg = verify.message(login or f"verify@{t.hostname}", rcpt, token)
    msg.replace_header("Subject", subject)
    msg.set_content(body)
    with t.smtp(port) as s:
        if login:
            s.login(login, t.passwords[login].reveal())
        s.send_message(msg, login or f"verify@{t.hostname}", [rcpt])
    return token


def test_gtube_is_refused_at_smtp_time(params):
    t = verify.target_from(params)
    with pytest.raises(Exception) as exc:
        send(t, 25, None, "bob@example.test", "hello", body=f"{GTUBE}\n")
    assert getattr(exc.value, "smtp_code", None) == 554, exc.value


def test_submitted_mail_is_dkim_signed_and_verifies(params):
    """A user's mail is signed whoever it is for (here a local user, read back over
    IMAP); the signature verifies with the published key and breaks when the body
    changes.  Mail to another server: test_19."""
    t = verify.target_from(params)
    token = send(t, 587, "alice@lab.test", "bob@example.test", "signed")
    with Session(params) as s:
        record = dkim_record(s.host, "lab.test", params.rspamd.dkim_selector)
        shown = dkim_records(s).records        # what the 60-rspamd notebook shows
        assert DnsRecord(f"{params.rspamd.dkim_selector}._domainkey.lab.test", "TXT",
                         record) in shown and len(shown) == 2
        assert record.startswith("v=DKIM1; k=rsa; p=MII")
    message = take(t, "bob@example.test", token)
    assert message is not None and b"DKIM-Signature:" in message
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def dnsfunc(name, timeout=5):
        assert name == f"{params.rspamd.dkim_selector}._domainkey.lab.test.".encode()
        return record.encode()

    assert dkim.verify(message, dnsfunc=dnsfunc)
    tampered = message.replace(b"A short note", b"A changed note")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)


def test_controller_is_loopback_only_with_a_hashed_password(params):
    secret = resolve(params.rspamd.controller_password, params.base_dir).reveal()
    with Session(params) as s:
        stored = s.host.read_file(PASSWORD_FILE).decode()
        assert stored.startswith('password = "$2$') and secret not in stored
        assert s.host.run(["stat", "-c", "%a %G", PASSWORD_FILE]).out == "640 _rspamd\n"
        with s.host.forward(11334) as port:
            ok = urllib.request.Request(f"http://127.0.0.1:{port}/stat",
                                        headers={"Password": secret})
            assert urllib.request.urlopen(ok, timeout=10).status == 200
            bad = urllib.request.Request(f"http://127.0.0.1:{port}/stat",
                                         headers={"Password": "not-it"})
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(bad, timeout=10)
            assert exc.value.code == 401
    import socket
    with pytest.raises(OSError):        # not reachable from outside
        socket.create_connection((str(params.lab.address), 11334), timeout=3)


def test_rspamd_down_means_tempfail_and_the_retry_arrives(params):
    """milter_default_action = tempfail: while rspamd is down senders get 451
    and keep the message; nothing passes unscanned; the retry is delivered."""
    t = verify.target_from(params)
    token = uuid.uuid4().hex
    msg = verify.message(f"verify@{t.hostname}", "bob@example.test", token)
    with Session(params) as s:
        s.host.run(["sh", "-c", "service rspamd stop </dev/null >/dev/null 2>&1"])
        try:
            # postfix answers from the first command on with 4xx (451 to EHLO, so
            # STARTTLS is refused too): the sender keeps the message and retries
            with pytest.raises(Exception) as exc:
                with t.smtp(25) as smtp:
                    smtp.send_message(msg, f"verify@{t.hostname}", ["bob@example.test"])
            assert 400 <= getattr(exc.value, "smtp_code", 0) < 500, exc.value
        finally:
            s.host.run(["sh", "-c", "service rspamd start </dev/null >/dev/null 2>&1"])
            s.host.run(["sh", "-c", "for i in $(seq 1 120); do [ -n \"$(ss -ltnH 'sport = :11332')\" ] "
                                    "&& exit 0; sleep 0.5; done; exit 1"], timeout=90)
    with t.smtp(25) as smtp:            # the sender's retry
        assert not smtp.send_message(msg, f"verify@{t.hostname}", ["bob@example.test"])
    assert verify.find_and_delete(t, "bob@example.test", token)
