"""A running Debian 12 server upgraded to Debian 13 in place (`mailops upgrade --to
trixie`), under mail: our retrying senders relay in on 25 and a mail client submits
on 587 through the whole window.  The dry run shows the package changes and dovecot's
2.4 configuration as a diff and changes nothing; a package upgrade that fails before any
package moved is rolled back to a serving Debian 12; a run killed while the packages
move (its SSH connection cut) is found by the next, which waits for the package job; a
provision that fails on Debian 13 (a broken 2.4 template) keeps the stand-in answering
421 until the next run finishes.  Afterwards every message, folder, flag, UID and UIDVALIDITY, the users
database, sieve scripts, DKIM keys, Bayes counters and ban history are as before, the
same passwords log in, verify is green with nothing left to change, and every message
accepted during the window is delivered once: none refused with a 5xx, none lost."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import UPGRADE, mailops_cli
from mailops.core.params import load_params
from mailops.lab import hosts as lab
from mailops.lab.mode import gateway_name
from mailops.lab.seed import seed_mail
from mailops.provision.checks.clients import target_from
from mailops.provision.session import Session
from mailops.provision.upgrade import DEFER_PID, MARKER, WORK
from mailstate import RETRY_S, RetryingSenders, message_ids, server_state

ROOT = Path(__file__).resolve().parents[2]
BREAK_APT = "/etc/apt/apt.conf.d/99mailops-test-break"
# the upgrade's package job runs (its pid alive, no exit code yet)
APT_RUNNING = 'cd "$1" && [ ! -e apt.rc ] && kill -0 "$(cat apt.pid)" 2>/dev/null'
SIEVE = b'require "fileinto";\nif header :contains "subject" "[lists]" { fileinto "Lists"; }\n'


def facts(p) -> dict:
    """What says which release the server is on, and whether it serves."""
    with Session(p) as s:
        h = s.host
        return {
            "debian": h.run(["cat", "/etc/debian_version"]).out.strip(),
            "sources": hashlib.sha256(h.run(["sh", "-c", "cat /etc/apt/sources.list "
                                             "/etc/apt/sources.list.d/* 2>/dev/null; true"]).stdout
                                      ).hexdigest(),
            "dovecot_conf": hashlib.sha256(h.run(["cat", "/etc/dovecot/dovecot.conf"]).stdout
                                           ).hexdigest(),
            "dovecot": h.run(["dovecot", "--version"]).out.split()[0],
            "marker": json.loads(h.run(["sh", "-c", f'cat {MARKER} 2>/dev/null || echo null']
                                       ).out),
            "stand_in": h.run(["test", "-e", DEFER_PID], check=False).ok,
        }


def greeting(address, port: int = 25) -> int:
    """The code of the server's greeting (0: no answer)."""
    try:
        with smtplib.SMTP(str(address), port, timeout=10):
            return 220                        # smtplib raises for any other greeting
    except smtplib.SMTPConnectError as exc:
        return exc.smtp_code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def server(prebuild):
    """lab8: Debian 12, built from nothing in the background (test_02 started it), with
    mail in every mailbox and a user's own sieve script; taken down at the end."""
    first = prebuild.first_run(UPGRADE)
    assert first["ok"], first
    p = load_params(UPGRADE)
    seed_mail(p, per_mailbox=60)
    bob = p.mail.mailboxes[1].address
    mailops_cli("sieve", "put", "--params", str(UPGRADE), "--activate", bob, "lists", "-",
                input=SIEVE.decode())
    yield p
    if not os.environ.get("MAILOPS_KEEP_LAB"):     # kept to look at a failure
        lab.down(lab.LabSpec.from_params(p), purge=True, log=lambda m: None)


def test_the_dry_run_shows_packages_and_the_2_4_config_and_changes_nothing(server):
    before = facts(server)
    proc = mailops_cli("upgrade", "--params", str(UPGRADE), "--to", "trixie", "--dry-run")
    assert re.search(r"plan: \d{2,} package\(s\) change", proc.stdout), proc.stdout[-2000:]
    assert "+++ /etc/dovecot/dovecot.conf" in proc.stdout
    assert "+dovecot_config_version = 2.4.0" in proc.stdout
    assert "+ssl_server_cert_file = " in proc.stdout
    assert facts(server) == before and before["debian"].startswith("12.")
    assert before["marker"] is None and greeting(server.addresses[0]) == 220


def test_a_package_upgrade_that_fails_before_any_package_moved_is_rolled_back(server):
    before = facts(server)
    with Session(server) as s:                 # apt refuses to run dpkg at all
        s.host.write_file(BREAK_APT, b'DPkg::Pre-Invoke {"/bin/false";};\n')
    try:
        proc = mailops_cli("upgrade", "--params", str(UPGRADE), "--to", "trixie", check=False)
    finally:
        with Session(server) as s:
            s.host.run(["rm", "-f", BREAK_APT])
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "failed before any package changed" in proc.stdout, proc.stdout[-3000:]
    assert "Pre-Invoke" in proc.stdout                   # apt's own words say why
    after = facts(server)
    assert after["marker"]["phase"] == "rolled-back"
    for key in ("debian", "sources", "dovecot_conf", "dovecot"):
        assert after[key] == before[key], key
    assert not after["stand_in"] and greeting(server.addresses[0]) == 220
    assert greeting(server.addresses[0], 587) == 220


@pytest.fixture(scope="module")
def upgraded(server, tmp_path_factory):
    """The upgrade under mail: first with a broken dovecot 2.4 template (the provision
    on Debian 13 fails, the stand-in answers again), then again with the real one."""
    p = server
    before = server_state(p)
    t = target_from(p)
    alice, bob = (mb.address for mb in p.mail.mailboxes)
    relay = RetryingSenders(str(p.addresses[0]), alice, gateway_name(p))
    submit = RetryingSenders(str(p.addresses[0]), bob, gateway_name(p), senders=1,
                             submission=(alice, t.passwords[alice].reveal(), str(t.cafile)))
    broken = tmp_path_factory.mktemp("templates") / "templates"
    shutil.copytree(ROOT / "templates", broken)
    conf = broken / "etc" / "dovecot" / "dovecot-2.4.conf.j2"
    conf.write_text(conf.read_text() + "mail_location = mdbox:~/mdbox\n")   # a 2.3 setting
    relay.start(), submit.start()
    started = time.monotonic()
    env = {"MAILOPS_TEMPLATES": str(broken)}
    # the controller killed while the packages move (its SSH connection cut): the job on
    # the server goes on, and the next run finds it and waits for it
    cut = subprocess.Popen([sys.executable, "-m", "mailops.cli.main", "upgrade", "--params",
                            str(UPGRADE), "--to", "trixie"], cwd=ROOT, env={**os.environ, **env},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    apt_running = False
    with Session(p) as s:
        deadline = time.monotonic() + 900
        while not apt_running and cut.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            apt_running = s.host.run(["sh", "-c", APT_RUNNING, "apt_running", WORK],
                                     check=False).ok
    cut.kill(), cut.wait()
    first = mailops_cli("upgrade", "--params", str(UPGRADE), "--to", "trixie", check=False,
                        env=env)
    between = facts(p)
    between["answers"] = greeting(p.addresses[0]), greeting(p.addresses[0], 587)
    second = mailops_cli("upgrade", "--params", str(UPGRADE), "--to", "trixie", check=False)
    seconds = time.monotonic() - started
    time.sleep(3 * RETRY_S)                     # let the senders find the server back
    relay.finish(), submit.finish()
    with Session(p) as s:                       # what postfix accepted, delivered
        for _ in range(60):
            if not s.host.run(["postqueue", "-j"]).out.strip():
                break
            time.sleep(1)
    yield {"before": before, "after": server_state(p), "first": first, "second": second,
           "apt_running": apt_running,
           "between": between, "facts": facts(p), "seconds": seconds, "relay": relay,
           "submit": submit, "users": (alice, bob)}


def test_a_run_cut_off_while_packages_move_is_finished_by_the_next(upgraded):
    first = upgraded["first"]
    assert upgraded["apt_running"], "the package job was never seen running"
    assert re.search(r"stopped at (sources|packages|stopped)", first.stdout), first.stdout[-3000:]
    assert "the upgrade's apt job is still running; waiting for it" in first.stdout
    assert "[upgrade] packages: upgraded to trixie" in first.stdout


def test_a_provision_that_fails_on_the_new_release_keeps_the_stand_in_answering(upgraded):
    first, between = upgraded["first"], upgraded["between"]
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-2000:]
    assert "on trixie now, 40-dovecot failed" in first.stdout, first.stdout[-3000:]
    assert between["marker"]["phase"] == "provision-failed" and between["stand_in"]
    assert between["debian"].startswith("13.") and between["dovecot"].startswith("2.4")
    assert between["answers"] == (421, 421)            # never 5xx: senders keep the mail


def test_the_upgrade_goes_on_and_ends_with_verify_green_and_nothing_to_change(upgraded):
    second = upgraded["second"]
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-3000:]
    assert "stopped at provision-failed" in second.stdout
    assert re.search(r"verify: green, 0 change\(s\) left", second.stdout), second.stdout[-3000:]
    f = upgraded["facts"]
    assert f["debian"].startswith("13.") and f["dovecot"].startswith("2.4")
    assert f["marker"]["phase"] == "done" and not f["stand_in"]
    print(f"upgrade under mail: {upgraded['seconds']:.0f} s, both runs; window "
          f"{f['marker'].get('window')}")


def test_every_message_folder_flag_uid_and_uidvalidity_is_kept(upgraded):
    before, after = upgraded["before"]["mail"], upgraded["after"]["mail"]
    assert sum(len(m) for f in before.values() for _, m in f.values()) >= 100
    for u in before:
        for folder, (uidvalidity, msgs) in before[u].items():
            got_validity, got = after[u][folder]
            assert got_validity == uidvalidity, (u, folder)
            if folder == "INBOX":                       # plus what arrived meanwhile
                got = {uid: v for uid, v in got.items() if uid in msgs}
            assert got == msgs, (u, folder)


def test_users_sieve_dkim_bayes_and_bans_are_kept(upgraded):
    before, after = upgraded["before"], upgraded["after"]
    for key in ("users_db", "sieve", "dkim", "learned", "bans"):
        assert after[key] == before[key], key
    assert "lists ACTIVE" in after["sieve"][upgraded["users"][1]], after["sieve"]


def test_the_same_passwords_log_in(upgraded, server):
    t = target_from(server)
    for mb in server.mail.mailboxes:
        with t.imap(mb.address) as m:
            assert m.select("INBOX")[0] == "OK"


def test_every_message_sent_during_the_window_is_delivered_once(upgraded, server):
    alice, bob = upgraded["users"]
    for senders, user in ((upgraded["relay"], alice), (upgraded["submit"], bob)):
        assert senders.refused == [], senders.refused[:5]       # no 5xx, ever
        assert senders.accepted, "no sender got through after the upgrade"
        ids = message_ids(server, user)
        wrong = {m: ids.count(m) for m in senders.accepted if ids.count(m) != 1}
        if wrong:
            with Session(server) as s:
                log = s.host.run(["sh", "-c", 'grep -h -F -e "$1" /var/log/mail.log* | tail -n 30; '
                                  'postqueue -p | tail -n 20', "why",
                                  next(iter(wrong)).strip("<>")], check=False).out
        assert wrong == {}, log                     # each accepted message delivered once
    window = upgraded["facts"]["marker"]["window"]
    assert window["answered"] > 0                # senders met the stand-in's 421


def test_postfix_settles_its_compatibility_level_and_sieve_is_compiled_anew(upgraded, server):
    with Session(server) as s:
        h = s.host
        assert h.run(["postconf", "-h", "compatibility_level"]).out.strip() == "3.6"
        assert "backwards-compatible default" not in h.run(["postfix", "check"]).err
        # every compiled sieve script is newer than the release (base-files wrote
        # /etc/debian_version): the global ones by 65-sieve, bob's at a delivery since
        binaries = h.run(["find", "/etc/dovecot/sieve", "/var/mail/vhosts", "-name", "*.svbin"]).out.split()
        stale = h.run(["find", "/etc/dovecot/sieve", "/var/mail/vhosts", "-name", "*.svbin",
                       "!", "-newer", "/etc/debian_version"]).out.split()
    assert binaries and stale == [], stale
    assert any("bob" in b for b in binaries), binaries


def test_an_upgrade_of_a_server_already_on_trixie_is_refused_with_nothing_changed(
        upgraded, server):
    before = facts(server)
    proc = mailops_cli("upgrade", "--params", str(UPGRADE), "--to", "trixie", check=False)
    assert proc.returncode == 2 and "already trixie" in proc.stderr, proc.stderr
    assert facts(server) == before
