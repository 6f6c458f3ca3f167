"""Checks report failures explicitly: no assert in product code, and a failed
check stays failed under python -O (which drops asserts)."""
import ast
import subprocess
import sys

from mailops.checks.result import Check, CheckReport, check, require


def test_no_assert_statement_in_mailops(root):
    found = [f"{f.relative_to(root)}:{node.lineno}"
             for f in (root / "mailops").rglob("*.py") if "remote" not in f.parts
             for node in ast.walk(ast.parse(f.read_text())) if isinstance(node, ast.Assert)]
    assert not found, found


def test_failed_check_is_reported_under_python_O(root):
    code = ("from mailops.checks.result import check, require\n"
            "c = check('x', lambda: require(1 == 2, 'one is not two') or 'fine')\n"
            "print(c.ok, c.evidence)\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True,
                         cwd=root, check=True).stdout
    assert out.strip() == "False one is not two"


def test_check_results_and_report():
    ok = check("a", lambda: "fine")
    bad = check("b", lambda: require(False, "broken") or "")
    boom = check("c", lambda: 1 / 0)
    assert ok == Check("a", True, "fine") and bad == Check("b", False, "broken")
    assert not boom.ok and "ZeroDivisionError" in boom.evidence
    report = CheckReport("mx1", (ok, bad, boom))
    assert not report.ok and [c.name for c in report.failed] == ["b", "c"]
    assert report.record()["status"] == "failed" and "2 check(s) failed" in report.record()["error"]


def test_smuggling_payload_hides_a_second_transaction_behind_the_ending():
    from mailops.checks.clients import Target
    from mailops.checks.smtp import SMUGGLING_ENDINGS, smuggling_payload
    t = Target("198.51.100.10", "mx1.lab.test", None, {})
    for ending in SMUGGLING_ENDINGS.values():
        data = smuggling_payload(t, "alice@lab.test", ending, ("tok1", "tok2"))
        first, rest = data.split(ending, 1)
        assert b"X-Mailops-Verify: tok1" in first and b"\r\n.\r\n" not in first
        assert rest.startswith(b"MAIL FROM:<verify@mx1.lab.test>\r\nRCPT TO:<alice@lab.test>\r\n")
        assert b"X-Mailops-Verify: tok2" in rest and rest.endswith(b"\r\n.\r\n")
        assert rest.count(b"\r\n.\r\n") == 1


def test_steps_never_import_each_other(root):
    """Shared paths and facts live in mailops.layout and mailops.facts: a step
    module imports no other step (the dovecot <-> tls cycle hid in a function)."""
    steps = {p.stem for p in (root / "mailops" / "steps").glob("*.py")} - {"__init__", "checks",
                                                                          "shared"}
    found = []
    for f in (root / "mailops" / "steps").glob("*.py"):
        if f.stem == "__init__":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = {node.module} if node.module else {a.name for a in node.names}
                found += [f"{f.stem} imports {n}" for n in names if n in steps]
    assert not found, found


def test_pending_updates_and_sshd_parsers():
    from mailops.checks.server import parse_pending, parse_sshd
    out = ("auto 1 ii\n"
           "Inst libssl3 [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])\n"
           "Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.11/stable [all])\n")
    assert parse_pending(out) == (True, ["libssl3", "tzdata"], ["libssl3"])
    assert parse_pending("auto 0 no\n") == (False, [], [])
    conf = parse_sshd("port 22\npasswordauthentication yes\nkbdinteractiveauthentication no\n")
    assert conf["passwordauthentication"] == "yes" and conf["port"] == "22"
