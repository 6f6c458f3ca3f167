"""How a client reaches the server: SMTP (STARTTLS or implicit TLS) and IMAPS,
the certificate always checked against the mail host's name, whatever address
was dialled; test messages carry a token and are found and deleted again."""
from __future__ import annotations

import dataclasses
import email.utils
import imaplib
import smtplib
import socket
import ssl
import time
from email.message import EmailMessage

from mailops.core.secrets import Secret, resolve


class SMTP(smtplib.SMTP):
    """SMTP whose STARTTLS checks the certificate against ``server_hostname``
    (smtplib's own checks it against the address it connected to)."""

    def __init__(self, address: str, port: int, server_hostname: str, **kw):
        self.server_hostname = server_hostname
        super().__init__(address, port, **kw)

    def starttls(self, *, context: ssl.SSLContext):      # noqa: D102 - as smtplib's
        self.ehlo_or_helo_if_needed()
        if not self.has_extn("starttls"):
            raise smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server.")
        code, reply = self.docmd("STARTTLS")
        if code != 220:
            raise smtplib.SMTPResponseException(code, reply)
        self.sock = context.wrap_socket(self.sock, server_hostname=self.server_hostname)
        # as smtplib does after STARTTLS: forget what the server said before TLS
        self.file = None
        self.helo_resp = self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False
        return code, reply


class SMTPS(smtplib.SMTP_SSL):
    """Implicit TLS to an address, the certificate checked against a name."""

    def __init__(self, address, port, server_hostname, **kw):
        self.server_hostname = server_hostname
        super().__init__(address, port, **kw)

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=self.server_hostname)


class IMAPS(imaplib.IMAP4_SSL):
    def __init__(self, address, port, server_hostname, **kw):
        self.server_hostname = server_hostname
        super().__init__(address, port, **kw)

    def _create_socket(self, timeout):
        sock = imaplib.IMAP4._create_socket(self, timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.server_hostname)


@dataclasses.dataclass(frozen=True)
class Target:
    address: str
    hostname: str
    cafile: str | None
    passwords: dict[str, Secret] = dataclasses.field(repr=False)
    helo: str = "verify.mailops"      # the name this client gives in EHLO
    imap_port: int = 993

    def context(self, ciphers: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cafile)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if ciphers:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(ciphers)
        return ctx

    def smtp(self, port: int, tls: str = "starttls", context: ssl.SSLContext | None = None
             ) -> smtplib.SMTP:
        """A client on ``port``: ``tls`` is starttls, implicit or none."""
        context = context or self.context()
        if tls == "implicit":
            return SMTPS(self.address, port, self.hostname, timeout=15,
                         local_hostname=self.helo, context=context)
        s = SMTP(self.address, port, self.hostname, timeout=15, local_hostname=self.helo)
        if tls == "starttls":
            s.starttls(context=context)
        return s

    def imap(self, user: str) -> imaplib.IMAP4_SSL:
        m = self.imap_connect()
        m.login(user, self.passwords[user].reveal())
        return m

    def imap_connect(self) -> imaplib.IMAP4_SSL:
        return IMAPS(self.address, self.imap_port, self.hostname, ssl_context=self.context(),
                     timeout=15)


def target_from(params) -> Target:
    tls = params.tls
    if tls.source == "self-signed":
        cafile = str(params.path(tls.ca_dir) / "ca.crt")
    elif tls.source == "acme" and tls.acme.ca_file is not None:
        cafile = str(params.path(tls.acme.ca_file))       # a private ACME CA (the lab's pebble)
    else:
        cafile = None                                      # the system's CAs
    from mailops.lab.mode import gateway_name
    helo = gateway_name(params) if params.lab is not None else socket.getfqdn()
    return Target(str(params.addresses[0]), params.hostname, cafile,
                  {mb.address: resolve(mb.password, params.base_dir) for mb in params.mail.mailboxes},
                  helo)


def message(sender: str, to: str, token: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, f"mailops verify {token[:8]}"
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.split("@")[1])
    msg["X-Mailops-Verify"] = token
    msg.set_content("A test message from mailops' verify step; it deletes it again.\n")
    return msg


def imap_login(t: Target, user: str) -> str:
    """Log in and open INBOX (a new mailbox's indexes are made here, once)."""
    with t.imap(user) as m:
        typ, data = m.select("INBOX")
        if typ != "OK":
            raise imaplib.IMAP4.error(f"SELECT INBOX: {typ} {data}")
        return f"INBOX holds {int(data[0])} message(s)"


def find_and_delete(t: Target, user: str, token: str, wait: float = 15) -> bool:
    """Whether the message with ``token`` reached ``user``'s INBOX (then deleted)."""
    return take(t, user, token, wait) is not None


def take(t: Target, user: str, token: str, wait: float = 15,
         folder: str = "INBOX") -> bytes | None:
    """The message with ``token`` in ``user``'s ``folder`` as it was stored (then
    deleted), or None when it did not come within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    with t.imap(user) as m:
        while True:
            typ, why = m.select(folder)
            if typ != "OK":
                raise imaplib.IMAP4.error(f"SELECT {folder} of {user}: {typ} {why}")
            _, data = m.uid("SEARCH", None, "HEADER", "X-Mailops-Verify", token)
            uids = data[0].split()
            if uids:
                _, got = m.uid("FETCH", uids[-1], "(BODY.PEEK[])")
                raw = next(part[1] for part in got if isinstance(part, tuple))
                m.uid("STORE", b",".join(uids), "+FLAGS.SILENT", r"(\Deleted)")
                m.expunge()
                return raw
            if time.monotonic() > deadline:
                return None
            time.sleep(0.3)
