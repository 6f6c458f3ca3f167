"""The lab's DNS host (Knot, lab6) as a DNS provider: the mail server's records are
published there by RFC 2136 (step 88-dns), its unbound asks it, and `mailops dns check`
and verify see a record removed or changed there, with the record to publish."""
import base64
import time
import uuid

import pytest

from mailops.provision import dnsrecords, verify
from mailops.lab import internet
from mailops.provision.checks import dns as dns_checks
from mailops.provision.checks.result import CheckFailed
from mailops.provision.dnsrecords import Change, DnsRecord, Publisher, PublishError


@pytest.fixture
def provider(params):
    """The lab's DNS host, as the operator's provider account (the same TSIG key)."""
    return Publisher(params.dns.update, params.base_dir)


def settled(fn, seconds=10):
    """fn() until it returns truthy (the server's unbound caches answers for 5 s)."""
    deadline = time.monotonic() + seconds
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_records_are_published_and_the_servers_resolver_asks_the_dns_host(params, session,
                                                                          provider):
    from conftest import LAB_PARAMS, mailops_cli
    proc = mailops_cli("dns", "check", "--params", str(LAB_PARAMS))
    assert "12 of 12 records as expected" in proc.stdout, proc.stdout
    # a name only the DNS host knows is answered by the mail server's unbound: no local data
    name = f"probe-{uuid.uuid4().hex[:8]}.lab.test"
    provider.send([Change("add", DnsRecord(name, "A", "198.51.100.99"))])
    try:
        with session.host.forward(53) as port:
            r = dnsrecords.Resolver(port)
            assert settled(lambda: r.ask(name, "A")[1]) == ["198.51.100.99"]
            assert r.ask("example.com", "A")[0] == "REFUSED"        # and nothing outside
    finally:
        provider.send([Change("delete", DnsRecord(name, "A", None))])
    # the DNS host's own name, from the lab's records
    assert provider.resolver.ask("ns.lab.test", "A")[1] == [str(params.lab.dns_host.address)]


def test_a_removed_dkim_key_and_a_changed_spf_fail_check_and_verify_until_published(
        params, session, provider):
    from conftest import LAB_PARAMS, mailops_cli
    key = f"{params.rspamd.dkim_selector}._domainkey.lab.test"
    provider.send([Change("delete", DnsRecord(key, "TXT", None)),
                   Change("delete", DnsRecord("lab.test", "TXT", None)),
                   Change("add", DnsRecord("lab.test", "TXT", "v=spf1 ip4:203.0.113.0/24 -all")),
                   Change("add", DnsRecord("lab.test", "TXT", "site-verification=mailops"))])
    try:
        # both changes seen (the server's unbound may still hold one of the old answers
        # for up to 5 s after the other expired)
        both = (f"missing   TXT (DKIM)    {key}", "different TXT (SPF)     lab.test")
        proc = settled(lambda: (lambda p: p if p.returncode == 1 and all(
            w in p.stdout for w in both) else None)(
            mailops_cli("dns", "check", "--params", str(LAB_PARAMS), check=False)))
        assert proc, "dns check does not show the removed DKIM key and the changed SPF"
        out = proc.stdout
        publish = out.split("publish these (zone-file syntax):")[1]
        assert f'{key}. IN TXT "v=DKIM1; k=rsa; p=' in publish
        assert 'lab.test. IN TXT "v=spf1 mx ip4:198.51.100.1 -all"' in publish
        # only what is wrong: no MX record, no DMARC record (by record, not by substring:
        # a DKIM key's base64 may well contain "MX")
        records = [line.split() for line in publish.splitlines() if " IN " in line]
        assert {r[2] for r in records} == {"TXT"}, publish         # name IN TYPE value
        assert not any(r[0].startswith("_dmarc.") for r in records), publish
        # verify fails the same way, naming the record to publish
        with pytest.raises(CheckFailed) as failed:
            dns_checks.published(session, settle=0)
        assert f"{key} TXT (DKIM) missing (publish: {key}. IN TXT" in str(failed.value)
        report = verify.run_checks(params)
        assert [c.name for c in report.failed] == ["dns records"], report
        # a dry run sends nothing
        proc = mailops_cli("dns", "publish", "--params", str(LAB_PARAMS))
        assert "would send" in proc.stdout and provider.resolver.ask(key, "TXT")[1] == []
    finally:
        proc = mailops_cli("dns", "publish", "--params", str(LAB_PARAMS), "--apply")
    assert f"add    {key}. IN TXT" in proc.stdout, proc.stdout
    assert 'delete lab.test. IN TXT "v=spf1 ip4:203.0.113.0/24 -all"' in proc.stdout
    # the operator's other TXT record at the name is left alone
    assert "site-verification=mailops" in provider.resolver.ask("lab.test", "TXT")[1]
    provider.send([Change("delete", DnsRecord("lab.test", "TXT", "site-verification=mailops"))])
    assert settled(lambda: mailops_cli("dns", "check", "--params", str(LAB_PARAMS),
                                       check=False).returncode == 0)
    assert dns_checks.published(session).startswith("12 records published")


def test_a_wrong_tsig_key_is_refused_and_changes_nothing(params, provider):
    u = params.dns.update
    wrong = type(u).model_validate({**u.model_dump(), "key_secret": "env:MAILOPS_WRONG_TSIG"})
    import os
    os.environ["MAILOPS_WRONG_TSIG"] = base64.b64encode(b"w" * 32).decode()
    try:
        before = provider.resolver.ask("lab.test", "MX")[1]
        with pytest.raises(PublishError, match="refused the update of lab.test"):
            Publisher(wrong, params.base_dir).send(
                [Change("add", DnsRecord("lab.test", "MX", "5 evil.example."))])
        assert provider.resolver.ask("lab.test", "MX")[1] == before
    finally:
        del os.environ["MAILOPS_WRONG_TSIG"]


def test_dns_host_rebuilt_keeps_the_published_records(params, provider):
    """`mailops lab up` again (zones re-declared, knot reloaded) keeps what was published."""
    internet.prepare_dns_host(params, log=lambda m: None)
    key = f"{params.rspamd.dkim_selector}._domainkey.lab.test"
    assert provider.resolver.ask(key, "TXT")[1][0].startswith("v=DKIM1")
