"""Backups on the lab, for real: borg (repokey-blake2) on the second lab host,
run by borgmatic; backup -> delete a mailbox -> restore -> byte-identical
messages; the restore drill finds no difference; bad input changes nothing."""
import json
import shutil
import uuid

import pytest

from conftest import LAB_PARAMS, ROOT, mailops_cli
from mailops.provision import backup, verify
from mailops.core.secrets import resolve
from mailops.remote.restore import FETCH_FIELDS, parse_fetch
from mailops.core.layout import BACKUP as PATHS

BOB_HOME = "/var/mail/vhosts/example.test/bob"


def hashes(host, user):
    """{(folder, guid): sha256 of the full text} as doveadm reads the live store."""
    out = host.run(["doveadm", "-f", "pager", "fetch", "-u", user, FETCH_FIELDS, "ALL"]).stdout
    return {k: sha for k, (sha, _saved) in parse_fetch(out).items()}


def deliver(t, rcpt, n=2):
    for _ in range(n):
        token = uuid.uuid4().hex
        with t.smtp(25) as s:
            assert not s.send_message(verify.message(f"verify@{t.hostname}", rcpt, token),
                                      f"verify@{t.hostname}", [rcpt])


def run_backup(host):
    host.run([PATHS.run], timeout=600)
    return json.loads(host.read_file(PATHS.state))


def test_repository_is_encrypted_and_the_passphrase_stays_in_its_file(params, session):
    h = session.host
    info = json.loads(h.run([PATHS.wrapper, "info", "--json"], timeout=120).out)
    assert info["encryption"]["mode"] == "repokey-blake2"
    secret = resolve(params.backup.passphrase, params.base_dir).reveal()
    for path in (PATHS.config, PATHS.wrapper, PATHS.run, "/etc/cron.d/mailops-backup"):
        assert secret not in h.read_file(path).decode(), path
    assert h.run(["stat", "-c", "%a %U", PATHS.passphrase, PATHS.ssh_key]).out == \
        "600 root\n600 root\n"
    # the repository host's key is checked: a wrong known_hosts entry stops the backup
    saved = h.read_file(PATHS.known_hosts)
    try:
        h.write_file(PATHS.known_hosts, saved.replace(b"ssh-ed25519 AAAA", b"ssh-ed25519 AAAB"),
                     mode="0644")
        res = h.run([PATHS.wrapper, "list", "--short"], check=False, timeout=60)
        assert not res.ok, res.out
        # borg does not always pass ssh's words on (it may report only "Connection
        # closed"): ask the same ssh command borg uses, directly
        rsh = h.run(["sed", "-n", "s/^export BORG_RSH='\\(.*\\)'$/\\1/p", PATHS.wrapper]).out.strip()
        user_host = params.backup.repository.split("//", 1)[1].split("/", 1)[0]
        direct = h.run(["sh", "-c", f"{rsh} {user_host} true"], check=False, timeout=60)
        assert not direct.ok and "host key verification failed" in direct.err.lower(), direct.err
    finally:
        h.write_file(PATHS.known_hosts, saved, mode="0644")


def test_backup_delete_mailbox_restore_is_byte_identical(params, session):
    h, t = session.host, verify.target_from(params)
    deliver(t, "bob@example.test")
    state = run_backup(h)
    assert state["exit"] == 0
    before = hashes(h, "bob@example.test")
    assert len(before) >= 2
    h.run(["doveadm", "kick", "bob@example.test"], check=False)
    h.run(["rm", "-rf", BOB_HOME])                          # the mailbox is lost
    assert hashes(h, "bob@example.test") == {}
    done = backup.restore_mailbox(session, "bob@example.test")
    assert done["mode"] == "replaced", done
    assert hashes(h, "bob@example.test") == before          # every message, byte for byte
    assert h.run(["stat", "-c", "%U:%G", BOB_HOME]).out == "vmail:vmail\n"
    assert verify.find_and_delete(t, "bob@example.test", "no-such-token", wait=0) is False


def test_restore_drill_finds_no_difference(params, session):
    h = session.host
    run_backup(h)
    report = backup.drill(session)
    assert report.ok, str(report)
    assert report.messages >= 2 and {u["user"] for u in report.users} == {
        mb.address for mb in params.mail.mailboxes}
    left = h.run(["find", backup.SCRATCH_PARENT, "-maxdepth", "1", "-name", ".mailops-restore-*"]).out
    assert not left, left                                                  # no copy left behind


def test_restore_into_a_mailbox_with_mail_adds_beside_it(params, session):
    h, t = session.host, verify.target_from(params)
    deliver(t, "alice@lab.test", n=1)
    run_backup(h)
    before = hashes(h, "alice@lab.test")
    done = backup.restore_mailbox(session, "alice@lab.test")
    assert done["mode"].startswith("imported into Restored/"), done
    after = hashes(h, "alice@lab.test")
    assert before.items() <= after.items()                  # nothing overwritten
    folder = done["mode"].removeprefix("imported into ")
    restored = [k for k in after if k not in before]     # what this restore added ...
    assert all(k[0].startswith(folder + "/") for k in restored)   # ... all in its folder
    assert sorted(after[k] for k in restored) == sorted(before.values())


def test_bad_restore_input_is_refused_and_changes_nothing(params, session):
    h = session.host
    listing = h.run(["sh", "-c", "ls -lR /var/mail/vhosts | md5sum"]).out
    for user, archive, words in (("nobody@lab.test", "", "not a mailbox"),
                                 ("bob@example.test; rm -rf /", "", "not a mailbox address"),
                                 ("bob@example.test", "no-such-archive", "exited 2"),
                                 ("bob@example.test", "$(reboot)", "not an archive name")):
        with pytest.raises(backup.BackupError) as exc:
            backup.restore_mailbox(session, user, archive)
        assert words in str(exc.value) or "does not exist" in str(exc.value), exc.value
    assert h.run(["sh", "-c", "ls -lR /var/mail/vhosts | md5sum"]).out == listing


def test_a_borgmatic_config_borgmatic_refuses_changes_nothing(params, session, tmp_path):
    tdir = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", tdir)
    conf = tdir / "etc/borgmatic/config-1.7.yaml.j2"
    conf.write_text(conf.read_text().replace("    keep_daily:", "    keep_dayly:"))
    before = session.host.read_file(PATHS.config)
    proc = mailops_cli("provision", "--params", str(LAB_PARAMS), "--only", "80-backup", "--apply",
                       check=False, env={"MAILOPS_TEMPLATES": str(tdir)})
    assert proc.returncode == 1 and "refused the new /etc/borgmatic/config.yaml" in proc.stdout, \
        proc.stdout[-2000:]
    assert session.host.read_file(PATHS.config) == before


def test_drill_command_runs_the_notebook_and_writes_html(params):
    proc = mailops_cli("drill", "--params", str(LAB_PARAMS))
    assert "[85-restore-drill] verified" in proc.stdout and " 0 difference(s)" in proc.stdout
    notebook = proc.stdout.strip().rsplit("; ", 1)[1]
    html = notebook.removesuffix(".ipynb") + ".html"
    text = open(html).read()
    assert "restore drill ok" in text
    secret = resolve(params.backup.passphrase, params.base_dir).reveal()
    assert secret not in text and secret not in open(notebook).read()


def test_seeded_corpus_is_backed_up_and_proven_by_the_drill(params, session):
    """What the README's first command does: seed the mailboxes (folders, flags,
    attachments), back up, and the drill compares every seeded message."""
    from mailops.lab.seed import seed_mail
    seed_mail(params)
    assert set(seed_mail(params).values()) == {0}                        # idempotent
    run_backup(session.host)
    report = backup.drill(session)
    assert report.ok, str(report)
    assert report.messages >= 120 * len(params.mail.mailboxes), str(report)
