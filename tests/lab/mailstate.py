"""What a mail server holds, read for comparison before and after an event that must
keep it (a rebuild, an upgrade), and senders that keep sending through it as MTAs
and submission clients do: each message retried on a 4xx or a refused connection until
the server accepts it, every accepted Message-ID counted."""
from __future__ import annotations

import email.utils
import hashlib
import re
import smtplib
import ssl
import threading
import time
from email.message import EmailMessage

from mailops.core.resources.maildb import DB_PATH
from mailops.core.resources.rspamd import DKIM_DIR
from mailops.provision import learning
from mailops.provision.session import Session

SENDERS = 3                    # retrying clients on port 25
RETRY_S = 2.0


def mailbox_state(host, user: str) -> dict:
    """{folder: (uidvalidity, {uid: (flags, sha256 of the full text)})}."""
    out = host.run(["doveadm", "-f", "tab", "mailbox", "status", "-u", user, "uidvalidity",
                    "*"]).out.splitlines()[1:]
    state = {}
    for line in out:
        folder, _, uidvalidity = line.rpartition("\t")
        fetched = host.run(["doveadm", "-f", "pager", "fetch", "-u", user, "uid flags text",
                            "mailbox", folder], timeout=300).stdout
        msgs = {}
        for record in fetched.split(b"\x0c\n"):
            head, sep, text = record.partition(b"\ntext:\n")
            if not sep:
                continue
            fields = dict(l.split(": ", 1) for l in head.decode().splitlines() if ": " in l)
            msgs[int(fields["uid"])] = (fields.get("flags", ""), hashlib.sha256(text).hexdigest())
        state[folder] = (uidvalidity, msgs)
    return state


def server_state(p) -> dict:
    with Session(p) as s:
        h = s.host
        users = [mb.address for mb in p.mail.mailboxes]
        return {
            "mail": {u: mailbox_state(h, u) for u in users},
            "users_db": h.run(["sqlite3", DB_PATH, "SELECT * FROM domains ORDER BY 1; "
                               "SELECT * FROM mailboxes ORDER BY 1; SELECT * FROM aliases ORDER BY 1, 2; "
                               "SELECT * FROM catchall ORDER BY 1"]
                              ).out,
            "sieve": {u: h.run(["doveadm", "sieve", "list", "-u", u]).out for u in users},
            "dkim": h.run(["sh", "-c", f"sha256sum {DKIM_DIR}/*.key"]).out,
            "learned": learning.counters(h),
            "bans": h.run(["sqlite3", "/var/lib/fail2ban/fail2ban.sqlite3",
                           "SELECT count(*) FROM bans"]).out.strip(),
        }


class RetryingSenders:
    """Clients that keep sending, each message retried (as an MTA retries) until the
    server accepts it; every accepted Message-ID is counted."""

    def __init__(self, address: str, rcpt: str, sender_domain: str, senders: int = SENDERS,
                 submission: tuple[str, str, str] | None = None):
        """``submission`` = (login, password, CA file): the senders authenticate on 587
        after STARTTLS, as a mail client does, instead of relaying in on 25."""
        self.address, self.rcpt, self.domain = address, rcpt, sender_domain
        self.submission = submission
        self.accepted: list[str] = []
        self.refused: list[str] = []          # a 5xx: a sender would bounce it
        self.stop = threading.Event()
        self.stopped_at = float("inf")
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(senders)]

    def start(self):
        for t in self.threads:
            t.start()

    def run(self, n: int):
        i = 0
        while not self.stop.is_set():
            msg = EmailMessage()
            msg["From"], msg["To"] = (self.submission[0] if self.submission else f"retry{n}@{self.domain}"), self.rcpt
            msg["Subject"] = f"while the server was gone {n}.{i}"
            msg["Message-ID"] = email.utils.make_msgid(domain=self.domain)
            msg["Date"] = email.utils.formatdate()
            msg.set_content(f"message {i} of sender {n}, sent while the server was away\n")
            deadline = time.monotonic() + 1200
            # after the rebuild a message still waiting gets a minute more, as a queue would
            while time.monotonic() < min(deadline, self.stopped_at + 60):
                try:
                    self.send(msg)
                    self.accepted.append(msg["Message-ID"])
                    break
                except smtplib.SMTPResponseException as exc:
                    if exc.smtp_code >= 500:
                        self.refused.append(f"{msg['Message-ID']}: {exc.smtp_code} {exc.smtp_error!r}")
                        break
                    time.sleep(RETRY_S)
                except (OSError, smtplib.SMTPException):
                    time.sleep(RETRY_S)
            i += 1
            time.sleep(RETRY_S)

    def send(self, msg) -> None:
        if self.submission is None:
            with smtplib.SMTP(self.address, 25, timeout=20, local_hostname=self.domain) as s:
                s.send_message(msg)
            return
        login, password, cafile = self.submission
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.check_hostname = False            # by address: the name is the lab's
        with smtplib.SMTP(self.address, 587, timeout=20, local_hostname=self.domain) as s:
            s.starttls(context=ctx)
            s.login(login, password)
            s.send_message(msg)

    def finish(self):
        self.stopped_at = time.monotonic()
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def message_ids(p, user: str) -> list[str]:
    with Session(p) as s:
        out = s.host.run(["doveadm", "-f", "flow", "fetch", "-u", user, "hdr.message-id",
                          "mailbox", "INBOX"]).out
    return re.findall(r"<[^>]+>", out)
