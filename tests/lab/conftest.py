"""Lab tests: real daemons in the lab host, reached over SSH like a real server."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailops.lab import hosts as lab
from mailops.lab import internet
from mailops.lab import peers
from mailops.core.params import load_params
from mailops.provision.session import Session

ROOT = Path(__file__).resolve().parents[2]
LAB_PARAMS = ROOT / "parameters" / "lab.yaml"
TRIXIE = ROOT / "parameters" / "lab-trixie.yaml"
UPGRADE = ROOT / "parameters" / "lab-upgrade.yaml"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab_params():
    return load_params(LAB_PARAMS)


@pytest.fixture(scope="session")
def lab_spec(lab_params):
    return lab.LabSpec.from_params(lab_params)


@pytest.fixture(scope="session")
def lab_up(lab_spec, lab_params):
    internet.prepare_dns_host(lab_params)         # the lab zones' authoritative server (lab6)
    internet.prepare_acme_ca(lab_params)          # and the lab's ACME CA (pebble, on lab6)
    lab.up(lab_spec)
    peers.prepare_backup_host(lab_params)      # the borg repository host (lab3)
    lab.reset_egress_watch(lab_spec)         # test_99 checks no packet left the lab
    return lab_spec


@pytest.fixture(scope="module")
def params(lab_up):
    """The lab provisioned (a no-op when it is): a module starts from the converged state."""
    res = provision_json("--params", str(LAB_PARAMS), "--apply")
    assert res["ok"], res
    p = load_params(LAB_PARAMS)
    publish_dns(p)
    return p


def publish_dns(p):
    """The server's records at the lab's DNS host, as `mailops dns publish --apply`
    (a no-op when they are there)."""
    from mailops.provision import dnsrecords
    with Session(p) as s:
        r = dnsrecords.publish(s, apply=True)
    assert r.ok, r
    return r


@pytest.fixture
def session(lab_up, lab_params):
    with Session(lab_params) as s:
        yield s


def mailops_cli(*args, check=True, env=None, input=None):
    """The command a user types, in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "mailops.cli.main", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=1800,
                          input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"mailops {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def provision_json(*args) -> dict:
    proc = mailops_cli("provision", "--json", *args, check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON summary (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-3000:]}") from None


SYSTEMD = ROOT / "parameters" / "lab-systemd.yaml"


def build_from_nothing(params_file: Path) -> dict:
    """A lab mail server from an empty root file system: up, its backup host ready, and
    the first `mailops provision --apply` (its JSON summary)."""
    p = load_params(params_file)
    spec = lab.LabSpec.from_params(p)
    quiet = lambda m: None  # noqa: E731
    lab.down(spec, purge=True, log=quiet)
    if not lab.up(spec, log=quiet).up:
        raise AssertionError(f"lab {spec.name} did not come up")
    peers.prepare_backup_host(p, log=quiet, fresh=True)
    return provision_json("--params", str(params_file), "--apply")


class Prebuild:
    """The other lab mail servers (Debian 13, systemd) built from nothing on one
    background thread while the first modules work on lab1: independent hosts, as
    `mailops provision --params A B` provisions them side by side. The tests that own
    them (test_04, test_11) take the result of that first run and go on from there."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="prebuild")
        self.jobs = {}

    def start(self, *params_files: Path) -> None:
        for f in params_files:
            if f not in self.jobs:
                self.jobs[f] = self.pool.submit(build_from_nothing, f)

    def first_run(self, params_file: Path) -> dict:
        """That first provisioning run's summary (built now if nobody started it)."""
        self.start(params_file)
        return self.jobs.pop(params_file).result(timeout=1800)

    def wait(self) -> None:
        """Until the background is idle: the modules that time things run alone."""
        for job in list(self.jobs.values()):
            job.exception(timeout=1800)       # waits; a failure is the owner test's to show


@pytest.fixture(scope="session")
def prebuild(lab_up):
    pb = Prebuild()
    yield pb
    pb.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def trixie_lab(lab_up):
    """The Debian 13 lab host, provisioned (a no-op when test_04 left it so): kept up for
    the session, which saves building it again per module; test_99 takes it down with
    the other peers of the Debian 12 lab (their bridge and apt proxy are shared)."""
    p = load_params(TRIXIE)
    spec = lab.LabSpec.from_params(p)
    fresh = not spec.dir.exists()              # test_04 purged it: built from nothing
    lab.up(spec)
    peers.prepare_backup_host(p, fresh=fresh)
    res = provision_json("--params", str(TRIXIE), "--apply")
    assert res["ok"], res
    yield TRIXIE, p
    lab.down(spec)


@pytest.fixture(params=["bookworm", pytest.param("trixie", marks=pytest.mark.slow)])
def any_lab(request, lab_up):
    """The Debian 12 lab (provisioned), or the Debian 13 one."""
    if request.param == "trixie":
        return request.getfixturevalue("trixie_lab")
    res = provision_json("--params", str(LAB_PARAMS), "--apply")
    assert res["ok"], res
    return LAB_PARAMS, load_params(LAB_PARAMS)
