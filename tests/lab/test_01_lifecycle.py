"""`lab up` from nothing, idempotent, and rebuilt when half-dead."""
import os
import signal
import time

from mailops.lab import hosts as lab
from mailops.core.host import LocalHost


def test_lab_up_from_nothing(lab_spec):
    lab.down(lab_spec, purge=True)
    assert not lab_spec.dir.exists()
    st = lab.up(lab_spec)
    assert st.up and lab_spec.known_hosts.exists()
    local = LocalHost()
    routes = local.run(["ip", "-n", lab_spec.netns, "route", "show"]).out
    assert "default" not in routes and "198.51.100.0/24" in routes
    # the apt proxy listens on the bridge address only
    listen = local.run(["ss", "-ltnH", "sport", f"= :{lab.PROXY_PORT}"]).out.splitlines()
    assert [line.split()[3] for line in listen] == [f"{lab_spec.gateway}:{lab.PROXY_PORT}"]


def test_up_when_up_is_a_noop(lab_up):
    before = lab.status(lab_up)
    after = lab.up(lab_up, log=lambda m: None)
    assert after.up and after.pid == before.pid


def test_half_dead_lab_is_detected_and_rebuilt(lab_up):
    before = lab.status(lab_up)
    os.kill(before.pid, signal.SIGKILL)
    for _ in range(50):
        st = lab.status(lab_up)
        if st.state != "up":
            break
        time.sleep(0.1)
    assert st.state == "half-dead" and "first process is gone" in st.detail
    after = lab.up(lab_up, log=lambda m: None)
    assert after.up and after.pid != before.pid
