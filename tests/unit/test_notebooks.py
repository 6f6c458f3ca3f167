"""Notebook conventions: committed without outputs, a tagged parameters cell
with typed and commented parameters, dry_run on by default, no logic."""
import ast
import json
import subprocess

import pytest

from mailops.provision.steps import STEPS


# notebooks that are not provisioning steps: they read, and change only on request
OPERATIONS = ["provisioning/85-restore-drill.ipynb"]
# a server's life: rebuilt on a new host from its backup (dry_run on by default)
LIFECYCLE = ["provisioning/95-rebuild.ipynb", "provisioning/96-upgrade.ipynb"]
# management notebooks: plan one change from their parameters, dry_run on by default
MANAGEMENT = ["management/users.ipynb", "management/sieve.ipynb", "management/migrate.ipynb"]
# analysis notebooks: read the store (and the server, for status); they change nothing
ANALYSIS = ["analysis/rspamd.ipynb", "analysis/rejects.ipynb", "analysis/fail2ban.ipynb"]
STATUS = ["analysis/status.ipynb"]
ALL = [f"provisioning/{s.notebook}" for s in STEPS] + OPERATIONS + LIFECYCLE + MANAGEMENT + ANALYSIS + STATUS
KINDS = {"provisioning", "management", "analysis"}


def notebooks(root):
    return sorted((root / "notebooks").glob("*/*.ipynb"))


def test_every_step_has_a_notebook_and_every_notebook_a_step(root):
    assert {str(p.relative_to(root / "notebooks")) for p in notebooks(root)} == set(ALL)


def test_notebooks_are_grouped_by_kind(root):
    assert {p.name for p in (root / "notebooks").iterdir() if p.is_dir()} <= KINDS
    assert not list((root / "notebooks").glob("*.ipynb")), "a notebook outside the kind folders"


def test_committed_notebooks_have_no_outputs(root):
    tracked = subprocess.run(["git", "-C", str(root), "ls-files", "*.ipynb"], capture_output=True,
                             text=True, check=True).stdout.split()
    paths = [root / t for t in tracked] or notebooks(root)
    dirty = []
    for path in paths:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count")):
                dirty.append(path.name)
    assert not dirty, f"notebooks committed with outputs: {sorted(set(dirty))}"


@pytest.mark.parametrize("name", ALL)
def test_parameters_cell(root, name):
    nb = json.loads((root / "notebooks" / name).read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is cells[0]
    src = "".join(tagged[0]["source"])
    tree = ast.parse(src)
    names = {}
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign), f"untyped parameter in {name}: {ast.unparse(node)}"
        names[node.target.id] = ast.literal_eval(node.value)
    if name in ANALYSIS:
        assert "dry_run" not in names and set(names) >= {"params_file", "hosts", "period",
                                                          "date", "collect"}
        assert names["collect"] is False and names["period"] == "daily"
    elif name in STATUS:
        assert "dry_run" not in names and set(names) >= {"params_file", "fail_on_error",
                                                          "record_file"}
        assert names["fail_on_error"] is True
    elif name in OPERATIONS:
        assert "dry_run" not in names and set(names) >= {"params_file", "record_file"}
    else:
        assert names["dry_run"] is True
        assert set(names) >= {"params_file", "dry_run", "record_file"}
    for line in src.splitlines():
        assert "#" in line, f"uncommented parameter in {name}: {line}"
    assert nb["cells"][0]["cell_type"] == "markdown"


@pytest.mark.parametrize("name", ALL)
def test_notebooks_stay_thin(root, name):
    nb = json.loads((root / "notebooks" / name).read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    tree = ast.parse(code)
    for node in ast.walk(tree):
        assert not isinstance(node, (ast.FunctionDef, ast.ClassDef)), f"logic in {name}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert all(m.split(".")[0] in ("mailops", "pandas") for m in mods), f"{name} imports {mods}"
    last = "".join([c for c in nb["cells"] if c["cell_type"] == "code"][-1]["source"])
    if name in ANALYSIS + STATUS:
        assert ".raise_for_status()" in last, name
    else:
        assert "mailops.finish(" in last
