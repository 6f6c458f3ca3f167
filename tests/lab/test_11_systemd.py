"""A lab host with systemd as its first process, as on a real server: provisioned
from nothing, its daily jobs as timers that run, nftables and every service
enabled at boot, and a reboot after which the firewall, the services and the
mail path come back by themselves with nothing left to apply."""
import json
import time

import pytest

from conftest import SYSTEMD, provision_json
from mailops.lab import hosts as lab
from mailops.provision import verify
from mailops.core.layout import BACKUP
from mailops.core.params import load_params
from mailops.provision.session import Session

SERVICES = ("postfix", "dovecot", "rspamd", "redis-server", "unbound", "fail2ban", "nftables",
            "ssh")
TIMERS = ("mailops-backup.timer", "mailops-purge.timer", "logrotate.timer")


def booted(h, timeout=120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = h.run(["systemctl", "is-system-running"], check=False).out.strip()
        if state in ("running", "degraded"):
            return state
        time.sleep(1)
    return state


@pytest.fixture(scope="module")
def sd(lab_up, prebuild):
    """lab4 from an empty root file system, up, and its first provisioning run (conftest's
    Prebuild: started in the background while test_02 worked on lab1)."""
    params = load_params(SYSTEMD)
    spec = lab.LabSpec.from_params(params)
    first = prebuild.first_run(SYSTEMD)
    yield params, spec, first
    lab.down(spec)


@pytest.mark.slow
def test_systemd_host_from_nothing_with_timers_that_run(sd):
    params, spec, first = sd
    assert first["ok"], first
    assert first["changes"] > 0
    assert provision_json("--params", str(SYSTEMD), "--apply")["changes"] == 0
    with Session(params) as s:
        h = s.host
        assert s.info.init == "systemd" and booted(h) == "running", \
            h.run(["systemctl", "--failed", "--no-legend"], check=False).out
        enabled = {u: h.run(["systemctl", "is-enabled", u], check=False).out.strip()
                   for u in SERVICES + TIMERS}
        assert set(enabled.values()) == {"enabled"}, enabled
        timers = h.run(["systemctl", "list-timers", "--all", "--no-legend"]).out
        assert all(t in timers for t in TIMERS), timers
        h.run(["systemctl", "start", "mailops-purge.service", "mailops-backup.service"],
              timeout=600)
        state = json.loads(h.read_file(BACKUP.state))
        assert state["exit"] == 0 and time.time() - state["end"] < 600, state
        assert "purge end, exit 0" in h.run(["tail", "-n", "1", "/var/log/mailops/purge.log"]).out
        assert h.run(["systemctl", "show", "-p", "Result", "--value",
                      "mailops-backup.service"]).out.strip() == "success"
        jails = h.run(["fail2ban-client", "status"]).out       # sshd's jail reads the journal
        assert "sshd" in jails, jails


@pytest.mark.slow
def test_reboot_brings_back_firewall_services_and_mail(sd):
    params, spec, _ = sd
    lab.down(spec)                          # power off: every process killed
    assert lab.up(spec).up                  # boot the same root file system
    with Session(params) as s:
        h = s.host
        assert booted(h) == "running", h.run(["systemctl", "--failed", "--no-legend"],
                                             check=False).out
        assert "chain input" in h.run(["nft", "list", "table", "inet", "mailops"]).out
        active = {u: h.run(["systemctl", "is-active", u], check=False).out.strip()
                  for u in SERVICES + TIMERS}
        assert set(active.values()) == {"active"}, active
    report = verify.run_checks(params)
    assert report.ok, str(report)
    again = provision_json("--params", str(SYSTEMD), "--apply")
    assert again["ok"] and again["changes"] == 0, again
