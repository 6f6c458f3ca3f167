"""A lost server rebuilt on a new host from its backup (`mailops rebuild`): the mail host's
root file system destroyed and built anew at the same address, then rebuilt from the
latest archive.  Afterwards every message is there byte for byte with its folder, flags,
UID and UIDVALIDITY (Debian's mbsync, synchronised before the loss, downloads nothing),
the users database, sieve scripts, DKIM keys, Bayes counters and ban history are the
archived ones, verify is green with nothing left to change, and the mail our own
retrying senders sent while the host was gone is delivered, every message once.  A
rebuild asked of the rebuilt server is refused with nothing changed."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from mailops.core.layout import VHOSTS
from mailops.core.resources.maildb import DB_PATH
from mailops.lab import hosts as lab
from mailops.lab.mode import gateway_name
from mailops.lab.seed import seed_mail
from mailops.provision.checks.clients import target_from
from mailops.provision.session import Session
from mailstate import RETRY_S, RetryingSenders, message_ids, server_state

ROOT = Path(__file__).resolve().parents[2]


def mbsync(tmp: Path, p, user: str) -> str:
    """Debian's mbsync from this machine into a local Maildir: its summary line."""
    t = target_from(p)
    pw = tmp / "pw"
    pw.write_text(t.passwords[user].reveal())
    pw.chmod(0o600)
    (tmp / "mail").mkdir(exist_ok=True)
    rc = tmp / "mbsyncrc"
    rc.write_text(f"""IMAPAccount lab
Host {t.hostname}
Port 993
User {user}
PassCmd "cat {pw}"
SSLType IMAPS
CertificateFile {t.cafile}

IMAPStore far
Account lab

MaildirStore near
Path {tmp}/mail/
Inbox {tmp}/mail/INBOX
SubFolders Verbatim

Channel all
Far :far:
Near :near:
Patterns *
Create Near
Sync Pull
SyncState *
""")
    # this machine does not resolve the lab's names: mbsync alone sees an /etc/hosts that
    # does (a private mount namespace), so it checks the certificate against the host name
    hosts = tmp / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{t.address} {t.hostname}\n")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c",
                           'mount --bind "$1" /etc/hosts && exec mbsync -c "$2" all',
                           "mbsync", str(hosts), str(rc)], capture_output=True, text=True,
                          timeout=600, env={"HOME": str(tmp), "PATH": "/usr/sbin:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def rebuilt(params, lab_spec, tmp_path_factory):
    """Before: seeded mail, a fresh backup, mbsync's copy. Then the host is lost and
    rebuilt while our senders retry."""
    from conftest import mailops_cli
    seed_mail(params)
    user = params.mail.mailboxes[0].address
    with Session(params) as s:                  # the archive the rebuild starts from
        s.host.run(["/usr/local/sbin/mailops-backup"], timeout=900)
    before = server_state(params)
    sync_dir = tmp_path_factory.mktemp("mbsync")
    mbsync(sync_dir, params, user)

    lab.down(lab_spec, purge=True, log=lambda m: None)          # the host is lost
    senders = RetryingSenders(str(lab_spec.address), user, gateway_name(params))
    senders.start()
    if not lab.up(lab_spec, log=lambda m: None).up:
        raise AssertionError("the new host did not come up")
    started = time.monotonic()
    proc = mailops_cli("rebuild", "--params", str(ROOT / "parameters" / "lab.yaml"), check=False)
    seconds = time.monotonic() - started
    time.sleep(3 * RETRY_S)                      # let the senders find the server back
    senders.finish()
    yield {"before": before, "after": server_state(params), "proc": proc, "seconds": seconds,
           "sync_dir": sync_dir, "user": user, "senders": senders}


def test_the_rebuild_succeeds_and_ends_with_verify_green_and_nothing_to_change(rebuilt):
    proc = rebuilt["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert re.search(r"verify\s+[\d.]+s\s+0 change\(s\)", proc.stdout), proc.stdout[-3000:]
    print(f"rebuild: {rebuilt['seconds']:.0f} s from an empty host to verify green")


def test_every_message_folder_flag_uid_and_uidvalidity_is_back(rebuilt):
    before, after = rebuilt["before"]["mail"], rebuilt["after"]["mail"]
    user = rebuilt["user"]
    assert sum(len(m) for f in before.values() for _, m in f.values()) > 100
    for u in before:
        for folder, (uidvalidity, msgs) in before[u].items():
            got_validity, got = after[u][folder]
            assert got_validity == uidvalidity, (u, folder)
            if u == user and folder == "INBOX":      # plus what arrived meanwhile
                got = {uid: v for uid, v in got.items() if uid in msgs}
            assert got == msgs, (u, folder)


def maildir_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and p.parent.name in ("cur", "new"))


def test_a_client_synchronised_before_the_loss_downloads_nothing_old(rebuilt, params):
    """mbsync keys its state on UIDVALIDITY and UIDs: a changed UIDVALIDITY is an error,
    new UIDs would download every message again. Only the mail sent meanwhile is new."""
    mail = rebuilt["sync_dir"] / "mail"
    had = maildir_files(mail)
    assert had >= 100, had
    out = mbsync(rebuilt["sync_dir"], params, rebuilt["user"])
    assert "UIDVALIDITY" not in out, out
    assert maildir_files(mail) - had == len(rebuilt["senders"].accepted), out[-1500:]


def test_users_sieve_dkim_bayes_and_bans_are_the_archived_ones(rebuilt):
    before, after = rebuilt["before"], rebuilt["after"]
    for key in ("users_db", "sieve", "dkim", "learned", "bans"):
        assert after[key] == before[key], key


def test_mail_sent_while_the_host_was_gone_is_delivered_once(rebuilt, params):
    accepted = rebuilt["senders"].accepted
    assert rebuilt["senders"].refused == []
    assert accepted, "no sender got through after the rebuild"
    ids = message_ids(params, rebuilt["user"])
    assert sorted(m for m in accepted if ids.count(m) != 1) == []


def test_a_rebuild_of_a_server_that_holds_mail_is_refused_with_nothing_changed(rebuilt, params):
    from conftest import mailops_cli
    with Session(params) as s:
        stamp = s.host.run(["sh", "-c", f"find {VHOSTS} {DB_PATH} -printf '%p %s %T@\\n' "
                            "| sort | sha256sum"]).out
    proc = mailops_cli("rebuild", "--params", str(ROOT / "parameters" / "lab.yaml"), check=False)
    assert proc.returncode == 2 and "holds mail already" in proc.stderr, proc.stderr
    with Session(params) as s:
        assert s.host.run(["sh", "-c", f"find {VHOSTS} {DB_PATH} -printf '%p %s %T@\\n' "
                           "| sort | sha256sum"]).out == stamp
