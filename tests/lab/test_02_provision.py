"""The workbook against the lab: notebooks applied through papermill, a second
run changes nothing, a changed parameter is a dry-run diff until applied."""
import json
from pathlib import Path

import pytest
import yaml

from conftest import LAB_PARAMS, SYSTEMD, TRIXIE, UPGRADE, provision_json
from mailops.core.params import load_params
from mailops.provision.steps import STEPS
from mailops.provision.session import Session


@pytest.fixture(scope="module", autouse=True)
def _other_servers_meanwhile(prebuild):
    """The Debian 13, the systemd and the to-be-upgraded Debian 12 lab servers are built
    from nothing in the background while this module provisions lab1 (test_04, test_11
    and test_21 check them)."""
    prebuild.start(TRIXIE, SYSTEMD, UPGRADE)


def test_notebooks_apply_then_a_second_run_changes_nothing(lab_up):
    first = provision_json("--params", str(LAB_PARAMS), "--apply", "--notebooks", "all")
    assert first["ok"], first
    assert [s["step"] for s in first["steps"]] == [step.name for step in STEPS]
    assert first["steps"][-1]["status"] == "verified"
    run_dir = Path(first["run_dir"])
    for s in first["steps"]:
        nb = run_dir / s["notebook"]
        assert nb.exists() and (run_dir / f"{s['step']}.json").exists()
    assert json.loads((run_dir / "summary.json").read_text())["ok"]

    # every notebook again: each records zero changes
    again = provision_json("--params", str(LAB_PARAMS), "--apply", "--notebooks", "all")
    assert again["ok"] and again["changes"] == 0, again
    assert {s["status"] for s in again["steps"][:-1]} == {"no changes"}
    assert again["steps"][-1]["status"] == "verified"

    # the default run plans in-process and needs no notebook at all
    fast = provision_json("--params", str(LAB_PARAMS), "--apply")
    assert fast["ok"] and fast["changes"] == 0
    assert all(s["notebook"] is None for s in fast["steps"])
    assert fast["steps"][-1]["status"] == "skipped"


def test_connect_notebook_shows_the_host(lab_up):
    res = provision_json("--params", str(LAB_PARAMS), "--only", "00-connect", "--notebooks", "all")
    nb = json.loads((Path(res["run_dir"]) / "00-connect.ipynb").read_text())
    shown = json.dumps([c.get("outputs") for c in nb["cells"]])
    for text in ("Debian GNU/Linux 12", "sysv", "GiB free", "unbound", "openssh-server"):
        assert text in shown, text


def changed_params(tmp_path: Path, **changes) -> Path:
    """lab.yaml with ``changes``, written elsewhere: its relative paths (keys, CA files,
    secrets' file: references) made absolute, so they still name the same files."""
    base = LAB_PARAMS.parent

    def absolute(value):
        if isinstance(value, dict):
            return {k: absolute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [absolute(v) for v in value]
        if isinstance(value, str):
            scheme, sep, rest = value.rpartition(":") if value.startswith("file:") else ("", "", value)
            if rest.startswith("../") or rest.startswith("./"):
                return ("file:" if scheme else "") + str((base / rest).resolve())
        return value

    data = absolute(yaml.safe_load(LAB_PARAMS.read_text()))
    data.update(changes)
    out = tmp_path / "changed.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def test_changed_parameter_is_a_dry_run_diff_until_applied(lab_up, tmp_path, lab_params):
    with Session(lab_params) as s:
        assert s.plan("10-base").empty
        before = s.host.read_file("/etc/timezone")
    changed = changed_params(tmp_path, timezone="Europe/Berlin")
    res = provision_json("--params", str(changed), "--only", "10-base")
    assert res["ok"] and not res["apply"]
    [step] = res["steps"]
    assert step["status"] == "planned"
    assert "update file /etc/timezone" in step["targets"]
    assert "update link /etc/localtime" in step["targets"]
    nb = (Path(res["run_dir"]) / "10-base.ipynb").read_text()
    assert "+Europe/Berlin" in nb and "-Etc/UTC" in nb       # the diff, in the run record
    with Session(lab_params) as s:                           # nothing was applied
        assert s.host.read_file("/etc/timezone") == before
        assert s.plan("10-base").empty

    applied = provision_json("--params", str(changed), "--only", "10-base", "--apply")
    assert applied["ok"] and applied["changes"] >= 2
    with Session(load_params(changed)) as s:
        assert s.host.read_file("/etc/timezone") == b"Europe/Berlin\n"
        assert s.host.run(["date", "+%Z"]).out.strip() in ("CET", "CEST")
    back = provision_json("--params", str(LAB_PARAMS), "--only", "10-base", "--apply")
    assert back["ok"] and back["changes"] >= 2


def test_invalid_template_on_the_real_host_is_rolled_back(lab_up, lab_params, tmp_path):
    """A resolver record unbound-checkconf rejects: the old config is restored
    and unbound keeps answering."""
    from mailops.core.resources import Action
    bad = lab_params.model_copy(update={"resolver": lab_params.resolver.model_copy(
        update={"extra_records": ["broken record without a type"]}),
        # local data (no DNS host): the record goes into unbound.conf
        "lab": lab_params.lab.model_copy(update={"dns_host": None})})
    with Session(bad) as s:
        old = s.host.read_file("/etc/unbound/unbound.conf")
        plan = s.plan("10-base")
        assert [c.action for c in plan.changes] == [Action.UPDATE, Action.RESTART]
        result = s.apply(plan)
        assert not result.ok and "unbound-checkconf" in result.error
        assert result.rolled_back == ("/etc/unbound/unbound.conf",)
        assert s.host.read_file("/etc/unbound/unbound.conf") == old
        assert s.host.run(["sh", "-c", "/etc/init.d/unbound status"], check=False).ok
    with Session(lab_params) as s:
        assert s.plan("10-base").empty
