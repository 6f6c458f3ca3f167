"""Protection and recovery units: sieve scripts installed compiled and refused when
they do not compile; learn log and counters; the restore drill's comparison; files
validated before they replace the live ones."""
import pytest

from support.fakehost import FakeFile, FakeHost
from mailops.provision.learning import parse_counters, parse_log
from mailops.core.params import load_params
from mailops.core.plan import Status, apply, plan
from mailops.core.resources import Directory, SieveScript
from mailops.core.resources.files import SecretFile
from mailops.core import layout
from mailops.provision.steps import sieve as sieve_step

PATH = "/etc/dovecot/sieve/before.d/10-x.sieve"
GOOD = 'require ["fileinto"];\nif header :is "X-Spam" "Yes" { fileinto "Junk"; }\n'


@pytest.fixture
def fake():
    f = FakeHost()
    for d in ("/etc/dovecot", "/etc/dovecot/sieve", "/etc/dovecot/sieve/before.d"):
        f.dirs[d] = FakeFile(b"", 0o755)
    return f


def test_script_is_compiled_and_a_second_plan_is_empty(fake):
    res = [SieveScript(PATH, GOOD)]
    p = plan(fake, res)
    assert [c.reason for c in p.changes] == ["does not exist"]
    assert apply(fake, p).status is Status.APPLIED
    assert PATH.replace(".sieve", ".svbin") in fake.files
    assert plan(fake, res).empty


def test_missing_or_stale_binary_is_planned_without_a_diff(fake):
    res = [SieveScript(PATH, GOOD)]
    apply(fake, plan(fake, res))
    del fake.files[PATH.replace(".sieve", ".svbin")]
    [c] = plan(fake, res).changes
    assert c.reason == "compiled binary missing or older than the script" and c.diff == ""
    apply(fake, plan(fake, res))
    assert plan(fake, res).empty


def test_a_script_that_does_not_compile_changes_nothing(fake):
    apply(fake, plan(fake, [SieveScript(PATH, GOOD)]))
    before = fake.snapshot()
    fake.checks["sievec"] = lambda f: "script.sieve: line 2: error: unknown command 'fileintoo'."
    result = apply(fake, plan(fake, [SieveScript(PATH, GOOD.replace("fileinto", "fileintoo"))]))
    assert not result.ok and "sievec refused " + PATH in result.error
    assert "unknown command" in result.error
    assert fake.snapshot() == before


def test_sieve_script_names_end_in_sieve():
    with pytest.raises(ValueError, match="ends in .sieve"):
        SieveScript("/etc/dovecot/sieve/x.txt", GOOD)


def test_secret_file_is_read_when_planned_and_never_shown(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("LEARN_PW", "s3cret-value")
    fake.dirs["/etc/mailops"] = FakeFile(b"", 0o755)
    f = SecretFile("/etc/mailops/learn-password", mode="0640", group="vmail",
                   secret_ref="env:LEARN_PW")
    assert "s3cret" not in repr(f)
    [c] = plan(fake, [f]).changes
    assert "s3cret" not in c.diff + c.reason + repr(c)
    apply(fake, plan(fake, [f]))
    assert fake.files["/etc/mailops/learn-password"].content == b"s3cret-value\n"
    assert plan(fake, [f]).empty
    monkeypatch.setenv("LEARN_PW", "rotated")
    [c] = plan(fake, [f]).changes
    assert c.reason == "content differs" and "rotated" not in c.diff
    monkeypatch.delenv("LEARN_PW")
    with pytest.raises(Exception, match="LEARN_PW"):
        plan(fake, [f])


def test_learn_log_and_counters_parse():
    text = ("2026-11-25T21:08:55+0000 ham user=bob@example.test status=200 outcome=learned\n"
            "garbage line\n"
            "2026-11-25T21:09:14+0000 spam user=bob@example.test status=- outcome=failed "
            "detail='controller unreachable: <urlopen error [Errno 111] Connection refused>'\n")
    events = parse_log(text)
    assert [(e.kind, e.outcome) for e in events] == [("ham", "learned"), ("spam", "failed")]
    assert events[1].detail.startswith("controller unreachable")
    assert parse_counters("3\n\n") == {"spam": 3, "ham": 0}
    with pytest.raises(ValueError):
        parse_counters("")


def test_step_follows_the_parameters(root):
    p = load_params(root / "parameters" / "lab.yaml")
    paths = [r.path for r in sieve_step.declare(p, None)]
    assert layout.LEARN_PASSWORD in paths and layout.sieve_layout(p).spam_script in paths
    no_learn = p.model_copy(update={"sieve": p.sieve.model_copy(update={"learn": False})})
    assert [r.path for r in sieve_step.declare(no_learn, None)] == [
        "/etc/dovecot/sieve/before.d/10-spam-to-junk.sieve"]
    no_rspamd = p.model_copy(update={"rspamd": p.rspamd.model_copy(update={"enabled": False})})
    assert not layout.sieve_layout(no_rspamd).learn
    assert all(not isinstance(r, Directory) or r.path != layout.LEARN_DIR
               for r in sieve_step.declare(no_rspamd, None))


def test_doveadm_fetch_output_parses_into_message_hashes():
    import hashlib
    from mailops.remote.restore import parse_fetch
    text = b"Subject: a\n\nline one\nmailbox: not a field\n"
    out = (b"mailbox: INBOX\nguid: g1\ndate.saved: 2026-11-25 21:09:14\ntext:\n" + text
           + b"\x0c\nmailbox: Junk/old\nguid: g2\ndate.saved: 2026-11-25 21:10:00\ntext:\n\x0c\n")
    assert parse_fetch(out) == {
        ("INBOX", "g1"): (hashlib.sha256(text).hexdigest(), "2026-11-25 21:09:14"),
        ("Junk/old", "g2"): (hashlib.sha256(b"").hexdigest(), "2026-11-25 21:10:00")}
    assert parse_fetch(b"") == {}


def test_restore_drill_comparison():
    from mailops.remote.restore import diff
    live = {("INBOX", "g1"): ("h1", "2026-11-01 10:00:00"),
            ("INBOX", "g2"): ("h2", "2026-11-01 10:00:00"),
            ("Junk", "g3"): ("h3", "2026-11-03 10:00:00")}       # saved after the archive
    restored = {("INBOX", "g1"): ("h1", "x"), ("INBOX", "g2"): ("h2", "x"),
                ("Trash", "g9"): ("h9", "x")}                     # deleted since
    d = diff(live, restored, "2026-11-02 00:00:00")
    assert (d["identical"], d["differ"], d["missing_from_backup"]) == (2, [], [])
    assert d["newer_than_backup"] == 1 and d["deleted_since_backup"] == [["Trash", "g9"]]
    changed = {**live, ("INBOX", "g2"): ("other", "2026-11-01 10:00:00")}
    lost = {k: v for k, v in restored.items() if k != ("INBOX", "g1")}
    assert diff(changed, restored, "2026-11-02 00:00:00")["differ"] == [["INBOX", "g2"]]
    assert diff(live, lost, "2026-11-02 00:00:00")["missing_from_backup"] == [["INBOX", "g1"]]
    # saved in the second the archive started (under mail, after borg read INBOX): newer
    d = diff(live, lost, "2026-11-01 10:00:00")
    assert d["missing_from_backup"] == [] and d["newer_than_backup"] == 2
    assert diff(live, lost, "2026-11-01 10:00:01")["missing_from_backup"] == [["INBOX", "g1"]]


def test_validated_file_refuses_a_bad_candidate_and_keeps_the_old(tmp_path):
    from mailops.core.host import CommandError, LocalHost
    from mailops.core.resources.files import ValidatedFile
    check = ("python3", "-c", "import sys, json; json.load(open(sys.argv[1]))", "{}")
    p = tmp_path / "c.json"
    p.write_text('{"old": 1}\n')
    ValidatedFile(str(p), '{"new": 1}\n', validate=check).apply(LocalHost(), None)
    assert p.read_text() == '{"new": 1}\n'
    with pytest.raises(CommandError, match="refused the new " + str(p)):
        ValidatedFile(str(p), '{"new": \n', validate=check).apply(LocalHost(), None)
    assert p.read_text() == '{"new": 1}\n' and [x.name for x in tmp_path.iterdir()] == ["c.json"]
    plain = tmp_path / "conf.d" / "mailops"          # no extension, a dot in the directory
    plain.parent.mkdir()
    ValidatedFile(str(plain), '{"x": 1}\n', validate=check).apply(LocalHost(), None)
    assert plain.read_text() == '{"x": 1}\n'
    with pytest.raises(ValueError, match="validator must name the file"):
        ValidatedFile(str(p), "x", validate=("true",))


def _info(version, init="sysv", **packages):
    from mailops.core.facts import HostInfo
    return HostInfo("debian", version, "", "", init, "", "mx1", 1, 1, 1, 1, packages)


def test_borgmatic_format_follows_the_installed_version(root):
    from mailops.core.facts import borgmatic_series
    from mailops.provision.steps.backup import declare, flat
    assert borgmatic_series(_info("12")) == "1.7" and not flat("1.7")
    assert borgmatic_series(_info("13")) == "1.9" and flat("1.9")
    assert borgmatic_series(_info("12", borgmatic="1.8.2-1~bpo12+1")) == "1.8"
    p = load_params(root / "parameters" / "lab.yaml")
    conf = {getattr(r, "path", None): r for r in declare(p, _info("12"))}["/etc/borgmatic/config.yaml"]
    assert b"location:" in conf.content and conf.validate[0] == "validate-borgmatic-config"
    conf = {getattr(r, "path", None): r for r in declare(p, _info("13"))}["/etc/borgmatic/config.yaml"]
    assert b"location:" not in conf.content and conf.validate[:3] == ("borgmatic", "config",
                                                                      "validate")
    cron = {getattr(r, "path", None) for r in declare(p, _info("12"))}
    timer = {getattr(r, "path", None) for r in declare(p, _info("12", init="systemd"))}
    assert "/etc/cron.d/mailops-backup" in cron and "/etc/systemd/system/mailops-backup.timer" in timer


def test_sshd_jail_only_where_sshd_has_a_log(root):
    from mailops.provision.steps.fail2ban import declare, jails
    p = load_params(root / "parameters" / "lab.yaml")
    assert "sshd" not in jails(p, _info("12"))
    assert jails(p, _info("13", init="systemd"))[0] == "sshd"
    jail = {getattr(r, "path", None): r for r in declare(p, _info("13", init="systemd"))}["/etc/fail2ban/jail.local"]
    assert b"[sshd]\nenabled = true\nbackend = systemd" in jail.content
    off = p.model_copy(update={"fail2ban": p.fail2ban.model_copy(update={"sshd": "off"})})
    assert "sshd" not in jails(off, _info("13", init="systemd"))


def test_backup_parameters_are_checked(root):
    import yaml
    from mailops.core.params import ParamsError, parse_params
    data = yaml.safe_load((root / "parameters" / "lab.yaml").read_text())
    data["backup"]["repository"] = "ssh://borg@host/srv/borg/x; rm -rf /"
    data["backup"]["passphrase"] = None
    data["fail2ban"]["dbpurgeage_days"] = 30
    with pytest.raises(ParamsError) as exc:
        parse_params(data, "lab.yaml", root / "parameters")
    text = str(exc.value)
    assert "backup.repository" in text and "dbpurgeage_days" in text


def test_learn_summary_on_a_host_without_learning_says_so():
    from mailops.provision.learning import summary
    fake = FakeHost()
    s = summary(fake)              # redis-cli is unknown to the fake: as on a fresh host
    assert s.counts is None and "not set up yet" in str(s) and "not set up" in s._repr_html_()
    fake.packages["redis-server"] = "5:7.0"
    fake.redis.update(learns_spam=3, learns_ham=1)
    fake.files["/var/log/mailops/learn.log"] = FakeFile(
        b"2026-11-25T21:08:55+0000 ham user=bob@example.test status=200 outcome=learned\n")
    s = summary(fake)
    assert s.counts == {"spam": 3, "ham": 1} and len(s.events) == 1
    assert "learned spam 3, ham 1; last 1 learn calls, 0 failed" == str(s)


def test_restored_mailbox_keeps_its_owners_across_filesystems(tmp_path):
    """A restored mailbox moved across filesystems keeps each file's owner
    (shutil.move copied it as root, and dovecot could not read it)."""
    import os
    import pathlib
    import tempfile
    from mailops.remote import restore
    shm = pathlib.Path(tempfile.mkdtemp(dir="/dev/shm"))
    if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        raise AssertionError("this test needs /dev/shm and the temp dir on two filesystems")
    src = shm / "alice"
    (src / "mdbox" / "storage").mkdir(parents=True)
    (src / "mdbox" / "storage" / "m.1").write_bytes(b"mail")
    for p in [src, src / "mdbox", src / "mdbox" / "storage", src / "mdbox" / "storage" / "m.1"]:
        os.lchown(p, 5000, 5000)
    restore.move_into_place(str(src), str(tmp_path / "alice"))
    moved = [tmp_path / "alice", tmp_path / "alice" / "mdbox" / "storage" / "m.1"]
    assert [(os.stat(p).st_uid, os.stat(p).st_gid) for p in moved] == [(5000, 5000)] * 2
    assert not src.exists() and moved[1].read_bytes() == b"mail"
    shm.rmdir()


def test_daily_jobs_are_timers_under_systemd_and_cron_otherwise():
    from mailops.provision.steps.shared import Job, scheduled
    job = Job("purge", "mailops mdbox purge", "/usr/local/sbin/mailops-purge", "04:07")
    cron = {r.key: r for r in scheduled(job, _info("12"))}
    assert "7 4 * * * root /usr/local/sbin/mailops-purge" in cron["/etc/cron.d/mailops-purge"].content.decode()
    sd = {r.key: r for r in scheduled(job, _info("12", init="systemd"))}
    assert "OnCalendar=*-*-* 04:07:00" in sd["/etc/systemd/system/mailops-purge.timer"].content.decode()
    assert "ExecStart=/usr/local/sbin/mailops-purge" in \
        sd["/etc/systemd/system/mailops-purge.service"].content.decode()
    assert sd["mailops-purge.timer"].start


def test_sshd_key_only_only_over_a_key_based_connection(root):
    from mailops.core.params import load_params
    from mailops.provision.steps import base
    p = load_params(root / "parameters" / "lab.yaml")
    keys = lambda q: {r.key for r in base.declare(q, _info("12"))}  # noqa: E731
    assert "/etc/ssh/sshd_config.d/05-mailops.conf" in keys(p) and "ssh" in keys(p)
    local = p.model_copy(update={"target": "local://", "ssh": None})
    assert "/etc/ssh/sshd_config.d/05-mailops.conf" not in keys(local)       # no lock-out
    off = p.model_copy(update={"sshd": p.sshd.model_copy(update={"key_only": False})})
    assert "ssh" not in keys(off)
    on = {r.key: r for r in base.declare(p, _info("12"))}
    assert "Unattended-Upgrade \"1\"" in on["/etc/apt/apt.conf.d/20auto-upgrades"].content.decode()
    assert "unattended-upgrades" in on and "unattended-upgrades" not in {
        r.key for r in base.declare(p.model_copy(update={"updates": p.updates.model_copy(
            update={"unattended": False})}), _info("12"))}
    nosec = p.model_copy(update={"updates": p.updates.model_copy(update={"unattended": False})})
    assert "Unattended-Upgrade \"0\"" in {r.key: r for r in base.declare(nosec, _info("12"))}[
        "/etc/apt/apt.conf.d/20auto-upgrades"].content.decode()
    sd = {r.key: r for r in base.declare(p, _info("12", init="systemd"))}
    assert "systemctl enable" in " ".join(sd["nftables"].start)    # the firewall at boot


def test_borg_key_copy_is_made_0600_and_refused_when_readable_by_others(tmp_path):
    import os
    from support.fakehost import FakeHost
    from mailops.core.resources import Action
    from mailops.core.resources.borg import BorgKeyCopy, read_key_copy
    path = tmp_path / "keys" / "borg-key.mx1"
    r = BorgKeyCopy(path)
    [change] = r.compare({r.key: read_key_copy(path)})
    assert change.action is Action.CREATE and "no copy" in change.reason
    r.apply(FakeHost(), change)
    assert path.stat().st_mode & 0o777 == 0o600 and r.compare({r.key: read_key_copy(path)}) == []
    os.chmod(path, 0o644)
    assert "readable by others" in read_key_copy(path)
    path.write_bytes(b"garbage")
    os.chmod(path, 0o600)
    assert "not a borg key export" in read_key_copy(path)
