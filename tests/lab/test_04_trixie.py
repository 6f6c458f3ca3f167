"""Debian 13 (trixie) works too: a second lab host, provisioned, then re-run."""
import pytest

from conftest import ROOT, provision_json
from mailops import lab
from mailops.host import LocalHost
from mailops.params import load_params
from mailops.session import Session

TRIXIE = ROOT / "parameters" / "lab-trixie.yaml"


@pytest.mark.slow
def test_trixie_lab_is_provisioned_and_idempotent(lab_up):
    spec = lab.LabSpec.from_params(load_params(TRIXIE))
    try:
        assert lab.up(spec).up
        first = provision_json("--params", str(TRIXIE), "--apply")
        assert first["ok"], first
        assert first["changes"] > 0
        with Session(load_params(TRIXIE)) as s:
            assert (s.info.os_id, s.info.os_version) == ("debian", "13")
            assert s.plan("10-base").empty
            assert s.host.run(["hostname"]).out == "mx2.lab.test\n"
        again = provision_json("--params", str(TRIXIE), "--apply", "--notebooks", "all")
        assert again["ok"] and again["changes"] == 0, again
    finally:
        lab.down(spec, purge=True)
    # taking lab2 down leaves lab1 and the shared bridge and proxy alone
    assert lab.status(lab_up).up
    assert not LocalHost().run(["ip", "netns", "pids", spec.netns], check=False).ok
