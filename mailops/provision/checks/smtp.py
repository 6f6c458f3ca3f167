"""What SMTP clients meet: delivery, submission, refusals, and SMTP smuggling."""
from __future__ import annotations

import base64
import imaplib
import smtplib
import socket
import uuid

from .clients import Target, find_and_delete, message
from .result import CheckFailed, require

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# end-of-DATA sequences that are not <CR><LF>.<CR><LF> (CVE-2023-51764 and family)
SMUGGLING_ENDINGS = {"<LF>.<CR><LF>": b"\n.\r\n", "<LF>.<LF>": b"\n.\n",
                     "<CR><LF>.<LF>": b"\r\n.\n", "<CR>.<CR><LF>": b"\r.\r\n"}


def deliver(t: Target, port: int, login: str | None, rcpt: str, mailbox: str,
            tls: str = "starttls", not_in: str | None = None, also: tuple[str, ...] = ()) -> str:
    """Send a marked message to ``rcpt`` and take it from ``mailbox`` (and from each of
    ``also``, the other mailboxes it must reach), so a check leaves no mail behind."""
    token = uuid.uuid4().hex
    sender = login or f"verify@{t.hostname}"
    with t.smtp(port, tls) as s:
        if login:
            s.login(login, t.passwords[login].reveal())
        refused = s.send_message(message(sender, rcpt, token), sender, [rcpt])
        require(not refused, f"refused: {refused}")
    require(find_and_delete(t, mailbox, token), f"message to {rcpt} did not reach {mailbox}")
    missed = [o for o in also if not find_and_delete(t, o, token)]
    require(not missed, f"message to {rcpt} did not reach {', '.join(missed)}")
    if also:
        return f"{rcpt} -> {', '.join((mailbox, *also))} via port {port}"
    if not_in:
        require(not find_and_delete(t, not_in, token, wait=0),
                f"message to {rcpt} also reached {not_in}")
        return f"reached {mailbox}, not {not_in}"
    return f"{rcpt} -> {mailbox} via port {port}"


def closed(t: Target, port: int) -> str:
    try:
        socket.create_connection((t.address, port), 5).close()
    except (ConnectionRefusedError, socket.timeout, TimeoutError) as exc:
        return f"port {port}: {type(exc).__name__}"
    raise CheckFailed(f"port {port} accepted a connection")


def auth_before_tls(t: Target) -> str:
    with t.smtp(587, tls="none") as s:
        s.ehlo()
        require(not s.has_extn("auth"),
                f"AUTH offered before STARTTLS: {s.esmtp_features.get('auth')}")
        code, msg = s.docmd("AUTH", "PLAIN AG5vYm9keQBub3RoaW5n")   # \0nobody\0nothing
        require(code >= 500, f"AUTH before TLS answered {code} {msg!r}")
        return f"not offered; AUTH answered {code} {msg.decode()[:60]}"


def relay_refused(t: Target) -> str:
    with t.smtp(25) as s:
        s.ehlo()
        s.mail(f"verify@{t.hostname}")
        code, msg = s.rcpt("someone@example.com")
        require(code >= 500, f"relay to example.com answered {code} {msg!r}")
        return f"{code} {msg.decode()[:80]}"


def wrong_imap(t: Target, user: str) -> str:
    m = t.imap_connect()
    try:
        m.login(user, "wrong-" + uuid.uuid4().hex)
    except imaplib.IMAP4.error as exc:
        return f"refused: {exc}"
    finally:
        m.shutdown()
    raise CheckFailed("a wrong password logged in")


def wrong_smtp(t: Target, user: str) -> str:
    with t.smtp(587) as s:
        s.ehlo()
        code, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(
            f"\0{user}\0wrong-{uuid.uuid4().hex}".encode()).decode())
        require(code == 535, f"wrong password answered {code} {msg!r}")
        return f"{code} {msg.decode()[:60]}"


def sender_mismatch(t: Target, user: str, other: str) -> str:
    with t.smtp(587) as s:
        s.login(user, t.passwords[user].reveal())
        s.mail(other)
        code, msg = s.rcpt(user)
        require(code >= 500, f"sending as {other} answered {code} {msg!r}")
        return f"{code} {msg.decode()[:80]}"


def gtube_refused(t: Target, rcpt: str) -> str:
    msg = message(f"verify@{t.hostname}", rcpt, uuid.uuid4().hex)
    msg.set_content(GTUBE + "\n")
    with t.smtp(25) as s:
        try:
            s.send_message(msg, f"verify@{t.hostname}", [rcpt])
        except smtplib.SMTPDataError as exc:
            require(exc.smtp_code == 554, f"GTUBE answered {exc.smtp_code} {exc.smtp_error!r}")
            return f"{exc.smtp_code} {exc.smtp_error.decode()[:60]}"
    raise CheckFailed("GTUBE was accepted")


def smuggling_payload(t: Target, rcpt: str, ending: bytes, tokens: tuple[str, str]) -> bytes:
    """DATA content that ends the message with ``ending``, then smuggles a
    second transaction, then ends properly: a server that honours ``ending``
    as end-of-DATA queues two messages, one that does not queues one."""
    sender = f"verify@{t.hostname}"

    def msg(token: str) -> bytes:
        m = message(sender, rcpt, token).as_bytes().replace(b"\r\n", b"\n")
        return m.replace(b"\n", b"\r\n").rstrip(b"\r\n")
    smuggled = (f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
                + msg(tokens[1]))
    return msg(tokens[0]) + ending + smuggled + b"\r\n.\r\n"


def smuggling(t: Target, rcpt: str, name: str, ending: bytes) -> str:
    """One end-of-DATA variant: the server must queue exactly one message."""
    tokens = (uuid.uuid4().hex, uuid.uuid4().hex)
    s = t.smtp(25)
    try:
        s.ehlo()
        s.mail(f"verify@{t.hostname}")
        code, msg = s.rcpt(rcpt)
        require(code == 250, f"RCPT {rcpt} answered {code} {msg!r}")
        code, msg = s.docmd("DATA")
        require(code == 354, f"DATA answered {code} {msg!r}")
        s.send(smuggling_payload(t, rcpt, ending, tokens))
        replies = [s.getreply()]
        # a server that split the message answers MAIL, RCPT, DATA and a second end
        s.sock.settimeout(1.5)
        try:
            while len(replies) < 5:
                replies.append(s.getreply())
        except (OSError, smtplib.SMTPServerDisconnected):
            pass
    finally:
        s.close()          # no QUIT: a timed-out reader cannot read its reply
    queued = [r for r in replies if r[0] == 250]
    find_and_delete(t, rcpt, tokens[0], wait=10)
    require(not find_and_delete(t, rcpt, tokens[1], wait=1),
            f"{name}: the smuggled message was delivered on its own")
    require(len(queued) <= 1, f"{name}: the server answered 250 {len(queued)} times "
                              f"({[r[0] for r in replies]}): the message was split")
    return f"{name}: one message ({replies[0][0]} {replies[0][1].decode()[:40]})"
