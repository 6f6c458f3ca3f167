"""90-verify: the mail server checked from outside, the way clients and other
servers meet it.  Each check returns ok or failed with its evidence.

Test messages carry an ``X-Mailops-Verify`` token; each is looked for over IMAPS
in the mailbox it must reach (and, for the catch-all, must not reach) and
deleted afterwards, so user data is left as it was.
"""
from __future__ import annotations

import base64
import dataclasses
import imaplib
import smtplib
import socket
import ssl
import time
import uuid
import email.utils
from email.message import EmailMessage
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .plan import StepFailed
from .secrets import Secret, resolve
from .tables import html_table, status

RSA_CIPHERS = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"
EC_CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    evidence: str


@dataclasses.dataclass(frozen=True)
class CheckReport:
    target: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def raise_for_status(self) -> None:
        if not self.ok:
            raise StepFailed("verify failed: " + "; ".join(
                f"{c.name}: {c.evidence}" for c in self.failed))

    def record(self) -> dict:
        return {"step": "90-verify", "host": self.target,
                "status": "verified" if self.ok else "failed", "changes": 0,
                "targets": [], "checks": [dataclasses.asdict(c) for c in self.checks],
                "error": None if self.ok else f"{len(self.failed)} check(s) failed: "
                + ", ".join(c.name for c in self.failed), "rolled_back": []}

    def __str__(self) -> str:
        return "\n".join([f"verify {self.target}: {'ok' if self.ok else 'FAILED'}"] + [
            f"  {'ok    ' if c.ok else 'FAILED'} {c.name}: {c.evidence}" for c in self.checks])

    def _repr_html_(self) -> str:
        rows = [{"result": status(c.ok), "check": c.name, "evidence": c.evidence}
                for c in self.checks]
        return html_table(rows, title=f"verify {self.target}",
                          note=f": {len(self.checks) - len(self.failed)} of "
                               f"{len(self.checks)} checks ok")


class _SMTPS(smtplib.SMTP_SSL):
    """Implicit TLS to an address, the certificate checked against a name."""

    def __init__(self, address, port, server_hostname, **kw):
        self._server_hostname = server_hostname
        super().__init__(address, port, **kw)

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=self._server_hostname)


class _IMAPS(imaplib.IMAP4_SSL):
    def __init__(self, address, port, server_hostname, **kw):
        self._server_hostname = server_hostname
        super().__init__(address, port, **kw)

    def _create_socket(self, timeout):
        sock = imaplib.IMAP4._create_socket(self, timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self._server_hostname)


@dataclasses.dataclass(frozen=True)
class Target:
    address: str
    hostname: str
    cafile: str | None
    passwords: dict[str, Secret] = dataclasses.field(repr=False)
    helo: str = "verify.mailops"      # the name this client gives in EHLO

    def context(self, ciphers: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cafile)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if ciphers:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(ciphers)
        return ctx

    def smtp(self, port: int, tls: str = "starttls") -> smtplib.SMTP:
        if tls == "implicit":
            return _SMTPS(self.address, port, self.hostname, timeout=15,
                          local_hostname=self.helo, context=self.context())
        s = smtplib.SMTP(self.address, port, timeout=15, local_hostname=self.helo)
        s._host = self.hostname          # the name the certificate is checked against
        if tls == "starttls":
            s.starttls(context=self.context())
        return s

    def imap(self, user: str) -> imaplib.IMAP4_SSL:
        m = self.imap_connect()
        m.login(user, self.passwords[user].reveal())
        return m

    def imap_connect(self) -> imaplib.IMAP4_SSL:
        return _IMAPS(self.address, 993, self.hostname, ssl_context=self.context(), timeout=15)


def target_from(params) -> Target:
    cafile = str(params.path(params.tls.ca_dir) / "ca.crt") if params.tls.source == "self-signed" \
        else None
    from .labmode import gateway_name
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


def find_and_delete(t: Target, user: str, token: str, wait: float = 15) -> bool:
    """Whether the message with ``token`` reached ``user``'s INBOX (then deleted)."""
    deadline = time.monotonic() + wait
    with t.imap(user) as m:
        while True:
            m.select("INBOX")
            _, data = m.uid("SEARCH", None, "HEADER", "X-Mailops-Verify", token)
            uids = data[0].split()
            if uids:
                m.uid("STORE", b",".join(uids), "+FLAGS.SILENT", r"(\Deleted)")
                m.expunge()
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.3)


def _peer_key(sock) -> str:
    cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
    key = cert.public_key()
    kind = "RSA" if isinstance(key, rsa.RSAPublicKey) else (
        "EC" if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__)
    return f"{kind}, {cert.subject.rfc4514_string()}, {sock.version()}"


def run_parallel(named: list[tuple[str, Callable[[], str]]], workers: int = 8) -> list[Check]:
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda nf: check(*nf), named))


def check(name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, True, fn())
    except AssertionError as exc:
        return Check(name, False, str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure is evidence
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def run_checks(params) -> CheckReport:
    t = target_from(params)
    m = params.mail
    mailboxes = [mb.address for mb in m.mailboxes]
    if not mailboxes:
        return CheckReport(t.address, (Check("mailboxes", False, "no mailboxes in the parameters"
                                                                 ": nothing to verify with"),))
    user = mailboxes[0]
    todo: list[tuple[str, Callable[[], str]]] = []
    add = lambda name, fn: todo.append((name, fn))  # noqa: E731

    for port, mode in ((25, "starttls"), (465, "implicit"), (587, "starttls"), (993, "imaps")):
        for kind, ciphers in (("RSA", RSA_CIPHERS), ("EC", EC_CIPHERS)):
            add(f"tls {port} {kind}", lambda p=port, mo=mode, k=kind, c=ciphers: _tls(t, p, mo, k, c))

    for domain in params.mail_domains:
        rcpt = next((a for a in mailboxes if a.endswith("@" + domain)), None)
        if rcpt:
            add(f"inbound smtp 25 to {domain}", lambda r=rcpt: _deliver(t, 25, None, r, r))
    add("submission 587 as user", lambda: _deliver(t, 587, user, user, user))
    add("submission 465 as user", lambda: _deliver(t, 465, user, user, user, tls="implicit"))
    for alias in m.aliases:
        owner = next((d for d in alias.destinations if d in mailboxes), None)
        if owner:
            add(f"alias {alias.source}", lambda a=alias.source, o=owner: _deliver(t, 25, None, a, o))
    for domain, dest in m.catch_all.items():
        if dest in mailboxes:
            add(f"catch-all {domain}",
                lambda d=domain, o=dest: _deliver(t, 25, None, f"nobody-{uuid.uuid4().hex[:8]}@{d}", o))
        real = next((a for a in mailboxes if a.endswith("@" + domain) and a != dest), None)
        if real and dest in mailboxes:
            add(f"catch-all does not hide {real}",
                lambda r=real, o=dest: _deliver(t, 25, None, r, r, not_in=o))
    add("plaintext imap 143 refused", lambda: _closed(t, 143))
    add("auth before tls refused (587)", lambda: _auth_before_tls(t))
    add("relay without auth refused", lambda: _relay_refused(t))
    other = next((a for a in mailboxes if a != user), None) or f"someone-else@{params.mail_domains[0]}"
    add("sending as someone else refused", lambda: _sender_mismatch(t, user, other))
    if params.rspamd.enabled and mailboxes:
        add("spam (GTUBE) refused at SMTP time", lambda: _gtube_refused(t, mailboxes[0]))
    from .session import Session
    session = Session(params)
    try:
        session.info        # connect once, before the checks share the connection in threads
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        failed = Check("server checks over SSH", False, f"{type(exc).__name__}: {exc}")
        return CheckReport(t.address, tuple(run_parallel(todo)) + (failed,))
    if params.fail2ban.enabled:
        add("fail2ban", lambda: _fail2ban(session, params))
    if params.backup.enabled:
        add("last backup", lambda: _last_backup(session, params))
    if params.rspamd.enabled:
        for domain in params.mail_domains:
            add(f"dkim signs {domain}", lambda d=domain: _dkim_signs(session.host, params, d))
        if params.sieve.learn:
            add("spam/ham learning", lambda: _learning(session.host))
    try:
        checks = run_parallel(todo)
    finally:
        session.close()
    # wrong passwords last: dovecot then slows every login from this address
    checks += run_parallel([("wrong password refused (imap)", lambda: _wrong_imap(t, user)),
                            ("wrong password refused (587)", lambda: _wrong_smtp(t, user))])
    return CheckReport(t.address, tuple(checks))


def _tls(t: Target, port: int, mode: str, kind: str, ciphers: str) -> str:
    ctx = t.context(ciphers)
    if mode in ("implicit", "imaps"):
        with socket.create_connection((t.address, port), 15) as raw, \
                ctx.wrap_socket(raw, server_hostname=t.hostname) as s:
            got = _peer_key(s)
    else:
        s = smtplib.SMTP(t.address, port, timeout=15, local_hostname=t.helo)
        s._host = t.hostname
        try:
            s.starttls(context=ctx)
            got = _peer_key(s.sock)
        finally:
            s.close()
    assert got.startswith(kind + ","), f"asked for {kind}, got {got}"
    return got


def _deliver(t: Target, port: int, login: str | None, rcpt: str, mailbox: str,
             tls: str = "starttls", not_in: str | None = None) -> str:
    token = uuid.uuid4().hex
    sender = login or f"verify@{t.hostname}"
    with t.smtp(port, tls) as s:
        if login:
            s.login(login, t.passwords[login].reveal())
        refused = s.send_message(message(sender, rcpt, token), sender, [rcpt])
        assert not refused, f"refused: {refused}"
    assert find_and_delete(t, mailbox, token), f"message to {rcpt} did not reach {mailbox}"
    if not_in:
        assert not find_and_delete(t, not_in, token, wait=0), f"message to {rcpt} also reached {not_in}"
        return f"reached {mailbox}, not {not_in}"
    return f"{rcpt} -> {mailbox} via port {port}"


def _closed(t: Target, port: int) -> str:
    try:
        socket.create_connection((t.address, port), 5).close()
    except (ConnectionRefusedError, socket.timeout, TimeoutError) as exc:
        return f"port {port}: {type(exc).__name__}"
    raise AssertionError(f"port {port} accepted a connection")


def _auth_before_tls(t: Target) -> str:
    with t.smtp(587, tls="none") as s:
        s.ehlo()
        assert not s.has_extn("auth"), f"AUTH offered before STARTTLS: {s.esmtp_features.get('auth')}"
        code, msg = s.docmd("AUTH", "PLAIN AG5vYm9keQBub3RoaW5n")   # \0nobody\0nothing
        assert code >= 500, f"AUTH before TLS answered {code} {msg!r}"
        return f"not offered; AUTH answered {code} {msg.decode()[:60]}"


def _relay_refused(t: Target) -> str:
    with t.smtp(25) as s:
        s.ehlo()
        s.mail(f"verify@{t.hostname}")
        code, msg = s.rcpt("someone@example.com")
        assert code >= 500, f"relay to example.com answered {code} {msg!r}"
        return f"{code} {msg.decode()[:80]}"


def _wrong_imap(t: Target, user: str) -> str:
    m = t.imap_connect()
    try:
        m.login(user, "wrong-" + uuid.uuid4().hex)
    except imaplib.IMAP4.error as exc:
        return f"refused: {exc}"
    finally:
        m.shutdown()
    raise AssertionError("a wrong password logged in")


def _wrong_smtp(t: Target, user: str) -> str:
    with t.smtp(587) as s:
        s.ehlo()
        code, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(
            f"\0{user}\0wrong-{uuid.uuid4().hex}".encode()).decode())
        assert code == 535, f"wrong password answered {code} {msg!r}"
        return f"{code} {msg.decode()[:60]}"


def _sender_mismatch(t: Target, user: str, other: str) -> str:
    with t.smtp(587) as s:
        s.login(user, t.passwords[user].reveal())
        s.mail(other)
        code, msg = s.rcpt(user)
        assert code >= 500, f"sending as {other} answered {code} {msg!r}"
        return f"{code} {msg.decode()[:80]}"


GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def _gtube_refused(t: Target, rcpt: str) -> str:
    msg = message(f"verify@{t.hostname}", rcpt, uuid.uuid4().hex)
    msg.set_content(GTUBE + "\n")
    with t.smtp(25) as s:
        try:
            s.send_message(msg, f"verify@{t.hostname}", [rcpt])
        except smtplib.SMTPDataError as exc:
            assert exc.smtp_code == 554, f"GTUBE answered {exc.smtp_code} {exc.smtp_error!r}"
            return f"{exc.smtp_code} {exc.smtp_error.decode()[:60]}"
    raise AssertionError("GTUBE was accepted")


def _dkim_signs(host, params, domain: str) -> str:
    """rspamd on the server signs a message from ``domain`` as it signs an
    authenticated user's (nothing is sent); the signature is verified with
    dkimpy against the server's key, and outside the lab against DNS too."""
    import dkim
    from .resources.rspamd import dkim_record
    selector = params.rspamd.dkim_selector
    sender = f"postmaster@{domain}"
    msg = (f"From: {sender}\nTo: verify@example.invalid\nSubject: mailops DKIM check\n"
           f"Date: {email.utils.formatdate()}\nMessage-ID: {email.utils.make_msgid(domain=domain)}\n"
           "\nA DKIM check of mailops' verify step; this message is never sent.\n")
    out = host.run(["rspamc", "-h", "127.0.0.1:11333", "--mime", "--user", sender, "--from", sender,
                    "--rcpt", "verify@example.invalid"], stdin=msg.encode(), timeout=30).stdout
    assert b"DKIM-Signature:" in out, "rspamd added no DKIM-Signature"
    record = dkim_record(host, domain, selector)
    name = f"{selector}._domainkey.{domain}"
    signed = out.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    ok = dkim.verify(signed, dnsfunc=lambda qname, timeout=5: record.encode())
    assert ok, f"the signature does not verify against the key in {name}"
    if params.lab is not None:
        return f"d={domain} s={selector}: verifies against the server's key (lab: not in DNS)"
    published = _txt(name)
    assert published == record, (f"{name} TXT in DNS is {published[:40] + '...' if published else 'missing'}"
                                 f"; publish: {record[:40]}...")
    return f"d={domain} s={selector}: verifies; DNS publishes the server's key"


def _txt(name: str) -> str | None:
    import dns.resolver
    try:
        answer = dns.resolver.resolve(name, "TXT", lifetime=10)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    return "".join(b.decode() for b in answer[0].strings)


def _learning(host) -> str:
    from . import learning
    stat = learning.check_credentials(host)          # as the mail user, as dovecot runs it
    counts = learning.counters(host)
    events = learning.events(host)
    failed = [e for e in events if e.outcome == "failed"]
    assert not events or events[-1].outcome != "failed", (
        f"the last learn failed ({events[-1].time}, {events[-1].kind}, status {events[-1].status}: "
        f"{events[-1].detail}); {len(failed)} of the last {len(events)} failed")
    return (f"learned spam {counts['spam']}, ham {counts['ham']} (rspamd: {stat.get('learned')} "
            f"learned in all); last {len(events)} learn calls: {len(failed)} failed")


def _fail2ban(session, params) -> str:
    from .steps import fail2ban as f2b
    host = session.host
    want = f2b.jails(params, session.info)
    status = host.run(["fail2ban-client", "status"]).out
    running = [j.strip() for j in status.split("Jail list:", 1)[1].split(",")] \
        if "Jail list:" in status else []
    missing = [j for j in want if j not in running]
    assert not missing, f"jails not running: {', '.join(missing)} (running: {', '.join(running)})"
    counts = host.run(["sqlite3", f2b.DB_FILE, "SELECT count(*), count(DISTINCT ip), "
                       "coalesce(min(timeofban), 0) FROM bans; SELECT count(*) FROM bans "
                       "WHERE timeofban + bantime > strftime('%s','now') OR bantime < 0"]).out.split()
    total, ips, first = counts[0].split("|")
    since = time.strftime("%Y-%m-%d", time.gmtime(int(first))) if int(first) else "-"
    return (f"jails running: {', '.join(want)}; banned now: {counts[1]}; "
            f"history: {total} bans of {ips} addresses since {since}")


def _last_backup(session, params) -> str:
    from . import backup
    run = backup.last_run(session)
    assert run is not None, "no backup has run yet"
    assert run["exit"] == 0, (f"the last backup failed (exit {run['exit']}, "
                              f"{run['age_hours']} h ago); see {backup.PATHS.log}")
    assert run["age_hours"] <= params.backup.max_age_hours, (
        f"the last backup is {run['age_hours']} h old (limit {params.backup.max_age_hours} h)")
    archives = backup.archives(session)
    assert archives, "the repository holds no archive"
    last = archives[-1]
    return (f"{last['name']} ({run['age_hours']} h ago, {run['end'] - run['start']} s); "
            f"{len(archives)} archive(s) in the repository")
