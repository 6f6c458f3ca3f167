"""`mailops dns publish`: what it plans, and the RFC 2136 updates it sends, signed with
TSIG, to a small primary on loopback that checks the signature as a real one does."""
import base64
import ipaddress
import socketserver
import struct
import threading
from pathlib import Path
from types import SimpleNamespace

import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.exception
import dns.flags
import dns.rdataset
import dns.tsigkeyring
import dns.zone
import pytest
import yaml

from mailops.provision import dnsrecords
from mailops.provision.dnsrecords import Change, DnsRecord, Publisher, PublishError, publish_plan
from mailops.core.params import load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]
SECRET = base64.b64encode(b"k" * 32).decode()


class Primary:
    """An authoritative server for ``zones`` on 127.0.0.1 (TCP): answers from its zone
    data, applies signed updates (dnspython's zone), refuses unsigned or wrongly signed
    ones with NOTAUTH, as BIND and Knot do."""

    def __init__(self, zones, key_name="mailops", secret=SECRET):
        self.keyring = dns.tsigkeyring.from_text({key_name: secret})
        self.zones = {z: dns.zone.from_text(f"@ 60 IN SOA ns.{z}. h.{z}. 1 60 60 600 5\n"
                                            f"@ 60 IN NS ns.{z}.\n", origin=z,
                                            relativize=False) for z in zones}
        self.updates = []
        primary = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                while True:
                    head = self.request.recv(2)
                    if len(head) < 2:
                        return
                    (n,) = struct.unpack("!H", head)
                    wire = b""
                    while len(wire) < n:
                        wire += self.request.recv(n - len(wire))
                    out = primary.answer(wire)
                    self.request.sendall(struct.pack("!H", len(out)) + out)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, wire: bytes) -> bytes:
        try:
            q = dns.message.from_wire(wire, keyring=self.keyring)
        except dns.exception.DNSException:          # no such key, a bad signature
            r = dns.message.Message(id=struct.unpack("!H", wire[:2])[0])
            r.flags |= dns.flags.QR
            r.set_rcode(dns.rcode.NOTAUTH)
            return r.to_wire()
        r = dns.message.make_response(q)
        if q.opcode() == dns.opcode.UPDATE:
            zone = self.zones.get(q.zone[0].name.to_text().rstrip("."))
            if zone is None or not q.had_tsig:
                r.set_rcode(dns.rcode.NOTAUTH if zone is not None else dns.rcode.NOTZONE)
                return r.to_wire()
            self.updates.append(q)
            with zone.writer() as txn:
                for rr in q.update:
                    name = rr.name
                    if rr.deleting == dns.rdataclass.ANY:          # delete the rrset
                        txn.delete(name, rr.rdtype)
                    elif rr.deleting == dns.rdataclass.NONE:       # delete these values
                        for rd in rr:
                            txn.delete(name, dns.rdataset.from_rdata(0, dns.rdata.from_text(
                                dns.rdataclass.IN, rr.rdtype, rd.to_text())))
                    else:
                        for rd in rr:
                            txn.add(name, rr.ttl, rd)
            return r.to_wire()
        qname = q.question[0].name
        for origin, zone in self.zones.items():
            if qname.is_subdomain(dns.name.from_text(origin)):
                r.flags |= dns.flags.AA
                rds = zone.get_rdataset(qname, q.question[0].rdtype)
                if rds is not None:
                    r.answer.append(dns.rrset.from_rdata_list(qname, rds.ttl, list(rds)))
                return r.to_wire()
        r.set_rcode(dns.rcode.REFUSED)
        return r.to_wire()

    def values(self, name, rtype):
        return dnsrecords.Resolver(self.port, timeout=5).ask(name, rtype)[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def primary():
    p = Primary(["lab.test", "example.test", "100.51.198.in-addr.arpa"])
    yield p
    p.close()


def lab_params(tmp_path, port, secret=SECRET, **dns_extra):
    """lab.yaml with dns.update pointed at the loopback primary and its key in a file."""
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    (tmp_path / "tsig.yaml").write_text(yaml.safe_dump({"dns_tsig": secret}))
    (tmp_path / "tsig.yaml").chmod(0o600)
    data["dns"]["update"] = {"server": "127.0.0.1", "port": port,
                             "key_secret": f"file:{tmp_path}/tsig.yaml#dns_tsig"}
    data["dns"].update(dns_extra)
    return parse_params(data, base_dir=ROOT / "parameters")


DKIM = "v=DKIM1; k=rsa; p=" + "B" * 392       # two TXT strings


def session_of(p):
    return SimpleNamespace(params=p)


def publish(p, apply):
    """dnsrecords.publish with the DKIM keys given (the unit tier has no rspamd)."""
    real = dnsrecords.dkim_record_of
    dnsrecords.dkim_record_of = lambda s, d: DnsRecord(f"mail._domainkey.{d}", "TXT", DKIM) \
        if d == "lab.test" else None
    try:
        return dnsrecords.publish(session_of(p), apply=apply)
    finally:
        dnsrecords.dkim_record_of = real


def test_publish_sends_what_is_missing_signed_and_then_nothing(primary, tmp_path):
    p = lab_params(tmp_path, primary.port)
    plan = publish(p, apply=False)
    assert plan.status == "planned" and not primary.updates          # a dry run sends nothing
    assert {str(c).split()[1:4:2][0] for c in plan.changes} >= {"mx1.lab.test.",
                                                                "mail._domainkey.lab.test."}
    done = publish(p, apply=True)
    assert done.ok and done.status == "applied", done
    assert all(u.had_tsig for u in primary.updates) and len(primary.updates) == 3   # one per zone
    assert primary.values("mail._domainkey.lab.test", "TXT") == [DKIM]
    assert primary.values("lab.test", "MX") == ["10 mx1.lab.test."]
    assert primary.values("lab.test", "TXT") == ["v=spf1 mx ip4:198.51.100.1 -all"]
    rev = ipaddress.ip_address("198.51.100.10").reverse_pointer
    assert primary.values(rev, "PTR") == ["mx1.lab.test."]
    again = publish(p, apply=True)
    assert again.changes == [] and again.status == "no changes" and len(primary.updates) == 3
    assert SECRET not in repr(Publisher(p.dns.update, p.base_dir)) and SECRET not in str(done)
    assert SECRET not in str(done.record())


def test_publish_replaces_only_its_own_kind(primary, tmp_path):
    """A wrong SPF is replaced, another TXT at the name stays; another MX stays beside ours."""
    p = lab_params(tmp_path, primary.port)
    pub = Publisher(p.dns.update, p.base_dir)
    pub.send([Change("add", DnsRecord("lab.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")),
              Change("add", DnsRecord("lab.test", "TXT", "site-verification=abc")),
              Change("add", DnsRecord("lab.test", "MX", "20 backup.example.net."))])
    plan = publish(p, apply=False)
    spf = [str(c) for c in plan.changes if "spf1" in str(c)]
    assert any(s.startswith("delete") and "192.0.2.0/24" in s for s in spf), spf
    publish(p, apply=True)
    assert sorted(primary.values("lab.test", "TXT")) == sorted(
        ["v=spf1 mx ip4:198.51.100.1 -all", "site-verification=abc"])
    assert sorted(primary.values("lab.test", "MX")) == ["10 mx1.lab.test.",
                                                        "20 backup.example.net."]


def test_a_wrong_key_is_refused_and_changes_nothing(primary, tmp_path):
    p = lab_params(tmp_path, primary.port, secret=base64.b64encode(b"x" * 32).decode())
    with pytest.raises(PublishError, match="refused the update"):
        publish(p, apply=True)
    assert primary.values("lab.test", "MX") == [] and not primary.updates


def test_a_zone_the_server_does_not_hold_is_a_clear_error(tmp_path):
    p = Primary(["other.test"])
    try:
        with pytest.raises(PublishError, match="not authoritative for any zone holding"):
            publish(lab_params(tmp_path, p.port), apply=True)
        assert not p.updates
    finally:
        p.close()


def test_without_dns_update_publish_says_to_publish_by_hand():
    p = load_params(ROOT / "parameters" / "example.yaml")
    with pytest.raises(PublishError, match="by hand"):
        dnsrecords.publish(session_of(p))


def test_plan_deletes_stale_values_and_keeps_mx_beside():
    checks = [dnsrecords.RecordCheck(DnsRecord("a.test", "TXT", "v=spf1 mx -all"), "TXT (SPF)",
                                     ("v=spf1 -all",), False, ("v=spf1 -all",)),
              dnsrecords.RecordCheck(DnsRecord("a.test", "MX", "10 mx.a.test."), "MX",
                                     ("10 other.test.",), False, ()),
              dnsrecords.RecordCheck(DnsRecord("b.test", "MX", "10 mx.a.test."), "MX",
                                     ("10 mx.a.test.",), True, ())]
    assert [str(c) for c in publish_plan(checks)] == [
        'delete a.test. IN TXT "v=spf1 -all"', 'add    a.test. IN TXT "v=spf1 mx -all"',
        "add    a.test. IN MX 10 mx.a.test."]


def test_zone_lines_parse_back():
    r = DnsRecord.from_zone_line('mail._domainkey.x.test. 300 IN TXT "v=DKIM1; p=AB" "CD"')
    assert r == DnsRecord("mail._domainkey.x.test", "TXT", "v=DKIM1; p=ABCD")
    assert DnsRecord.from_zone_line("gw.lab.test. A 198.51.100.1") == \
        DnsRecord("gw.lab.test", "A", "198.51.100.1")
    assert DnsRecord.from_zone_line(r.zone_line()) == r
    with pytest.raises(ValueError, match="not a DNS record"):
        DnsRecord.from_zone_line("gw.lab.test. 300 IN")


def test_tsig_key_names_and_secrets_are_validated():
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["dns"]["update"]["key_secret"] = "c2VjcmV0c2VjcmV0"          # a literal secret
    from mailops.core.params import ParamsError
    with pytest.raises(ParamsError) as exc:
        parse_params(data, base_dir=ROOT / "parameters")
    assert "c2VjcmV0c2VjcmV0" not in str(exc.value)
    data["dns"]["update"]["key_secret"] = "file:../.lab/secrets.yaml#dns_tsig"
    data["dns"]["spf"] = "v=spf1 mx"                                   # no all: refused
    with pytest.raises(ParamsError, match="spf"):
        parse_params(data, base_dir=ROOT / "parameters")


def test_lab_dns_host_must_be_another_host():
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["lab"]["dns_host"]["address"] = data["lab"]["backup_host"]["address"]
    from mailops.core.params import ParamsError
    with pytest.raises(ParamsError, match="different hosts"):
        parse_params(data, base_dir=ROOT / "parameters")


def test_dane_tlsa_records_published_for_each_served_key_and_a_stale_one_removed(
        primary, tmp_path, monkeypatch):
    """dns.dane: one TLSA 3 1 1 per served key at _25._tcp.<host>; after a key change
    the old record is deleted and the new one added; without dns.dane, no TLSA."""
    rsa, ec, new_ec = ("3 1 1 " + c * 64 for c in "abc")
    keys = [rsa, ec]
    monkeypatch.setattr(dnsrecords, "tlsa_values", lambda s: list(keys))
    p = lab_params(tmp_path, primary.port, dane=True)
    assert publish(p, apply=True).ok
    assert sorted(primary.values("_25._tcp.mx1.lab.test", "TLSA")) == [rsa, ec]
    keys[1] = new_ec
    plan = publish(p, apply=False)
    tlsa = [str(c) for c in plan.changes if "TLSA" in str(c)]
    assert any(t.startswith("delete") and ec.split()[-1] in t for t in tlsa), tlsa
    assert any(t.startswith("add") and new_ec.split()[-1] in t for t in tlsa), tlsa
    assert publish(p, apply=True).ok
    assert sorted(primary.values("_25._tcp.mx1.lab.test", "TLSA")) == [rsa, new_ec]
    assert publish(p, apply=True).changes == []
    monkeypatch.undo()
    plain = lab_params(tmp_path, primary.port)
    assert not [c for c in dnsrecords.record_checks(session_of(plain), Publisher(
        plain.dns.update, plain.base_dir).resolver, dkim={}) if c.record.type == "TLSA"]
