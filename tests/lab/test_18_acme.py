"""ACME certificates (tls.source: acme): certbot on the mail server, from the lab's ACME
CA (Debian's pebble on lab6), validated by DNS-01 through RFC 2136 updates to the lab's
DNS host; a deploy hook installs a certificate only after its checks."""
import socket
import ssl

import pytest
from cryptography import x509

from mailops.provision import verify
from mailops.provision.checks import tls
from mailops.core.resources.acme import DEPLOY_HOOK


def served(t, port: int, mode: str, ciphers: str) -> x509.Certificate:
    """The certificate served on ``port`` for one key type (chain verified on the way)."""
    ctx = t.context(ciphers)
    if mode in ("implicit", "imaps"):
        with socket.create_connection((t.address, port), 15) as raw, \
                ctx.wrap_socket(raw, server_hostname=t.hostname) as s:
            der = s.getpeercert(binary_form=True)
    else:
        with t.smtp(port, tls="starttls", context=ctx) as s:
            der = s.sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def serials(t) -> dict:
    return {(port, kind): served(t, port, mode, ciphers).serial_number
            for port, mode in tls.PORTS for kind, ciphers in tls.KINDS}


@pytest.fixture
def target(params):
    if params.tls.source != "acme":
        pytest.skip("these parameters do not use ACME")
    return verify.target_from(params)


def test_every_port_serves_both_acme_certificates_verified_against_the_acme_root(
        params, target, session):
    for port, mode in tls.PORTS:
        for kind, ciphers in tls.KINDS:
            cert = served(target, port, mode, ciphers)
            issuer = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
            assert issuer.startswith("Pebble Intermediate"), (port, kind, issuer)
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert params.hostname in names.value.get_values_for_type(x509.DNSName)
    # the lab CA alone does not vouch for them: the chain really ends at pebble's root
    ctx = ssl.create_default_context(cafile=str(params.path(params.tls.ca_dir) / "ca.crt"))
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection((target.address, 993), 10) as raw:
            ctx.wrap_socket(raw, server_hostname=target.hostname)
    # certbot holds both lineages, renewed by its own timer with the deploy hook
    conf = session.host.read_file(f"/etc/letsencrypt/renewal/{params.hostname}-ec.conf")
    assert b"renew_hook = " + DEPLOY_HOOK.encode() in conf and b"key_type = ecdsa" in conf
    assert b"dns-rfc2136" in conf and b"dns_rfc2136_secret" not in conf


def test_renewal_changes_the_served_serial_everywhere_and_verify_passes(params, target,
                                                                        session):
    before = serials(target)
    session.host.run(["certbot", "renew", "--force-renewal", "--no-random-sleep-on-renew"],
                     timeout=600)
    after = serials(target)
    assert all(after[k] != before[k] for k in before), (before, after)
    report = verify.run_checks(params)
    assert report.ok, report
    evidence = [c.evidence for c in report.checks if c.name.startswith("tls ")]
    assert len(evidence) == 8 and all("issued by Pebble" in e and "days left" in e
                                      for e in evidence), evidence


def test_a_deploy_with_a_key_that_does_not_match_leaves_the_old_certificate(params, target,
                                                                          session):
    """The hook's checks: a lineage whose key is not the certificate's is refused, exit
    1, and every port keeps serving what it served."""
    h = session.host
    before = serials(target)
    name = f"{params.hostname}-rsa"
    broken = f"/root/broken-lineage/{name}"
    h.run(["sh", "-c", 'set -e; rm -rf "$1"; mkdir -p "$1"; '
           'cp /etc/letsencrypt/live/$2/fullchain.pem "$1/"; '
           'openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1/privkey.pem" '
           '2>/dev/null', "broken", broken, name])
    served_before = h.read_file("/etc/mailops/tls/rsa.key")
    try:
        r = h.run(["env", f"RENEWED_LINEAGE={broken}", DEPLOY_HOOK], check=False)
    finally:
        h.run(["rm", "-rf", "/root/broken-lineage"])
    assert r.exit_code == 1 and "does not match the certificate" in r.err, (r.exit_code, r.err)
    assert "served certificate is unchanged" in r.err
    assert h.read_file("/etc/mailops/tls/rsa.key") == served_before
    assert serials(target) == before
    assert not h.run(["sh", "-c", "ls /etc/mailops/tls/*.mailops-*"], check=False).ok
