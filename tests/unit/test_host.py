"""Host transport pieces that run for real on this machine (local://)."""
import os
import uuid

import pytest

from mailops.core.host import CommandError, CommandTimeout, Host, LocalHost, connect, display_command, parse_batch


@pytest.fixture
def local():
    return LocalHost()


def test_result_and_error_name_host_command_code_and_stderr(local):
    r = local.run(["sh", "-c", "echo out; echo err >&2"])
    assert (r.ok, r.out, r.err, r.exit_code) == (True, "out\n", "err\n", 0)
    with pytest.raises(CommandError) as exc:
        local.run(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 3", "failing"])
    msg = str(exc.value)
    assert msg.startswith("local://: `sh:failing` exited 3") and "the real reason" in msg
    assert exc.value.result.exit_code == 3


def test_check_false_returns_the_failure(local):
    assert local.run(["false"], check=False).exit_code == 1


def test_stdin_is_passed_not_argv(local):
    r = local.run(["sh", "-c", "cat; echo \"args=$#\"", "x"], stdin=b"secret-on-stdin\n")
    assert r.out == "secret-on-stdin\nargs=0\n"


def test_timeout(local):
    with pytest.raises(CommandTimeout, match="timed out after 0.2s"):
        local.run(["sleep", "5"], timeout=0.2)


def test_batch_script_frames_awkward_output(local):
    """The shell batch used over SSH, run here through the base class."""
    cmds = [["printf", "no newline"], ["sh", "-c", "printf 'MAILOPS-BATCH 9 9 9 9\\n'; exit 4"],
            ["head", "-c", "300000", "/dev/urandom"], ["sh", "-c", "echo e >&2"], ["true"]]
    results = Host.run_many(local, cmds)
    assert [r.exit_code for r in results] == [0, 4, 0, 0, 0]
    assert results[0].stdout == b"no newline"
    assert results[1].out == "MAILOPS-BATCH 9 9 9 9\n"
    assert len(results[2].stdout) == 300000
    assert results[3].err == "e\n" and results[4].stdout == b""


def test_parse_batch_detects_garbage():
    with pytest.raises(Exception):
        parse_batch("h", [["true"]], b"MAILOPS-BATCH 1 0 0 0\n", 0.0)


def test_display_command_hides_script_bodies_and_quotes():
    assert display_command(["sh", "-c", "long body", "write_file", "/etc/a b"]) == \
        "sh:write_file '/etc/a b'"
    assert display_command(["echo", "$(x)"]) == "echo '$(x)'"


def test_connect_by_url():
    assert isinstance(connect("local://"), LocalHost)
    with pytest.raises(ValueError, match="unsupported host URL"):
        connect("telnet://mx1")
    with pytest.raises(ValueError, match="needs key_file"):
        connect("ssh://root@mx1")


def test_atomic_write_replaces_and_sets_mode(local, tmp_path):
    p = tmp_path / "f.conf"
    p.write_text("old\n")
    local.write_file(str(p), b"new\n", mode="0640", owner="root", group="root")
    assert p.read_text() == "new\n" and oct(p.stat().st_mode & 0o777) == "0o640"
    assert os.listdir(tmp_path) == ["f.conf"]


def test_atomic_write_failing_midway_leaves_the_old_file(local, tmp_path):
    """A write that runs out of space halfway: the old file stays whole and no
    temp file is left behind."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    local.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)])
    try:
        target = mnt / "main.cf"
        target.write_text("old config\n")
        with pytest.raises(CommandError, match="No space left"):
            local.write_file(str(target), b"x" * 200_000)
        assert target.read_text() == "old config\n"
        assert os.listdir(mnt) == ["main.cf"]
        # a failure after the data is written (unknown group) leaves it too
        with pytest.raises(CommandError, match="invalid group"):
            local.write_file(str(target), b"new\n", group=f"nogroup-{uuid.uuid4().hex[:8]}")
        assert target.read_text() == "old config\n" and os.listdir(mnt) == ["main.cf"]
    finally:
        local.run(["umount", str(mnt)])
