"""Two mail servers on the lab's internet: mx1 (lab.test) and mx.peer.test (lab7), both
provisioned by mailops in one run, mail between them direct to MX over the lab's DNS, as
in production: signed, checked (DKIM, SPF, DMARC), over TLS with the certificate verified
(to mx.peer.test by DANE: the lab zones are DNSSEC-signed and peer.test publishes TLSA;
back to mx1 because mx.peer.test lists lab.test in mail.tls_policy as `secure`, as partners
do), a wrong TLSA record keeping mail queued until the right one is back, bounced when the
user does not exist, and a forged lab.test sender meets lab.test's DMARC policy."""
import email
import email.policy
import json
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from mailops.lab import hosts as lab
from mailops.lab import internet
from mailops.provision import verify
from mailops.provision.checks.clients import SMTP
from mailops.core.host import LocalHost
from mailops.core.params import load_params
from mailops.provision.session import Session

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "parameters" / "lab-peer.yaml"
FORGER = "198.51.100.31"          # another lab address: not mx1, not allowed by lab.test's SPF


@pytest.fixture(scope="module")
def peer(lab_up, lab_params):
    """mx.peer.test up and both servers provisioned by one `mailops provision` run."""
    from conftest import LAB_PARAMS, TRIXIE, mailops_cli, publish_dns
    p = load_params(PEER)
    spec = lab.LabSpec.from_params(p)
    # the Debian 13 lab (mx2) is an MX of lab.test too, at mx1's preference: with it up,
    # the peer could deliver lab.test's mail there, and this module reads it at mx1
    lab.down(lab.LabSpec.from_params(load_params(TRIXIE)))
    internet.prepare_dns_host(p, log=lambda m: None)         # adds peer.test to the DNS host
    lab.up(spec)
    proc = mailops_cli("provision", "--json", "--params", str(LAB_PARAMS), str(PEER), "--apply",
                       "--verify", check=False)
    runs = json.loads(proc.stdout)
    yield p, runs, proc
    lab.down(spec)
    publish_dns(lab_params)        # mx1's records as they were (the run left them so too)


def send(t, port, login, sender, rcpt, subject, body="Hello from the lab's internet.\n",
         source=None):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, rcpt, subject
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.split("@")[1])
    msg["Date"] = email.utils.formatdate()
    msg.set_content(body)
    if login:
        with t.smtp(port) as s:
            s.login(login, t.passwords[login].reveal())
            s.send_message(msg)
    else:
        with SMTP(t.address, port, t.hostname, timeout=20, local_hostname="forger.example",
                  source_address=(source, 0) if source else None) as s:
            s.starttls(context=t.context())
            s.ehlo("forger.example")
            s.send_message(msg, from_addr=sender, to_addrs=[rcpt])
    return msg["Message-ID"]


def fetch(t, user, subject, folder="INBOX", wait=60):
    """The message with ``subject`` in ``user``'s ``folder`` (deleted after reading)."""
    deadline = time.monotonic() + wait
    with t.imap(user) as m:
        while True:
            m.select(folder)
            _, found = m.search(None, "SUBJECT", f'"{subject}"')
            if found[0].split() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        ids = found[0].split()
        assert ids, f"no message {subject!r} in {user}'s {folder} after {wait} s"
        _, got = m.fetch(ids[-1], "(RFC822)")
        m.store(ids[-1], "+FLAGS", "\\Deleted")
        m.expunge()
    return email.message_from_bytes(got[0][1], policy=email.policy.default)


def auth_results(msg) -> str:
    return " ".join(str(h) for h in msg.get_all("Authentication-Results", []))


def test_both_servers_provisioned_in_one_run(peer):
    p, runs, proc = peer
    assert runs["ok"], proc.stdout[-3000:] + proc.stderr[-3000:]
    hosts = {r["target"]: r for r in runs["hosts"]}
    assert set(hosts) == {"ssh://root@198.51.100.10:22", "ssh://root@198.51.100.20:22"}
    for r in runs["hosts"]:
        assert {s["step"]: s["status"] for s in r["steps"]}["90-verify"] == "verified", r
    # the peer's verify sent to alice@lab.test and read it back at mx1 (after mx1 was
    # built: the run's hosts meet before their checks): all three pass, over TLS
    record = json.loads((Path(hosts["ssh://root@198.51.100.20:22"]["run_dir"])
                         / "90-verify.json").read_text())
    (mxmx,) = [c for c in record["checks"] if c["name"] == "mx to mx alice@lab.test"]
    assert mxmx["ok"], mxmx
    for verdict in ("dkim=pass", "spf=pass", "dmarc=pass", "d=peer.test", "over TLSv1."):
        assert verdict in mxmx["evidence"], mxmx


def test_one_hosts_broken_parameters_fail_that_host_only(peer, tmp_path):
    from conftest import LAB_PARAMS, mailops_cli
    data = yaml.safe_load(PEER.read_text())
    data["mail"]["mailboxes"][0]["address"] = "carol@not-our-domain.test"
    broken = PEER.parent / f".test-broken-{uuid.uuid4().hex[:8]}.yaml"
    broken.write_text(yaml.safe_dump(data))
    try:
        proc = mailops_cli("provision", "--json", "--params", str(LAB_PARAMS), str(broken),
                           "--apply", check=False)
    finally:
        broken.unlink()
    assert proc.returncode == 1
    runs = json.loads(proc.stdout)
    good, bad = runs["hosts"]
    assert good["ok"] and good["target"] == "ssh://root@198.51.100.10:22", good
    assert not bad["ok"] and "domain not in mail_domains" in bad["steps"][0]["error"], bad
    assert len(bad["steps"]) == 1                       # nothing of it ran


def test_mail_goes_mx_to_mx_signed_checked_and_over_verified_tls(peer, params):
    p, _, _ = peer
    t1, t2 = verify.target_from(params), verify.target_from(p)
    subject = f"mx to mx {uuid.uuid4().hex[:8]}"
    send(t1, 587, "alice@lab.test", "alice@lab.test", "carol@peer.test", subject)
    got = fetch(t2, "carol@peer.test", subject)
    ar = auth_results(got)
    assert "dkim=pass" in ar and "header.d=lab.test" in ar, ar
    assert "spf=pass" in ar and "dmarc=pass" in ar, ar
    # mx1 found mx.peer.test by MX and said who it is: HELO, PTR and address agree
    received = [str(h) for h in got.get_all("Received")]
    hop = next((h for h in received if h.startswith("from mx1.lab.test")), received)
    assert hop.startswith("from mx1.lab.test (mx1.lab.test [198.51.100.10])"), hop
    assert "by mx.peer.test (Postfix)" in hop, hop
    assert "using TLSv1.3" in hop or "using TLSv1.2" in hop, hop
    with Session(params) as s:
        log = s.host.run(["grep", "-h", "TLS connection established to mx.peer.test",
                          "/var/log/postfix.log"], check=False).out
    # "Verified" by DANE: the TLSA record (3 1 1, over DNSSEC) matches the key served
    last = log.strip().splitlines()[-1]              # this message's connection
    assert "Verified TLS connection established to mx.peer.test" in last, log[-500:]
    # and the reply comes back the same way
    back = f"reply {subject}"
    send(t2, 587, "carol@peer.test", "carol@peer.test", "alice@lab.test", back)
    reply = fetch(t1, "alice@lab.test", back)
    ar = auth_results(reply)
    assert "dkim=pass" in ar and "header.d=peer.test" in ar and "dmarc=pass" in ar, ar
    # "Verified" by policy: mail.tls_policy says secure for lab.test (chain and name)
    with Session(p) as s:
        log = s.host.run(["grep", "-h", "TLS connection established to mx1.lab.test",
                          "/var/log/postfix.log"], check=False).out
    assert "Verified TLS" in log.strip().splitlines()[-1], log[-500:]


def test_a_wrong_tlsa_record_keeps_mail_queued_until_the_right_one_is_back(peer, params):
    """DANE fails closed: with a TLSA record that matches no served key, mx1 keeps the
    message (it says why) rather than sending it over an unverified connection; the
    right record published again (88-dns's publish), the queue run delivers it."""
    from conftest import publish_dns
    from mailops.provision.dnsrecords import Change, DnsRecord, Publisher, Resolver, tlsa_name
    p, _, _ = peer
    t1, t2 = verify.target_from(params), verify.target_from(p)
    pub = Publisher(p.dns.update, p.base_dir, ttl=p.dns.ttl)
    name = tlsa_name(p)
    wrong = "3 1 1 " + "00" * 32
    pub.send([Change("delete", DnsRecord(name, "TLSA", None)),
              Change("add", DnsRecord(name, "TLSA", wrong))])
    try:
        # until mx1's resolver answers the wrong record (it may hold the right one for up
        # to 5 s from the mail just before): otherwise the message goes out verified
        with Session(params) as s, s.host.forward(53) as port:
            resolver, deadline = Resolver(port), time.monotonic() + 30
            while resolver.ask(name, "TLSA")[1] != [wrong] and time.monotonic() < deadline:
                time.sleep(0.5)
            assert resolver.ask(name, "TLSA")[1] == [wrong]
        # and postfix's smtp processes keep a TLSA answer in memory for its TTL (Postfix's
        # DANE cache; at most 5 s here, unbound's cache-max-ttl): let the right one expire
        time.sleep(6)
        subject = f"dane {uuid.uuid4().hex[:8]}"
        send(t1, 587, "alice@lab.test", "alice@lab.test", "carol@peer.test", subject)
        with Session(params) as s:
            deadline = time.monotonic() + 60
            while True:
                log = s.host.run(["grep", "-h", "carol@peer.test", "/var/log/postfix.log"],
                                 check=False).out
                if "status=deferred" in log.splitlines()[-1] or time.monotonic() > deadline:
                    break
                time.sleep(1)
            last = log.splitlines()[-1]
            assert "status=deferred" in last and "not verified" in last.lower(), last
            assert "carol@peer.test" in s.host.run(["mailq"]).out
    finally:
        publish_dns(p)                          # the right TLSA records back
    with Session(params) as s:
        s.host.run(["postqueue", "-f"])
    got = fetch(t2, "carol@peer.test", subject)
    assert auth_results(got).count("=pass") >= 3


def test_mail_to_an_unknown_user_at_the_peer_bounces_to_the_sender(peer, params):
    t1 = verify.target_from(params)
    subject = f"nobody home {uuid.uuid4().hex[:8]}"
    send(t1, 587, "alice@lab.test", "alice@lab.test", "nobody@peer.test", subject)
    bounce = fetch(t1, "alice@lab.test", "Undelivered Mail Returned to Sender")
    text = bounce.as_string()
    assert "nobody@peer.test" in text and subject in text and "mx.peer.test" in text
    assert "550" in text, text[:2000]


def test_a_forged_lab_sender_meets_lab_tests_dmarc_policy_at_the_peer(peer, params):
    p, _, _ = peer
    t2 = verify.target_from(p)
    local = LocalHost()
    local.run(["ip", "addr", "replace", f"{FORGER}/32", "dev", lab.LabSpec.from_params(p).bridge])
    try:
        subject = f"forged {uuid.uuid4().hex[:8]}"
        send(t2, 25, None, "alice@lab.test", "carol@peer.test", subject, source=FORGER)
    finally:
        local.run(["ip", "addr", "del", f"{FORGER}/32", "dev",
                   lab.LabSpec.from_params(p).bridge], check=False)
    policy = params.dns.dmarc_policy
    assert policy == "quarantine"
    got = fetch(t2, "carol@peer.test", subject, folder="Junk")     # quarantined: filed as spam
    ar = auth_results(got)
    assert "dmarc=fail" in ar and "spf=fail" in ar, ar
    assert got["X-Spam"] == "Yes"
