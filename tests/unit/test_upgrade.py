"""The upgrade's pure parts: the simulated package changes, the refusals, the facts the
host will have."""
import dataclasses

import pytest

from mailops.core.facts import dovecot_series
from mailops.provision import upgrade

SIM = """NOTE: This is only a simulation!
Inst dovecot-core [1:2.3.19.1+dfsg1-2.1+deb12u1] (1:2.4.1+dfsg1-6 Debian:13.2/stable [amd64])
Inst libfoo2 (2.0-1 Debian:13.2/stable [amd64])
Remv libfoo1 [1.0-3]
Conf dovecot-core (1:2.4.1+dfsg1-6 Debian:13.2/stable [amd64])
Inst python3:amd64 [3.11.2-1+b1] (3.13.5-1 Debian:13.2/stable [amd64])
"""


def test_the_simulation_names_every_package_that_changes_and_nothing_else():
    assert upgrade.parse_simulation(SIM) == [
        {"package": "dovecot-core", "from": "1:2.3.19.1+dfsg1-2.1+deb12u1",
         "to": "1:2.4.1+dfsg1-6"},
        {"package": "libfoo2", "from": None, "to": "2.0-1"},
        {"package": "libfoo1", "from": "1.0-3", "to": None},
        {"package": "python3", "from": "3.11.2-1+b1", "to": "3.13.5-1"}]


@dataclasses.dataclass(frozen=True)
class Info:
    os_id: str = "debian"
    os_version: str = "12"
    codename: str = "bookworm"
    pretty_name: str = "Debian GNU/Linux 12 (bookworm)"
    packages: dict = dataclasses.field(default_factory=lambda: {
        "dovecot-core": "1:2.3.19.1+dfsg1-2.1+deb12u1", "libfoo1": "1.0-3"})


def test_the_future_facts_are_the_new_release_with_its_dovecot():
    ahead = upgrade.future_info(Info(), "trixie", upgrade.parse_simulation(SIM))
    assert (ahead.os_version, ahead.codename) == ("13", "trixie")
    assert dovecot_series(ahead) == "2.4" and dovecot_series(Info()) == "2.3"
    assert "libfoo1" not in ahead.packages and ahead.packages["libfoo2"] == "2.0-1"


@pytest.mark.parametrize("info, words", [
    (Info(os_id="ubuntu", os_version="24.04", codename="noble",
          pretty_name="Ubuntu 24.04 LTS"), "is not Debian"),
    (Info(os_version="13", codename="trixie", pretty_name="Debian GNU/Linux 13 (trixie)"),
     "already trixie"),
    (Info(os_version="11", codename="bullseye", pretty_name="Debian GNU/Linux 11 (bullseye)"),
     "cannot go to trixie in one step"),
])
def test_a_host_that_cannot_take_the_upgrade_is_refused_saying_why(info, words):
    why = upgrade.refusal(info, "trixie", None)
    assert why is not None and words in why and "nothing was changed" in why


def test_a_debian_12_host_is_taken_and_an_upgrade_under_way_is_finished():
    assert upgrade.refusal(Info(), "trixie", None) is None
    on13 = Info(os_version="13", codename="trixie")
    assert upgrade.refusal(on13, "trixie", {"phase": "packages"}) is None
    assert "already" in upgrade.refusal(on13, "trixie", {"phase": "done"})


# ---- the upgrade against the fake host ---------------------------------------------

from types import SimpleNamespace

from support.fakehost import FakeFile, FakeHost
from test_rebuild import Runner
from test_steps_fake import converge, params  # noqa: F401,E402  (params: a fixture)

SOURCES = b"deb http://deb.debian.org/debian bookworm main\n" \
          b"deb http://security.debian.org/debian-security bookworm-security main\n"
CONF = "/etc/dovecot/dovecot.conf"
GREEN = SimpleNamespace(ok=True, checks=[SimpleNamespace(name="smtp", ok=True)])
RED = SimpleNamespace(ok=False, checks=[SimpleNamespace(name="imaps login", ok=False)])


@pytest.fixture
def server(params, monkeypatch):  # noqa: F811
    """A converged Debian 12 server on the fake host, its backup drill passing."""
    fake = FakeHost()
    converge(params, fake)
    fake.files["/etc/apt/sources.list"] = FakeFile(SOURCES)
    fake.files["/var/mail/vhosts/example.com/jane/sieve/a.svbin"] = FakeFile(b"svbin 2.3")
    drills = []
    monkeypatch.setattr(upgrade.backups, "drill", lambda s: drills.append(1) or SimpleNamespace(
        ok=True, archive="mx1-before-upgrade", messages=12, differences=0, key_copy="ok"))
    return params, fake, drills


def run(server, runner=None, verify=GREEN, **kw):
    p, fake, _ = server
    return upgrade.upgrade(p, host=fake, provision=runner or Runner(),
                           verify=lambda: verify, log=lambda m: None, poll_s=0, **kw)


def marker(fake) -> dict:
    import json
    return json.loads(fake.files[upgrade.MARKER].content)


def test_a_dry_run_shows_the_package_changes_and_the_2_4_config_and_writes_nothing(server):
    _, fake, drills = server
    before = fake.snapshot()
    report = run(server, dry_run=True)
    assert report.ok and [n for n, _, _ in report.phases] == ["survey", "plan"]
    assert fake.snapshot() == before and fake.upgrade_calls == [] and drills == []
    assert {"package": "dovecot-core", "from": "1:2.3.19.1+dfsg1-2.1+deb12u1",
            "to": "1:2.4.1+dfsg1-6+deb13u2"} in report.packages
    assert "+dovecot_config_version = 2.4.0" in report.config_diffs[CONF]


class Watching(Runner):
    """A runner that notes whether the stand-in answered when each provision began."""

    def __init__(self, fake, **kw):
        super().__init__(**kw)
        self.fake, self.stand_in = fake, []

    def __call__(self, **kw):
        self.stand_in.append(self.fake.stand_in)
        return super().__call__(**kw)


def test_an_upgrade_writes_dovecot_2_4_before_its_package_moves_and_ends_verified(server):
    _, fake, drills = server
    runner = Watching(fake)
    report = run(server, runner)
    assert report.ok, report.error
    assert [n for n, _, _ in report.phases] == ["survey", "plan", "verify", "backup", "stop",
                                                  "sources", "packages", "provision", "verify"]
    assert drills == [1] and len(fake.borg_archives) >= 2          # a fresh backup, drilled
    assert fake.upgrade_calls[:3] == ["defer-start", "sources", "apt-status"]
    assert "apt-start" in fake.upgrade_calls and fake.upgrade_calls[-1] == "defer-stop"
    # when the packages started to move: dovecot's 2.4 file in place, no service may start
    assert b"dovecot_config_version = 2.4.0" in fake.upgrade_seen[CONF]
    assert b"exit 101" in fake.upgrade_seen["policy"]
    assert b"trixie" in fake.files["/etc/apt/sources.list"].content
    assert not any(p.endswith(".svbin") for p in fake.files)       # compiled anew
    # every step provisioned for 13 without verify, the stand-in answering until postfix's
    # step, then all again with verify: 0 left
    assert [c["verify"] for c in runner.calls] == [False, False, True]
    assert report.last_changes == 0 and runner.stand_in == [True, False, False]
    assert "50-postfix" not in runner.calls[0]["only"] and "40-dovecot" in runner.calls[0]["only"]
    assert runner.calls[1]["only"][0] == "50-postfix" and "90-verify" not in runner.calls[1]["only"]
    assert marker(fake)["phase"] == "done" and not fake.stand_in
    assert fake.queue_flushed == 1             # what was deferred meanwhile goes out now
    assert report.window == {"answered": 3, "first_421": 1000.0, "last_421": 1042.5,
                             "seconds": 42.5}


def test_verify_not_green_refuses_before_anything_changes(server):
    _, fake, drills = server
    before = fake.snapshot()
    with pytest.raises(upgrade.UpgradeError, match="verify is not green .*imaps login"):
        run(server, verify=RED)
    assert fake.snapshot() == before and fake.upgrade_calls == [] and drills == []


@pytest.mark.parametrize("release, words", [
    (b'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n'
     b'VERSION_CODENAME=trixie\n', "already trixie"),
    (b'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\nVERSION_ID="24.04"\n'
     b'VERSION_CODENAME=noble\n', "is not Debian")])
def test_a_host_not_on_debian_12_is_refused_with_nothing_changed(server, release, words):
    _, fake, _ = server
    fake.files["/etc/os-release"] = FakeFile(release)
    before = fake.snapshot()
    with pytest.raises(upgrade.UpgradeError, match=words):
        run(server)
    assert fake.snapshot() == before and fake.upgrade_calls == []


def test_packages_that_fail_before_any_moved_put_everything_back(server):
    _, fake, _ = server
    conf = fake.files[CONF].content
    fake.upgrade_apt = "before"
    runner = Runner()
    report = run(server, runner)
    assert not report.ok and "failed before any package changed" in report.error
    assert "dpkg returned an error code" in report.error and "--to trixie` again" in report.error
    assert fake.files["/etc/apt/sources.list"].content == SOURCES
    assert fake.files[CONF].content == conf                    # the 2.3 file is back
    assert marker(fake)["phase"] == "rolled-back" and not fake.stand_in
    assert [c["tag"] for c in runner.calls] == ["upgrade-rollback"]   # daemons started again


def test_packages_that_fail_after_some_moved_keep_the_stand_in_and_the_next_run_goes_on(server):
    _, fake, _ = server
    fake.upgrade_apt = "after"
    report = run(server)
    assert not report.ok and "no way back" in report.error and "--to trixie` again" in report.error
    assert marker(fake)["phase"] == "packages-failed" and fake.stand_in
    assert all(not fake.services[d]["active"] for d in ("postfix", "dovecot", "rspamd"))
    fake.upgrade_apt = "ok"                                     # the operator fixed it
    again = run(server)
    assert again.ok, again.error
    assert "stopped at packages-failed" in again.phases[0][2]
    assert [n for n, _, _ in again.phases] == ["survey", "packages", "provision", "verify"]
    assert marker(fake)["phase"] == "done" and not fake.stand_in


def test_a_provision_that_fails_on_13_keeps_the_stand_in_until_the_next_run_finishes(server):
    _, fake, _ = server
    report = run(server, Runner(fail_at="40-dovecot"))
    assert not report.ok and report.error.startswith("on trixie now, 40-dovecot failed: boom")
    assert marker(fake)["phase"] == "provision-failed" and fake.stand_in
    assert not fake.services["dovecot"]["active"]
    before = fake.snapshot()                                   # a dry run meanwhile: reads only
    dry = run(server, dry_run=True)
    assert dry.ok and "stopped at provision-failed" in dry.phases[0][2]
    assert fake.snapshot() == before
    again = run(server)
    assert again.ok, again.error
    assert [n for n, _, _ in again.phases] == ["survey", "provision", "verify"]
    assert marker(fake)["phase"] == "done" and not fake.stand_in


# ---- the helper that runs on the server, on local files -----------------------------

def helper():
    import runpy
    from pathlib import Path as P
    return runpy.run_path(str(P(upgrade.__file__).parents[1] / "remote" / "upgrade.py"))


def test_the_package_job_runs_detached_and_is_seen_running_until_it_ends(tmp_path):
    import time
    h = helper()
    req = {"log": str(tmp_path / "apt.log"), "rc": str(tmp_path / "apt.rc"),
           "pidfile": str(tmp_path / "apt.pid"), "script_path": str(tmp_path / "apt.sh"),
           "script": "echo moving; sleep 2; echo moved\n"}
    assert h["apt_start"](req)["started"]
    time.sleep(0.5)
    assert h["apt_status"](req)["running"]                 # the job's own pid, alive
    assert not h["apt_start"](req)["started"]              # never a second job beside it
    for _ in range(100):
        st = h["apt_status"](req)
        if st["rc"] is not None:
            break
        time.sleep(0.05)
    assert st == {"running": False, "rc": 0, "tail": "moving\nmoved\n"}


def test_the_sources_move_to_the_next_codename_and_come_back(tmp_path, monkeypatch):
    h = helper()
    src = tmp_path / "sources.list"
    src.write_text("deb http://deb.debian.org/debian bookworm main\n"
                   "deb http://deb.debian.org/debian bookworm-updates main\n"
                   "deb http://security.debian.org/debian-security bookworm-security main\n"
                   "# bookwormish stays\n")
    before = src.read_text()
    monkeypatch.setitem(h["sources"].__globals__, "source_files", lambda: [str(src)])
    keep = tmp_path / "keep"
    assert h["sources"]({"from": "bookworm", "to": "trixie", "keep_dir": str(keep)}) == {
        "changed": [str(src)]}
    assert src.read_text() == before.replace("bookworm ", "trixie ").replace(
        "bookworm-", "trixie-")
    assert h["sources"]({"from": "bookworm", "to": "trixie", "keep_dir": str(keep)}) == {
        "changed": []}                                     # a second run: already moved
    h["sources_restore"]({"keep_dir": str(keep)})
    assert src.read_text() == before
