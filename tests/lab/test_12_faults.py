"""Faults on the real lab host: the SSH connection cut at each point of an apply,
the disk full while a config file is written, the apt proxy down during a package
step.  Each ends with a clear error, the old files intact, the server running a
configuration that passed its check, and the next run finishing the job."""
import json

from conftest import LAB_PARAMS, provision_json
from mailops.lab import hosts as lab
from mailops.core.host import HostError
from mailops.core.plan import Status
from mailops.provision.session import Session

MAIN_CF = "/etc/postfix/main.cf"


def with_size(params, mb):
    return params.model_copy(update={"mail": params.mail.model_copy(
        update={"message_size_limit_mb": mb})})


def cut_after(host, n: int) -> None:
    """The connection drops before the (n+1)th command: it is closed, and that
    command and every later one fail as on a lost connection."""
    real = host._exec
    left = [n]

    def _exec(argv, stdin, timeout):
        if left[0] <= 0:
            host.close()
            raise HostError(f"{host.url}: connection lost (cut by the test)")
        left[0] -= 1
        return real(argv, stdin, timeout)
    host._exec = _exec


def test_ssh_cut_at_each_point_of_an_apply(params):
    base = params.mail.message_size_limit_mb
    finished = False
    for n in range(0, 12):
        target = with_size(params, base + 1 + n)
        s = Session(target)
        plan = s.plan("50-postfix")
        assert plan.changes
        cut_after(s.host, n)
        result = s.apply(plan)
        s.close()
        if result.ok:
            finished = True
            break
        with Session(target) as fresh:
            h = fresh.host
            h.run(["sh", "-c", "postfix check"])            # what is on disk passes its check
            limit = h.run(["postconf", "-h", "message_size_limit"]).out.strip()
            assert limit in (str((base + n) * 1048576), str(base * 1048576),
                             str((base + 1 + n) * 1048576)), limit
            assert not h.run(["sh", "-c", "ls /etc/postfix/.mailops.* 2>/dev/null"],
                             check=False).out                # no temp file left behind
            again = fresh.apply(fresh.plan("50-postfix"))    # the next run finishes the job
            assert again.ok, again.error
            assert fresh.plan("50-postfix").empty, str(fresh.plan("50-postfix"))
            running = h.run(["postconf", "-h", "message_size_limit"]).out.strip()
            assert running == str((base + 1 + n) * 1048576)
    assert finished, "no cut point let the apply finish"
    with Session(params) as s:
        assert s.apply(s.plan("50-postfix")).ok


def test_disk_full_while_writing_keeps_the_old_file(params):
    """/etc/postfix on a full file system: the write fails with the disk's own
    error, main.cf is as it was, nothing is reloaded, postfix runs on."""
    with Session(with_size(params, params.mail.message_size_limit_mb + 7)) as s:
        h = s.host
        before = h.read_file(MAIN_CF)
        h.run(["sh", "-c", "set -e; mkdir -p /run/pf-save; cp -a /etc/postfix/. /run/pf-save/; "
               "mount -t tmpfs -o size=2m tmpfs /etc/postfix; cp -a /run/pf-save/. /etc/postfix/; "
               "dd if=/dev/zero of=/etc/postfix/fill bs=64k 2>/dev/null || true"])
        try:
            result = s.apply(s.plan("50-postfix"))
            assert result.status is Status.FAILED
            assert "No space left on device" in result.error, result.error
            assert h.read_file(MAIN_CF) == before
            assert h.run(["postfix", "status"], check=False).ok
        finally:
            h.run(["sh", "-c", "umount /etc/postfix; rm -rf /run/pf-save"])
        assert h.read_file(MAIN_CF) == before
    with Session(params) as s:
        assert s.plan("50-postfix").empty


def test_apt_proxy_down_during_a_package_step(params, lab_spec):
    """A package to install while the apt proxy is down: a clear error from apt,
    and nothing configured after it; with the proxy back the next run installs."""
    extra = params.model_copy(update={"packages": [*params.packages, "jq"]})
    state = json.loads((lab.RUN_DIR / f"apt-proxy-{lab_spec.bridge}.json").read_text())
    from mailops.core.host import LocalHost
    LocalHost().run(["kill", str(state["pid"])])
    try:
        with Session(extra) as s:
            s.host.run(["sh", "-c", "apt-get remove -y -q jq >/dev/null 2>&1 || true"])
            plan = s.plan("10-base")
            assert plan.changes and plan.changes[0].resource.kind == "packages", plan.changes
            result = s.apply(plan)
            assert result.status is Status.FAILED
            assert "198.51.100.1" in result.error or "apt" in result.error, result.error
            assert not [c for c in result.applied if c.resource.kind != "packages"]
    finally:
        lab.up(lab_spec)                     # brings the proxy back
    res = provision_json("--params", str(LAB_PARAMS), "--apply", "--only", "10-base")
    assert res["ok"], res
    with Session(extra) as s:
        assert s.apply(s.plan("10-base")).ok
        assert s.host.run(["dpkg-query", "-W", "jq"]).ok
        s.host.run(["apt-get", "remove", "-y", "-q", "jq"])
