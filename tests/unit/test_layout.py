"""The package's layout holds: arrows point one way, there are no circles, and the
product imports no test double.

Floors, lowest first: ``remote`` (the stdlib helpers run on the server, which import
nothing of mailops), ``core``, ``provision``, then ``manage`` and ``insight`` side by side, ``lab``, ``cli``.  A module
imports its own folder and the floors below it.  The one arrow up is the declared
seam: any product module may import :mod:`mailops.lab.mode` (what a lab server adds
to a production one), and that module imports nothing else of the lab.  Lazy imports
inside functions count: they are arrows all the same."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mailops"
FLOORS = {"remote": 0, "core": 1, "provision": 2, "manage": 3, "insight": 3, "lab": 4, "cli": 5}
SEAM = "mailops.lab.mode"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The mailops modules (or packages) ``path`` imports, resolved to absolute names."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m != name}


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p): p for p in package.rglob("*.py")}
    modules = set(paths)
    return {m: {t for t in imports(p, modules)
                if t == "mailops" or t.startswith("mailops.") or t.split(".")[0] in ("support", "tests")}
            for m, p in paths.items()}


def floor(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None                       # mailops/__init__.py: names loaded on first use
    return parts[1], FLOORS.get(parts[1], -1)


def wrong_arrows(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(edges.items()):
        where = floor(src)
        for dst in sorted(targets):
            if dst.split(".")[0] != "mailops":
                bad.append(f"{src} -> {dst}: the product imports no test code")
                continue
            to = floor(dst)
            if where is None or to is None:
                continue
            if where[1] == -1 or to[1] == -1:
                bad.append(f"{src} -> {dst}: {src if where[1] == -1 else dst} is in no known folder")
            elif src == SEAM and to[0] == "lab":
                bad.append(f"{src} -> {dst}: the seam imports nothing else of the lab")
            elif dst == SEAM:
                continue
            elif to[1] > where[1] or (to[1] == where[1] and to[0] != where[0]):
                bad.append(f"{src} -> {dst}: {where[0]} may not import {to[0]}")
    return bad


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_arrow_points_up():
    assert wrong_arrows(graph()) == []


def test_no_circle():
    assert circles(graph()) == []


def test_every_top_level_entry_is_a_known_folder():
    entries = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
               if p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py")}
    assert entries - {"__init__"} == set(FLOORS)


def test_every_module_says_what_it_is_for():
    missing = [module_name(p) for p in PACKAGE.rglob("*.py")
               if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()]
    assert missing == []


@pytest.mark.parametrize("edges, expected", [
    ({"mailops.core.plan": {"mailops.provision.steps"}, "mailops.provision.steps": set()},
     ["mailops.core.plan -> mailops.provision.steps: core may not import provision"]),
    ({"mailops.manage.users": {"mailops.insight.store"}, "mailops.insight.store": set()},
     ["mailops.manage.users -> mailops.insight.store: manage may not import insight"]),
    ({"mailops.provision.steps.base": {"mailops.lab.mode"}, "mailops.lab.mode": set()}, []),
    ({"mailops.provision.checks.clients": {"mailops.lab.hosts"}},
     ["mailops.provision.checks.clients -> mailops.lab.hosts: provision may not import lab"]),
    ({"mailops.lab.mode": {"mailops.lab.hosts"}},
     ["mailops.lab.mode -> mailops.lab.hosts: the seam imports nothing else of the lab"]),
    ({"mailops.core.host": {"support.fakehost"}},
     ["mailops.core.host -> support.fakehost: the product imports no test code"]),
    ({"mailops.cli.main": {"mailops.lab.hosts", "mailops.core.host"}}, []),
    ({"mailops.core.resources.maildb": {"mailops.remote.maildb"}}, []),
    ({"mailops.remote.maildb": {"mailops.core.host"}},
     ["mailops.remote.maildb -> mailops.core.host: remote may not import core"]),
])
def test_the_rules_catch_what_they_name(edges, expected):
    assert wrong_arrows(edges) == expected


def test_a_circle_is_found():
    edges = {"mailops.a": {"mailops.b"}, "mailops.b": {"mailops.c"}, "mailops.c": {"mailops.a"},
             "mailops.d": {"mailops.a"}}
    assert circles(edges) == [["mailops.a", "mailops.b", "mailops.c"]]


def test_lazy_imports_count(tmp_path):
    pkg = tmp_path / "mailops" / "core"
    pkg.mkdir(parents=True)
    (tmp_path / "mailops" / "__init__.py").write_text('"""x"""\n')
    (pkg / "__init__.py").write_text('"""x"""\n')
    (pkg / "plan.py").write_text('"""x"""\ndef f():\n    from ..provision import runner\n')
    modules = {"mailops", "mailops.core", "mailops.core.plan", "mailops.provision.runner"}
    assert imports(pkg / "plan.py", modules, tmp_path) == {"mailops.provision.runner"}
