"""Checks report failures explicitly: no assert in product code, and a failed
check stays failed under python -O (which drops asserts)."""
import ast
import subprocess
import sys

import pytest

from mailops.provision.checks.result import Check, CheckFailed, CheckReport, check, require


def test_no_assert_statement_in_mailops(root):
    found = [f"{f.relative_to(root)}:{node.lineno}"
             for f in (root / "mailops").rglob("*.py") if "remote" not in f.parts
             for node in ast.walk(ast.parse(f.read_text())) if isinstance(node, ast.Assert)]
    assert not found, found


def test_failed_check_is_reported_under_python_O(root):
    code = ("from mailops.provision.checks.result import check, require\n"
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
    from mailops.provision.checks.clients import Target
    from mailops.provision.checks.smtp import SMUGGLING_ENDINGS, smuggling_payload
    t = Target("198.51.100.10", "mx1.lab.test", None, {})
    for ending in SMUGGLING_ENDINGS.values():
        data = smuggling_payload(t, "alice@lab.test", ending, ("tok1", "tok2"))
        first, rest = data.split(ending, 1)
        assert b"X-Mailops-Verify: tok1" in first and b"\r\n.\r\n" not in first
        assert rest.startswith(b"MAIL FROM:<verify@mx1.lab.test>\r\nRCPT TO:<alice@lab.test>\r\n")
        assert b"X-Mailops-Verify: tok2" in rest and rest.endswith(b"\r\n.\r\n")
        assert rest.count(b"\r\n.\r\n") == 1


def test_steps_never_import_each_other(root):
    """Shared paths and facts live in mailops.core.layout and mailops.core.facts: a step
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
    from mailops.provision.checks.server import parse_pending, parse_sshd
    out = ("auto 1 ii\n"
           "Inst libssl3 [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])\n"
           "Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.11/stable [all])\n")
    assert parse_pending(out) == (True, ["libssl3", "tzdata"], ["libssl3"])
    assert parse_pending("auto 0 no\n") == (False, [], [])
    conf = parse_sshd("port 22\npasswordauthentication yes\nkbdinteractiveauthentication no\n")
    assert conf["passwordauthentication"] == "yes" and conf["port"] == "22"


# -- mail to another server (verify.remote_mailboxes) --------------------------------

RSPAMD_AR = ("mx.peer.test;\n\tdkim=pass header.d=lab.test header.s=mail header.b=AbC;\n"
             "\tspf=pass (mx.peer.test: domain of alice@lab.test designates 198.51.100.10 as "
             "permitted sender) smtp.mailfrom=alice@lab.test;\n"
             "\tdmarc=pass (policy=quarantine) header.from=lab.test")


def mail(*headers: tuple[str, str]):
    import email
    import email.policy
    raw = "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\nbody\r\n"
    return email.message_from_string(raw, policy=email.policy.default)


def test_authentication_results_are_read_as_the_receiver_wrote_them():
    from mailops.provision.checks.peer import auth_results, verdict
    assert [(m, r) for m, r, _ in auth_results(RSPAMD_AR)] == [
        ("dkim", "pass"), ("spf", "pass"), ("dmarc", "pass")]
    assert auth_results(RSPAMD_AR)[0][2]["header.d"] == "lab.test"
    assert verdict(mail(("Authentication-Results", RSPAMD_AR)), "lab.test") == {
        "dkim": "pass", "spf": "pass", "dmarc": "pass"}
    # a signature by another domain does not count for the sender's
    other = RSPAMD_AR.replace("header.d=lab.test", "header.d=relay.example")
    assert verdict(mail(("Authentication-Results", other)), "lab.test")["dkim"] == "none"
    # the receiver's own header is the topmost; an older one below does not speak for it
    failed = RSPAMD_AR.replace("dmarc=pass", "dmarc=fail").replace("spf=pass", "spf=fail")
    v = verdict(mail(("Authentication-Results", failed), ("Authentication-Results", RSPAMD_AR)),
                "lab.test")
    assert v == {"dkim": "pass", "spf": "fail", "dmarc": "fail"}
    with pytest.raises(CheckFailed, match="no Authentication-Results"):
        verdict(mail(("Subject", "x")), "lab.test")


def test_the_hop_from_here_must_be_over_tls():
    from mailops.provision.checks.peer import tls_hop
    hop = ("from mx1.lab.test (mx1.lab.test [198.51.100.10])\n\t(using TLSv1.3 with cipher "
           "TLS_AES_256_GCM_SHA384 (256/256 bits))\n\tby mx.peer.test (Postfix) with ESMTPS")
    lmtp = "from mx.peer.test ([127.0.0.1]) by mx.peer.test with LMTP"
    assert tls_hop(mail(("Received", lmtp), ("Received", hop)), "mx1.lab.test") == "TLSv1.3"
    clear = "from mx1.lab.test (mx1.lab.test [198.51.100.10]) by mx.peer.test with ESMTP"
    assert tls_hop(mail(("Received", clear)), "mx1.lab.test") == ""
    assert tls_hop(mail(("Received", lmtp)), "mx1.lab.test") is None
    assert tls_hop(mail(("Received", hop)), "mx1.lab") is None          # a name, not a prefix


def test_a_run_s_hosts_meet_before_their_checks_and_an_early_stop_does_not_block():
    import threading
    import time
    from mailops.provision.runner import Rendezvous, _Ticket
    meet = Rendezvous(3, timeout=10)
    order = []

    def host(name, delay, stops_early):
        ticket = _Ticket(meet)
        try:
            time.sleep(delay)
            if stops_early:
                return                           # failed before its checks
            ticket.arrive()
            order.append((name, time.monotonic()))
        finally:
            ticket.arrive(wait=False)
            ticket.arrive(wait=False)            # idempotent
    t0 = time.monotonic()
    threads = [threading.Thread(target=host, args=a) for a in
               (("fast", 0.0, False), ("slow", 0.3, False), ("broken", 0.1, True))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(n for n, _ in order) == ["fast", "slow"]
    assert all(at - t0 >= 0.29 for _, at in order)      # the fast one waited for the slow
    assert meet.pending == 0
