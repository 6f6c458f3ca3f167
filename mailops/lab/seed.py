"""The lab's test mail: a deterministic corpus for the mail server's mailboxes (what the
restore drill proves) and for the old IMAP server a migration pulls from."""
from __future__ import annotations

from mailops.provision.checks.clients import target_from

SEED_HEADER = "X-Mailops-Seed"
SEED_FOLDERS = ("INBOX", "Archive", "Lists/debian-user", "Sent")


def seed_messages(user: str, n: int, folders: tuple[str, ...] = SEED_FOLDERS):
    """A deterministic corpus for ``user``: (folder, flags, message bytes), in
    several folders, with flags and, every fifth message, an attachment."""
    import random
    from email.message import EmailMessage
    import email.utils
    rnd = random.Random(f"mailops-seed-{user}")
    words = ("the backup drill compares every message by folder and checksum so a restore "
             "is proven before it is needed while the server keeps mail for its users").split()
    for i in range(n):
        msg = EmailMessage()
        domain = user.split("@")[1]
        msg["From"] = f"sender{i % 17}@{domain}"
        msg["To"] = user
        msg["Subject"] = f"seeded message {i}: " + " ".join(rnd.choices(words, k=4))
        msg["Date"] = email.utils.formatdate(1_760_000_000 + i * 3600)
        msg["Message-ID"] = f"<seed-{i}-{user.replace('@', '.')}@mailops.lab>"
        msg[SEED_HEADER] = str(i)
        msg.set_content("\n".join(" ".join(rnd.choices(words, k=12)) for _ in range(rnd.randint(3, 30))))
        if i % 5 == 0:
            msg.add_attachment(rnd.randbytes(rnd.randint(2000, 40000)), maintype="application",
                               subtype="octet-stream", filename=f"data-{i}.bin")
            msg.set_boundary(f"mailops-seed-{i}")      # the same bytes every run
        flags = " ".join(f for f, every in ((r"\Seen", 2), (r"\Flagged", 7), (r"\Answered", 11))
                         if i % every == 0)
        yield folders[i % len(folders)], flags, msg.as_bytes()


# the old IMAP server's folders: nested ones and non-ASCII names ('/' here; the old
# server's own separator is maildir++'s '.')
OLD_SERVER_FOLDERS = ("INBOX", "Sent", "Archive/2023", "Archive/2024", "Entwürfe",
                      "Projekte/Größe", "INBOX", "Archive/2024")


def old_server_messages(login: str, n: int):
    """The old IMAP server's corpus for ``login``, as :func:`seed_messages`; the last
    message repeats the first byte for byte (real mailboxes hold duplicates)."""
    msgs = list(seed_messages(login, n - 1 if n > 1 else n, OLD_SERVER_FOLDERS))
    return msgs + msgs[:1] if n > 1 else msgs


def seed_mail(params, per_mailbox: int = 120) -> dict[str, int]:
    """Lab only: fill every mailbox of the parameters with a realistic corpus over
    IMAP (as a client would: APPEND with flags), so the restore drill has mail to
    prove.  A mailbox that already holds the seeded corpus is left alone.
    Returns the number of messages added per mailbox."""
    if params.lab is None:
        raise ValueError("seeding test mail is for lab hosts only")
    t = target_from(params)
    added = {}
    for mb in params.mail.mailboxes:
        with t.imap(mb.address) as m:
            have = 0
            for folder in SEED_FOLDERS:
                if m.select(f'"{folder}"')[0] == "OK":
                    _, data = m.uid("SEARCH", None, "HEADER", SEED_HEADER, '""')
                    have += len(data[0].split())
            count = 0
            if have < per_mailbox:
                for folder in SEED_FOLDERS:
                    m.create(f'"{folder}"')
                for i, (folder, flags, raw) in enumerate(seed_messages(mb.address, per_mailbox)):
                    if i >= have:
                        m.append(f'"{folder}"', f"({flags})" if flags else None, None, raw)
                        count += 1
            added[mb.address] = count
    return added
