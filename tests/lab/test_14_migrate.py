"""Migration from the lab's old IMAP server (lab5: Debian 12's dovecot, maildir, a
seeded mailbox of 300 messages in nested folders with flags, a non-ASCII folder and
a duplicate) into fresh mailboxes on the lab mail servers, through the CLI and the
notebook under papermill, on Debian 12 and 13 (dovecot 2.3 and 2.4 settings).

The result is judged by this test's own IMAP reader on both servers, not by the
product's verification: every folder, UID, UIDVALIDITY, flag and message digest
must match; a second run saves nothing; the old server is left as it was; the old
server's password is in no process's argv (read from /proc while the copy runs),
no output and no log; a refused login, an untrusted certificate, an unreachable
port, an unknown mailbox and an unknown host key each stop the run, naming the
field, with nothing copied."""
import hashlib
import json
import re
import ssl
import threading
import uuid

import pytest
import yaml

from conftest import LAB_PARAMS, ROOT, mailops_cli, provision_json
from mailops.lab import peers
from mailops.manage import accounts as manage
from mailops.provision import pki
from mailops.provision.checks.clients import IMAPS, target_from
from mailops.core.host import SSHHost
from mailops.provision.session import Session

OLD_LOGIN = "old@old.test"


def cli(*args, params=LAB_PARAMS, check=True, env=None):
    return mailops_cli(*args, "--params", str(params), check=check, env=env)


@pytest.fixture(scope="module")
def old_server(lab_up, lab_params):
    peers.prepare_old_imap_host(lab_params, {"inc@old.test": 40})
    spec = peers.old_imap_spec(lab_params)
    password = yaml.safe_load((spec.state_dir / "secrets.yaml").read_text())[peers.OLD_IMAP_SECRET]
    ca = lab_params.path(lab_params.tls.ca_dir) / "ca.crt"
    return {"spec": spec, "password": password, "ca": ca}


def new_mailbox(params_file) -> tuple[str, str]:
    """A fresh mailbox here (never opened before the first copy), and its password."""
    address = f"mig{uuid.uuid4().hex[:8]}@lab.test"
    cli("user", "add", address, "--password", "generate", params=params_file)
    return address, (manage.PASSWORD_DIR / f"{address}.txt").read_text().strip()


# -- this test's own reader ----------------------------------------------------------------
def _context(ca):
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)    # the lab CA's older leaves
    return ctx


def connect_old(old):
    return IMAPS(str(old["spec"].address), 993, peers.OLD_IMAP_NAME,
                 ssl_context=_context(old["ca"]), timeout=30)


def connect_new(p):
    return IMAPS(str(p.addresses[0]), 993, p.hostname,
                 ssl_context=_context(target_from(p).cafile), timeout=30)


def read_mailbox(m, user, password) -> dict:
    """{folder ('/'-separated, wire encoding): {uidvalidity, messages: {uid: (flags, sha)}}},
    read only (EXAMINE, BODY.PEEK)."""
    m.login(user, password)
    out = {}
    for line in m.list()[1]:
        mt = re.match(rb'\(([^)]*)\) "(.)" (.*)$', line)
        flags, sep, name = mt.group(1), mt.group(2).decode(), mt.group(3).decode().strip('"')
        if b"\\Noselect" in flags or b"\\NonExistent" in flags:
            continue
        typ, _ = m.select(f'"{name}"', readonly=True)
        assert typ == "OK", name
        validity = int(m.response("UIDVALIDITY")[1][0])
        msgs = {}
        typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple):
                uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                fl = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode().split()
                msgs[uid] = (" ".join(sorted(f for f in fl if f != "\\Recent")),
                             hashlib.sha256(item[1]).hexdigest())
        out[name.replace(sep, "/")] = {"uidvalidity": validity, "messages": msgs}
    m.logout()
    return out


def old_mailbox(old, login=OLD_LOGIN):
    return read_mailbox(connect_old(old), login, old["password"])


def new_mailbox_content(p, address, password):
    return read_mailbox(connect_new(p), address, password)


class CmdlineWatch:
    """Every process's argv on the mail server, read from /proc every 10 ms while a
    run goes on (its own SSH connection)."""
    LOOP = r"""
import glob, os, sys, time
seen, end = set(), time.time() + 120
while time.time() < end and not os.path.exists(sys.argv[1]):
    for f in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            seen.add(open(f, "rb").read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    time.sleep(0.01)
os.unlink(sys.argv[1])
print("\n".join(sorted(seen)))
"""

    def __init__(self, p):
        self.p, self.stop = p, f"/run/mailops-test-stop-{uuid.uuid4().hex[:8]}"
        self.lines: list[str] = []

    def __enter__(self):
        def watch():
            with SSHHost(self.p.target, key_file=self.p.path(self.p.ssh.key_file),
                         known_hosts=self.p.path(self.p.ssh.known_hosts)) as h:
                self.lines = h.run(["python3", "-c", self.LOOP, self.stop], timeout=180).out \
                    .splitlines()
        self.thread = threading.Thread(target=watch)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        with Session(self.p) as s:
            s.host.run(["touch", self.stop])
        self.thread.join(200)


def secret_parts(password: str) -> list[str]:
    return [password, password.split(" ")[0]]        # the whole, and its random head


# -- tests ------------------------------------------------------------------------------------
def test_migration_copies_everything_keeps_uids_and_a_rerun_copies_nothing(any_lab, old_server):
    params_file, p = any_lab
    address, password = new_mailbox(params_file)
    before_old = old_mailbox(old_server)
    assert sum(len(f["messages"]) for f in before_old.values()) == 300
    assert "Entw&APw-rfe" in before_old and "Projekte/Gr&APYA3w-e" in before_old

    half = cli("migrate", "--login", OLD_LOGIN, "--to", address, params=params_file, check=False)
    assert half.returncode == 2 and "error: source: --login and --to need --from" in half.stderr
    dry = cli("migrate", "--from", "imaps://imap.old.test", "--ca-file", str(old_server["ca"]),
              "--login", OLD_LOGIN, "--password", "env:OLD_PW", "--to", address, "--dry-run",
              params=params_file, env={"OLD_PW": old_server["password"]})
    assert "dry run: nothing copied" in dry.stdout and "Entwürfe" in dry.stdout
    assert sum(len(f["messages"]) for f in new_mailbox_content(p, address, password).values()) == 0

    with CmdlineWatch(p) as watch:
        run = cli("migrate", "--from", "imaps://imap.old.test", "--ca-file", str(old_server["ca"]),
                  "--login", OLD_LOGIN, "--password", "env:OLD_PW", "--to", address, "--json",
                  params=params_file, env={"OLD_PW": old_server["password"]})
    record = json.loads(run.stdout)
    assert record["status"] == "verified" and record["mailboxes"][0]["new"] == 300, record
    assert re.search(r"\[\d/6\] Entwürfe: 37 there, 37 here \(\+37\)", run.stderr), run.stderr

    # the copy, judged by this test's own reader: folders, UIDVALIDITY, UIDs, flags, bytes
    new = new_mailbox_content(p, address, password)
    assert {k: v for k, v in new.items() if v["messages"] or k in before_old} == before_old
    assert old_mailbox(old_server) == before_old                  # the old server untouched

    # the password: in no argv while the copy ran (the watch saw the copy's doveadm), no output
    assert any("doveadm -c /run/mailops-migrate/" in line for line in watch.lines), \
        f"the watch never saw dsync run: {len(watch.lines)} command lines"
    for part in secret_parts(old_server["password"]):
        assert not [line for line in watch.lines if part in line]
        assert part not in run.stdout + run.stderr + dry.stdout + dry.stderr
    with Session(p) as s:
        assert s.host.run(["find", "/run/mailops-migrate", "-mindepth", "1"]).out == ""
        logs = s.host.run(["sh", "-c", "cat /var/log/dovecot*.log /var/log/mail.log "
                                       "2>/dev/null; journalctl -q 2>/dev/null | tail -5000"],
                          timeout=120).out
        assert not any(part in logs for part in secret_parts(old_server["password"]))

    again = json.loads(cli("migrate", "--from", "imaps://imap.old.test", "--ca-file",
                           str(old_server["ca"]), "--login", OLD_LOGIN, "--password",
                           "env:OLD_PW", "--to", address, "--json", params=params_file,
                           env={"OLD_PW": old_server["password"]}).stdout)
    assert again["status"] == "verified" and again["mailboxes"][0]["new"] == 0, again
    assert new_mailbox_content(p, address, password) == new          # same UIDs, nothing saved
    cli("user", "remove", address, params=params_file)


def test_a_rerun_copies_only_new_mail_and_flag_changes(any_lab, old_server, lab_params):
    """The operator's path: migrate early, users keep working on the old server, run
    again at the switch-over; mail that arrived here meanwhile stays (mode sync), and
    nothing is copied twice however often it runs (dsync's state per folder)."""
    params_file, p = any_lab
    peers.prepare_old_imap_host(lab_params, {"inc@old.test": 40}, fresh=["inc@old.test"])
    address, password = new_mailbox(params_file)
    env = {"OLD_PW": old_server["password"]}
    args = ("migrate", "--from", "imaps://imap.old.test", "--ca-file", str(old_server["ca"]),
            "--login", "inc@old.test", "--password", "env:OLD_PW", "--to", address, "--json")
    first = json.loads(cli(*args, env=env, params=params_file).stdout)
    assert first["status"] == "verified" and first["mailboxes"][0]["new"] == 40

    m = connect_old(old_server)
    m.login("inc@old.test", old_server["password"])
    token = uuid.uuid4().hex
    m.append("INBOX", None, None, f"From: a@old.test\r\nTo: inc@old.test\r\nSubject: late "
                                  f"{token}\r\nMessage-ID: <{token}@old.test>\r\n\r\nlate\r\n".encode())
    m.select("Sent")
    m.uid("STORE", "1", "+FLAGS", "(\\Flagged $Important)")
    m.logout()
    # mail that reached the new server in between (it takes a UID the old server uses next)
    with connect_new(p) as n:
        n.login(address, password)
        n.append("INBOX", None, None, b"From: b@lab.test\r\nSubject: arrived here\r\n\r\nhi\r\n")

    second = json.loads(cli(*args, env=env, params=params_file).stdout)
    assert second["status"] == "verified" and second["mailboxes"][0]["new"] == 1, second
    for _ in range(2):
        again = json.loads(cli(*args, env=env, params=params_file).stdout)
        assert again["status"] == "verified" and again["mailboxes"][0]["new"] == 0, again
    new = new_mailbox_content(p, address, password)
    old = old_mailbox(old_server, "inc@old.test")
    assert new["Sent"] == old["Sent"] and "$Important" in new["Sent"]["messages"][1][0]
    old_inbox, new_inbox = old["INBOX"]["messages"].values(), new["INBOX"]["messages"].values()
    assert sorted(new_inbox) == sorted([*old_inbox, next(m for m in new_inbox
                                                         if m not in old_inbox)])
    assert len(new_inbox) == len(old_inbox) + 1          # the one that arrived here, kept
    cli("user", "remove", address, params=params_file)


def test_bad_sources_are_refused_with_nothing_copied(lab_up, old_server, lab_params, tmp_path):
    provision_json("--params", str(LAB_PARAMS), "--apply")
    address, password = new_mailbox(LAB_PARAMS)
    other_ca = tmp_path / "other-ca"
    other_ca.mkdir()
    pki._ensure_ca(other_ca)
    base = ["migrate", "--login", OLD_LOGIN, "--to", address, "--password", "env:OLD_PW"]
    good = {"OLD_PW": old_server["password"]}
    cases = [
        (["--from", "imaps://imap.old.test", "--ca-file", str(old_server["ca"])],
         {"OLD_PW": "wrong password"}, "password: imap.old.test refused the login of old@old.test"),
        (["--from", "imaps://imap.old.test"], good,      # the mail server's system CAs only
         "source: the certificate of imap.old.test:993 is not trusted"),
        (["--from", "imaps://imap.old.test", "--ca-file", str(other_ca / "ca.crt")], good,
         "source: the certificate of imap.old.test:993 is not trusted"),
        (["--from", "imap://imap.old.test", "--ca-file", str(other_ca / "ca.crt")], good,
         "source: the certificate of imap.old.test:143 is not trusted"),      # STARTTLS
        (["--from", "imaps://imap.old.test:9993", "--ca-file", str(old_server["ca"])], good,
         "source: cannot reach imap.old.test:9993"),
        (["--from", "imaps://nowhere.old.test", "--ca-file", str(old_server["ca"])], good,
         "source: cannot reach nowhere.old.test:993"),
        (["--from", "http://imap.old.test"], good, "source: 'http://imap.old.test': imaps://"),
    ]
    for extra, env, expected in cases:
        r = cli(*base, *extra, env=env, check=False)
        assert r.returncode == 2 and f"error: {expected}" in r.stderr, (extra, r.stderr)
        assert "nothing was written" in r.stderr
        for part in secret_parts(old_server["password"]):
            assert part not in r.stdout + r.stderr
    r = cli("migrate", "--from", "imaps://imap.old.test", "--ca-file", str(old_server["ca"]),
            "--login", OLD_LOGIN, "--password", "env:OLD_PW", "--to", "nobody@lab.test",
            env=good, check=False)
    assert r.returncode == 2 and "error: to: no mailbox nobody@lab.test" in r.stderr

    # a mail server whose host key is not the known one: refused before anything is sent
    known = tmp_path / "known_hosts"
    known.write_text(f"{lab_params.addresses[0]} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIOr0Xn9X1h1xJkqfBvW0bq1bq1bq1bq1bq1bq1bq1bq1\n")
    other = ROOT / "parameters" / f".test-{uuid.uuid4().hex[:8]}.yaml"
    other.write_text(LAB_PARAMS.read_text().replace("known_hosts: ../.lab/lab1/known_hosts",
                                                    f"known_hosts: {known}"))
    try:
        r = cli(*base, "--from", "imaps://imap.old.test", "--ca-file", str(old_server["ca"]),
                params=other, env=good, check=False)
    finally:
        other.unlink()
    assert r.returncode == 2 and "host key" in r.stderr.lower(), r.stderr
    assert sum(len(f["messages"]) for f in new_mailbox_content(lab_params, address, password)
               .values()) == 0
    cli("user", "remove", address)


def test_migrate_notebook_under_papermill(lab_up, old_server, lab_params, tmp_path):
    provision_json("--params", str(LAB_PARAMS), "--apply")
    address, password = new_mailbox(LAB_PARAMS)
    out, record = tmp_path / "migrate.ipynb", tmp_path / "record.json"
    nb_dir = ROOT / "notebooks" / "management"
    import subprocess
    import sys
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(nb_dir / "migrate.ipynb"), str(out),
         "--cwd", str(nb_dir), "-p", "dry_run", "False", "-p", "source", "imaps://imap.old.test",
         "-p", "login", OLD_LOGIN, "-p", "password", "env:OLD_PW", "-p", "to", address,
         "-p", "ca_file", str(old_server["ca"]), "-p", "record_file", str(record)],
        capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "OLD_PW": old_server["password"]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(record.read_text())
    assert rec["status"] == "verified" and rec["mailboxes"][0]["new"] == 300, rec
    text = out.read_text()
    assert "[6/6]" in text and "verification of" in text
    for part in secret_parts(old_server["password"]):
        assert part not in text and part not in proc.stdout + proc.stderr
    new = new_mailbox_content(lab_params, address, password)
    assert sum(len(f["messages"]) for f in new.values()) == 300
    cli("user", "remove", address)
