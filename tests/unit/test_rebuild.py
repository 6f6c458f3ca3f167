"""`mailops rebuild` against the fake host: its phases in order, each refusal before
anything of the archive is placed (a host that holds mail, an archive too old, a key
copy that is not the repository's), a dry run that writes nothing, and a rebuild cut
off after its extract finished by the next run.  The helper that runs on the server
is tested on local files here too."""
from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

import pytest

from support.fakehost import FakeFile, FakeHost
from mailops.core.layout import BACKUP, VHOSTS
from mailops.core.resources.maildb import DB_PATH
from mailops.provision import rebuild as rb
from mailops.provision.runner import RunSummary, StepRecord
from test_steps_fake import params  # noqa: F401  (fixture)

KEY = b"BORG_KEY 0123abcd\nfakekeyfakekey\n"      # what the fake's `borg key export` says


class Runner:
    """Stands in for the runner (which runs notebooks over a real connection): records
    each provision asked for and answers as told."""

    def __init__(self, fail_at: str | None = None, changes: int = 0):
        self.calls: list[dict] = []
        self.fail_at, self.changes = fail_at, changes

    def __call__(self, **kw) -> RunSummary:
        self.calls.append(kw)
        step = StepRecord(self.fail_at or "90-verify", "failed" if self.fail_at else "verified",
                          self.changes, None, 0.1, "boom" if self.fail_at else None)
        return RunSummary(Path("/tmp/run"), "p.yaml", "fake://mx1", True, (step,), 0.1)


@pytest.fixture
def ready(params):      # noqa: F811
    """A fresh fake host, a repository with an archive, this machine's key copy."""
    fake = FakeHost()
    fake.borg_archives.append("mx1-2026-12-07T03:17:00")
    copy = params.path(params.backup.key_copy)
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(KEY)
    os.chmod(copy, 0o600)
    return params, fake


def test_a_rebuild_runs_its_phases_in_order_and_converges(ready):
    params, fake = ready
    runner = Runner()
    report = rb.rebuild(params, host=fake, provision=runner, log=lambda m: None)
    assert report.ok, report.error
    assert [n for n, _, _ in report.phases] == ["survey", "access", "archive", "extract",
                                                  "provision", "state", "verify"]
    assert report.archive == "mx1-2026-12-07T03:17:00" and report.archive_age_hours == 2.0
    assert fake.rebuild_calls == ["choose", "extract", "state"]
    # provisioned twice: the state in place first, then again with verify, nothing left
    assert [c["verify"] for c in runner.calls] == [False, True] and report.last_changes == 0
    assert "90-verify" not in runner.calls[0]["only"] and "80-backup" in runner.calls[0]["only"]
    assert runner.calls[1]["only"] is None
    # borg and the credentials came first, with the modes 80-backup gives them
    assert "borgbackup" in fake.packages
    assert fake.files[BACKUP.passphrase].mode == 0o600
    assert fake.files[BACKUP.ssh_key].mode == 0o600
    assert "vmail" in fake.users and "postfix" in fake.groups
    db = fake.files[DB_PATH]
    assert (db.owner, db.group, db.mode) == ("root", "postfix", 0o640)
    assert json.loads(fake.files[rb.MARKER].content)["phase"] == "done"


def test_a_host_that_holds_mail_is_refused_and_left_as_it_was(ready):
    params, fake = ready
    fake.files[f"{VHOSTS}/example.com/jane/mdbox/storage/m.1"] = FakeFile(b"mail", 0o600)
    before = fake.snapshot()
    runner = Runner()
    with pytest.raises(rb.RebuildError, match="holds mail already .* never overwrites"):
        rb.rebuild(params, host=fake, provision=runner, log=lambda m: None)
    assert fake.snapshot() == before and runner.calls == [] and fake.rebuild_calls == []


def test_a_users_database_alone_is_a_server_too(ready):
    params, fake = ready
    fake.files[DB_PATH] = FakeFile(b"users", 0o640)
    with pytest.raises(rb.RebuildError, match="a users database"):
        rb.rebuild(params, host=fake, provision=Runner(), log=lambda m: None)


def test_an_archive_older_than_the_limit_is_refused_before_anything_is_placed(ready):
    params, fake = ready
    fake.borg_archive_age_hours = 49.0
    runner = Runner()
    with pytest.raises(rb.RebuildError, match="49.0 h old, older than backup.rebuild_max_age_hours"):
        rb.rebuild(params, host=fake, provision=runner, log=lambda m: None)
    assert fake.rebuild_calls == ["choose"] and DB_PATH not in fake.files and runner.calls == []
    # accepted on purpose
    report = rb.rebuild(params, host=fake, provision=runner, log=lambda m: None,
                        max_age_hours=72)
    assert report.ok and report.archive_age_hours == 49.0


def test_a_key_copy_that_is_not_the_repository_key_is_refused(ready):
    params, fake = ready
    params.path(params.backup.key_copy).write_bytes(b"BORG_KEY ffff\nanother repository\n")
    runner = Runner()
    with pytest.raises(rb.RebuildError, match="the key copy does not open the repository"):
        rb.rebuild(params, host=fake, provision=runner, log=lambda m: None)
    assert "extract" not in fake.rebuild_calls and runner.calls == []


def test_a_dry_run_on_a_fresh_host_writes_nothing(ready):
    params, fake = ready
    before = fake.snapshot()
    report = rb.rebuild(params, host=fake, provision=Runner(), dry_run=True, log=lambda m: None)
    assert report.ok and report.dry_run and fake.snapshot() == before
    assert [n for n, _, _ in report.phases] == ["survey", "access"]
    assert "would make" in report.phases[1][2]


def test_a_failed_provision_says_what_to_run_and_the_next_run_finishes(ready):
    params, fake = ready
    report = rb.rebuild(params, host=fake, provision=Runner(fail_at="50-postfix"),
                        log=lambda m: None)
    assert not report.ok and "50-postfix failed: boom" in report.error
    assert "run `mailops rebuild" in report.error
    assert json.loads(fake.files[rb.MARKER].content)["phase"] == "extracted"
    with pytest.raises(Exception, match="rebuild: 50-postfix failed"):
        report.raise_for_status()
    # the host now holds the archive's mail, yet the rebuild it belongs to goes on
    fake.rebuild_calls.clear()
    runner = Runner()
    again = rb.rebuild(params, host=fake, provision=runner, log=lambda m: None)
    assert again.ok and again.archive == report.archive
    assert fake.rebuild_calls == ["own", "state"] and len(runner.calls) == 2
    # and once done, the rebuilt server is a server: refused
    with pytest.raises(rb.RebuildError, match="holds mail already"):
        rb.rebuild(params, host=fake, provision=runner, log=lambda m: None)


def test_survey_output_is_parsed():
    assert rb.parse_survey("files 3\nusers-db\nmarker {\"archive\": \"a\", \"phase\": \"x\"}\n") \
        == {"files": 3, "users_db": True, "marker": {"archive": "a", "phase": "x"}}
    assert rb.parse_survey("files 0\n") == {"files": 0, "users_db": False, "marker": None}
    assert rb.parse_survey("files 0\nmarker {broken\n")["marker"] == {"phase": "unreadable"}


# -- the helper on the server, on local files ---------------------------------------

@pytest.fixture
def helper(tmp_path, monkeypatch):
    mod = runpy.run_path(str(Path(rb.__file__).parents[1] / "remote" / "rebuild.py"))
    borg = tmp_path / "borg"
    borg.write_text("#!/bin/sh\ncat \"$(dirname \"$0\")/listing.json\"\n")
    borg.chmod(0o755)
    mod["choose"].__globals__["BORG"] = str(borg)
    return mod, tmp_path


def test_the_helper_ages_the_archive_by_the_host_clock(helper):
    mod, tmp = helper
    import datetime
    made = (datetime.datetime.now() - datetime.timedelta(hours=30)).isoformat()
    (tmp / "listing.json").write_text(json.dumps({"archives": [
        {"name": "old", "time": "2020-01-01T00:00:00.000000"}, {"name": "new", "time": made}]}))
    latest = mod["choose"]({"archive": ""})
    assert latest["archive"] == "new" and 29.9 < latest["age_hours"] < 30.1
    assert mod["choose"]({"archive": "old"})["age_hours"] > 24 * 365
    with pytest.raises(SystemExit, match="no archive 'gone'"):
        mod["choose"]({"archive": "gone"})


def test_the_helper_refuses_to_extract_over_mail(helper):
    mod, tmp = helper
    vhosts = tmp / "vhosts"
    (vhosts / "example.com" / "jane").mkdir(parents=True)
    (vhosts / "example.com" / "jane" / "m.1").write_text("mail")
    req = {"vhosts": str(vhosts), "users_db": str(tmp / "users.sqlite"), "archive": "a",
           "marker": str(tmp / "rebuild.json")}
    with pytest.raises(SystemExit, match="this host holds mail .* never overwrites"):
        mod["refuse_if_not_empty"](req)
    # an extract of the same archive that was cut off may run again; another may not
    mod["marker"](req, "extracting")
    mod["refuse_if_not_empty"](req)
    with pytest.raises(SystemExit, match="holds mail"):
        mod["refuse_if_not_empty"](dict(req, archive="b"))
    assert json.loads((tmp / "rebuild.json").read_text()) == {"archive": "a",
                                                              "phase": "extracting"}
    assert (tmp / "rebuild.json").stat().st_mode & 0o777 == 0o600


def test_the_helper_takes_borg_warnings_in_an_extract_but_not_errors(helper):
    mod, tmp = helper
    warn = tmp / "warn"
    warn.write_text("#!/bin/sh\necho 'Include pattern never matched' >&2; exit 1\n")
    warn.chmod(0o755)
    assert mod["run"]([str(warn)], warnings_ok=True) == b""
    with pytest.raises(SystemExit, match="exited 1: Include pattern never matched"):
        mod["run"]([str(warn)])
    fail = tmp / "fail"
    fail.write_text("#!/bin/sh\necho 'Repository does not exist' >&2; exit 2\n")
    fail.chmod(0o755)
    with pytest.raises(SystemExit, match="exited 2"):
        mod["run"]([str(fail)], warnings_ok=True)


def test_the_restored_backup_record_is_one_the_repository_state_check_trusts(helper):
    mod, tmp = helper
    (tmp / "listing.json").write_text(json.dumps({"archives": [
        {"name": "mx1-a", "start": "2026-12-07T03:17:00.000000",
         "end": "2026-12-07T03:18:30.000000"}]}))
    state = tmp / "backup-last.json"
    mod["record_backup"]({"archive": "mx1-a", "state": str(state)})
    text = state.read_text()
    rec = json.loads(text)
    assert rec["end"] - rec["start"] == 90 and rec["restored_from"] == "mx1-a"
    assert text.rstrip().endswith('"exit": 0}')      # what borg_repo_state greps for


def test_the_helper_counts_the_mailboxes_of_a_real_users_database(helper, tmp_path):
    """The users database as the users-database helper makes it: its mailboxes count."""
    mod, _ = helper
    import sqlite3
    db = tmp_path / "users.sqlite"
    from mailops.remote import source
    userdb: dict = {}
    exec(compile(source("userdb").rsplit("\nmain()", 1)[0], "userdb.py", "exec"), userdb)
    con = sqlite3.connect(db)
    for version in sorted(userdb["MIGRATIONS"]):
        con.executescript(userdb["MIGRATIONS"][version])
    con.execute("INSERT INTO domains (name) VALUES ('lab.test')")
    con.execute("INSERT INTO mailboxes (address, password, domain, local_part) VALUES "
                "('a@lab.test', '{X}h', 'lab.test', 'a')")
    con.commit()
    con.close()
    assert mod["mailboxes"](str(db)) == 1
    assert mod["mailboxes"](str(tmp_path / "none.sqlite")) is None


def test_a_repository_the_credentials_cannot_read_is_a_clear_refusal(ready, monkeypatch):
    params, fake = ready
    monkeypatch.setattr(fake, "_cmd_mailops_borg",
                        lambda a, stdin: (2, b"", b"Repository does not exist.\n"))
    runner = Runner()
    with pytest.raises(rb.RebuildError, match="cannot be read with the backup credentials"):
        rb.rebuild(params, host=fake, provision=runner, log=lambda m: None)
    assert "extract" not in fake.rebuild_calls and runner.calls == []
