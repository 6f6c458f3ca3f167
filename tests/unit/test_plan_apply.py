"""plan reads only, apply does exactly what plan listed, a second plan is empty,
diffs are right, a failed config check restores the previous files and reloads
nothing — all against the fake host."""
import dataclasses

import pytest

from support.fakehost import READ_ONLY, FakeFile, FakeHost, UnexpectedCommand
from mailops.core.params import load_params
from mailops.core.plan import Status, apply, plan
from mailops.core.resources import Action, Directory, File, Group, Service, User
from mailops.provision.session import Session


@pytest.fixture
def params(root):
    return load_params(root / "parameters" / "example.yaml")


@pytest.fixture
def fake():
    return FakeHost()


def converged(params, fake):
    s = Session(params, host=fake)
    result = s.apply(s.plan("10-base"))
    assert result.status is Status.APPLIED, result
    fake.commands.clear()
    fake.round_trips = 0
    return s


def test_plan_reads_only_in_one_round_trip(params, fake):
    s = Session(params, host=fake)
    s.info  # host facts: one round trip of their own
    before = fake.snapshot()
    fake.round_trips = 0
    fake.commands.clear()
    p = s.plan("10-base")
    assert fake.snapshot() == before
    assert fake.round_trips == 1
    assert set(fake.command_names()) <= READ_ONLY, fake.command_names()
    assert p.changes and p.status is Status.PLANNED


def test_apply_does_only_what_plan_listed_and_second_plan_is_empty(params, fake):
    s = Session(params, host=fake)
    p = s.plan("10-base")
    fake.commands.clear()
    result = s.apply(p)
    assert result.ok and result.applied == p.changes
    writes = [c[4] for c in fake.commands if len(c) > 3 and c[3] in ("write_file",
                                                                      "validated_write")]
    planned_files = [c.target.split(" ", 1)[1] for c in p.changes if c.resource.kind == "file"]
    assert writes == planned_files
    started = [c[5] for c in fake.commands if len(c) > 3 and c[3] == "service_ctl"]
    assert started == ["cron", "unbound", "ssh"]     # cron: logrotate's runs (no systemd here)
    assert fake.hostname == "mx1.example.com" and fake.nft_loaded
    again = s.plan("10-base")
    assert again.empty, str(again)


def test_dry_run_changes_nothing(params, fake):
    s = Session(params, host=fake)
    before = fake.snapshot()
    result = s.apply(s.plan("10-base"), dry_run=True)
    assert fake.snapshot() == before
    assert result.status is Status.PLANNED and result.pending and not result.applied


def test_changed_parameter_gives_diff_and_one_reload(params, fake):
    converged(params, fake)
    changed = params.model_copy(update={"mail_domains": ["example.com"]})
    changed_lab = changed.model_copy(update={"resolver": changed.resolver.model_copy(
        update={"mode": "lab"})})
    p = Session(changed_lab, host=fake).plan("10-base")
    targets = {c.target: c for c in p.changes}
    conf = targets["file /etc/unbound/unbound.conf"]
    assert conf.action is Action.UPDATE
    assert "+    module-config: \"iterator\"\n" in conf.diff
    assert "-    module-config: \"validator iterator\"\n" in conf.diff
    assert conf.diff.startswith("--- /etc/unbound/unbound.conf\n+++ /etc/unbound/unbound.conf\n")
    reloads = [c for c in p.changes if c.action in (Action.RELOAD, Action.RESTART)]
    assert [c.target for c in reloads] == ["service unbound"]
    assert "unbound.conf" in reloads[0].reason and "/etc/default/unbound" in reloads[0].reason


def test_invalid_config_restores_previous_files_and_reloads_nothing(params, fake):
    converged(params, fake)
    old_conf = fake.files["/etc/unbound/unbound.conf"].content
    old_default = fake.files["/etc/default/unbound"].content
    reloads_before = fake.services["unbound"].get("reloads", 0)
    fake.checks["unbound-checkconf"] = (
        lambda f: "syntax error" if b"iterator\"\n    local-zone" in f.files[
            "/etc/unbound/unbound.conf"].content else "")
    lab = params.model_copy(update={"resolver": params.resolver.model_copy(update={"mode": "lab"})})
    s = Session(lab, host=fake)
    p = s.plan("10-base")
    result = s.apply(p)
    assert result.status is Status.FAILED and not result.ok
    assert "validation of unbound failed" in result.error and "syntax error" in result.error
    assert fake.files["/etc/unbound/unbound.conf"].content == old_conf
    assert fake.files["/etc/default/unbound"].content == old_default
    assert set(result.rolled_back) == {"/etc/unbound/unbound.conf", "/etc/default/unbound"}
    assert fake.services["unbound"].get("reloads", 0) == reloads_before
    with pytest.raises(Exception, match="unbound failed"):
        result.raise_for_status()


def test_failed_check_removes_files_that_did_not_exist(fake):
    fake.service_scripts.add("demo")
    fake.services["demo"] = {"active": True, "enabled": True}
    fake.checks["unbound-checkconf"] = lambda f: "bad"
    res = [File("/etc/demo.conf", "x = 1\n", notify=("demo",)),
           Service("demo", check=("unbound-checkconf",))]
    result = apply(fake, plan(fake, res))
    assert result.status is Status.FAILED
    assert "/etc/demo.conf" not in fake.files


def test_restore_keeps_previous_mode_and_owner(fake):
    fake.files["/etc/x.conf"] = FakeFile(b"old\n", 0o640, "root", "adm")
    fake.service_scripts.add("x")
    fake.services["x"] = {"active": True, "enabled": True}
    fake.checks["unbound-checkconf"] = lambda f: "bad"
    result = apply(fake, plan(fake, [File("/etc/x.conf", "new\n", notify=("x",)),
                                     Service("x", check=("unbound-checkconf",))]))
    assert not result.ok
    assert dataclasses.astuple(fake.files["/etc/x.conf"]) == (b"old\n", 0o640, "root", "adm")


def test_write_failure_midway_is_reported_and_later_changes_not_made(fake):
    fake.fail_writes.add("/etc/b.conf")
    res = [File("/etc/a.conf", "a\n"), File("/etc/b.conf", "b\n"), File("/etc/c.conf", "c\n")]
    result = apply(fake, plan(fake, res))
    assert result.status is Status.FAILED
    assert "No space left" in result.error and "write_file /etc/b.conf" in result.error
    assert "/etc/c.conf" not in fake.files
    assert "/etc/a.conf" not in fake.files and result.rolled_back == ("/etc/a.conf",)


def test_failed_smoke_test_after_reload_restores_and_reloads_again(fake):
    """The config passes its check but the service misbehaves after the reload."""
    fake.files["/etc/x.conf"] = FakeFile(b"good\n")
    fake.service_scripts.add("x")
    fake.services["x"] = {"active": True, "enabled": True}
    fake.checks["unbound-checkconf"] = (
        lambda f: "lookup gave the wrong home" if f.files["/etc/x.conf"].content == b"bad\n" else "")
    res = [File("/etc/x.conf", "bad\n", notify=("x",)),
           Service("x", verify=("unbound-checkconf",))]
    result = apply(fake, plan(fake, res))
    assert result.status is Status.FAILED and "failed its check after the change" in result.error
    assert "wrong home" in result.error and result.rolled_back == ("/etc/x.conf",)
    assert fake.files["/etc/x.conf"].content == b"good\n"
    assert fake.services["x"]["reloads"] == 2          # the change, then the rollback


def test_mode_owner_only_change_has_reason_and_no_diff(fake):
    fake.files["/etc/a.conf"] = FakeFile(b"a\n", 0o600, "root", "root")
    p = plan(fake, [File("/etc/a.conf", "a\n", mode="0644")])
    [c] = p.changes
    assert c.reason == "mode 600 -> 644" and c.diff == ""


def test_directories_users_groups(fake):
    res = [Group("vmail"), User("vmail", "vmail", "/var/vmail"),
           Directory("/var/vmail", mode="0750", owner="vmail", group="vmail")]
    p = plan(fake, res)
    assert [c.action for c in p.changes] == [Action.CREATE] * 3
    assert apply(fake, p).ok
    assert plan(fake, res).empty
    fake.dirs["/var/vmail"].mode = 0o755
    [c] = plan(fake, res).changes
    assert c.reason == "mode 755 -> 750"


def test_a_fact_command_several_kinds_need_is_sent_once(fake):
    plan(fake, [Group("vmail"), User("vmail", "vmail", "/var/vmail")])
    assert fake.commands.count(("getent", "group")) == 1
    assert fake.commands.count(("getent", "passwd")) == 1


def test_declaring_a_resource_twice_is_an_error(fake):
    with pytest.raises(ValueError, match="declared twice"):
        plan(fake, [File("/etc/a", "1"), File("/etc/a", "2")])


def test_notify_of_undeclared_service_is_an_error(fake):
    with pytest.raises(ValueError, match="undeclared services: ghost"):
        plan(fake, [File("/etc/a", "1", notify=("ghost",))])


def test_fake_host_refuses_unexpected_commands(fake):
    with pytest.raises(UnexpectedCommand):
        fake.run(["reboot"])


def test_bad_resource_values_are_refused():
    with pytest.raises(ValueError, match="absolute"):
        File("etc/relative", "x")
    with pytest.raises(ValueError, match="absolute"):
        File("/etc/x\n", "x")
    with pytest.raises(ValueError, match="octal"):
        File("/etc/x", "x", mode="rw-r--r--")
    with pytest.raises(ValueError, match="package name"):
        from mailops.core.resources import Packages
        Packages(("postfix; rm -rf /",))
