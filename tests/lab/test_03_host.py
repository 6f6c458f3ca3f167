"""What the lab proves about the host: firewall, resolver, SSH transport."""
import socket
import subprocess
import sys

import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import ROOT
from mailops.core.host import CommandTimeout, HostKeyError, SSHHost
from mailops.core.params import ParamsError

LISTENER = ("perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalPort => 8080, "
            "Listen => 5, ReuseAddr => 1) or die $!; while ($c = $s->accept) "
            "{ print $c qq(hi\\n); close $c }'")
PROBE = ("perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(PeerAddr => q(127.0.0.1:8080), "
         "Timeout => 2) ? q(open) : q(closed)'")


def test_firewall_refuses_a_closed_port_while_ssh_works(session):
    assert session.plan("10-base").empty            # the firewall is applied
    host = session.host
    host.run(["sh", "-c", f"nohup {LISTENER} </dev/null >/dev/null 2>&1 &"])
    try:
        assert host.run(["sh", "-c", f"sleep 0.3; {PROBE}"]).out == "open"   # listening inside
        with pytest.raises(ConnectionRefusedError):                       # reset from outside
            socket.create_connection((str(session.params.lab.address), 8080), timeout=3)
        assert host.run(["echo", "ssh works"]).out == "ssh works\n"
        # and without the firewall the port would have answered: the test can fail
        host.run(["nft", "delete", "table", "inet", "mailops"])
        with socket.create_connection((str(session.params.lab.address), 8080), timeout=3) as c:
            assert c.recv(3) == b"hi\n"
    finally:
        host.run(["pkill", "-f", "LocalPort => 8080"], check=False)
        host.run(["nft", "-f", "/etc/nftables.conf"])


def _ask(port: int, name: str, rdtype: str):
    return dns.query.tcp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=5)


def test_unbound_answers_lab_names_and_refuses_the_rest(session):
    with session.host.forward(53) as port:        # through an SSH port forward
        a = _ask(port, "mx1.lab.test", "A")
        assert a.rcode() == dns.rcode.NOERROR
        assert [r.to_text() for rr in a.answer for r in rr] == ["198.51.100.10"]
        mx = _ask(port, "example.test", "MX")        # mx1's, beside the Debian 13 lab's mx2
        assert "10 mx1.lab.test." in [r.to_text() for rr in mx.answer for r in rr], mx
        ptr = _ask(port, "10.100.51.198.in-addr.arpa", "PTR")
        assert [r.to_text() for rr in ptr.answer for r in rr] == ["mx1.lab.test."]
        assert _ask(port, "nope.lab.test", "A").rcode() == dns.rcode.NXDOMAIN
        for outside in ("debian.org", "example.com", "8.8.8.8.in-addr.arpa"):
            assert _ask(port, outside, "A").rcode() == dns.rcode.REFUSED, outside
    # the server itself resolves through it
    assert session.host.run(["getent", "hosts", "mx1.lab.test"]).out.split()[0] == "198.51.100.10"


def test_unknown_host_key_is_refused(lab_up, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = SSHHost(lab_up.url, key_file=lab_up.key_file, known_hosts=empty)
    with pytest.raises(HostKeyError, match="host key unknown"):
        host.run(["true"])
    with pytest.raises(HostKeyError, match="does not exist"):
        SSHHost(lab_up.url, key_file=lab_up.key_file, known_hosts=tmp_path / "nope").run(["true"])


def test_changed_host_key_is_refused(lab_up, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = (tmp_path / "other.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{lab_up.address} {kind} {key}\n")
    with pytest.raises(HostKeyError, match="host key CHANGED"):
        SSHHost(lab_up.url, key_file=lab_up.key_file, known_hosts=kh).run(["true"])
    assert lab_up.known_hosts.read_text().split()[2] != key


def test_large_output_both_streams_and_stdin_do_not_deadlock(session):
    r = session.host.run(["sh", "-c", "cat >/dev/null; head -c 3000000 /dev/zero >&2; "
                                      "head -c 4000000 /dev/zero; exit 3"],
                         stdin=b"x" * 2_000_000, check=False)
    assert (len(r.stdout), len(r.stderr), r.exit_code) == (4_000_000, 3_000_000, 3)


def test_timeout_over_ssh(session):
    with pytest.raises(CommandTimeout, match="timed out"):
        session.host.run(["sleep", "5"], timeout=0.5)
    assert session.host.run(["true"]).ok       # the connection survives


def test_batched_read_is_one_round_trip_and_fast(session):
    session.info
    t = session.plan("10-base").duration
    assert session.plan("10-base").empty and t < 5


def test_bad_parameters_fail_before_any_connection(tmp_path):
    """A listener stands where the target points; a bad file must not reach it,
    a good one does (so the test can fail)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    kh = tmp_path / "known_hosts"
    kh.write_text("")

    def run(hostname):
        f = tmp_path / "p.yaml"
        f.write_text(f"target: ssh://root@127.0.0.1:{port}\nssh: {{key_file: k, known_hosts: known_hosts}}\n"
                     f"hostname: {hostname}\nmail_domains: [lab.test]\naddresses: [198.51.100.10]\n")
        return subprocess.run([sys.executable, "-m", "mailops.cli.main", "provision", "--params", str(f)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    bad = run("not_a_hostname")
    assert bad.returncode == 2 and "hostname: must be a fully qualified" in bad.stderr
    with pytest.raises(BlockingIOError):
        listener.accept()
    good = run("mx1.lab.test")
    assert good.returncode != 0
    conn, _ = listener.accept()        # the valid file did try to connect
    conn.close()
    listener.close()
    assert isinstance(ParamsError("x", ["y"]), ValueError)
