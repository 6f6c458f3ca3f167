"""A small CA on the controller for self-signed mode (the lab).

The CA is created once; an RSA and an EC certificate are issued for the mail
host name and its addresses, and reissued only when the names change, the CA
changes, or fewer than 30 days are left.  Clients (tests, the verify notebook)
verify the server against ``ca.crt`` instead of switching checks off.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RENEW_BEFORE = dt.timedelta(days=30)
LEAF_DAYS = 397


@dataclasses.dataclass(frozen=True)
class Issued:
    ca_cert: bytes
    rsa_key: bytes = dataclasses.field(repr=False)
    rsa_cert: bytes = b""
    ec_key: bytes = dataclasses.field(default=b"", repr=False)
    ec_cert: bytes = b""


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ensure_ca(d: Path, common_name: str = "mailops lab CA"):
    key_path, crt_path = d / "ca.key", d / "ca.crt"
    if key_path.exists() and crt_path.exists():
        return (serialization.load_pem_private_key(key_path.read_bytes(), None),
                x509.load_pem_x509_certificate(crt_path.read_bytes()))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_private(key_path, _pem_key(key))
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _sans(hostname: str, addresses) -> list:
    return [x509.DNSName(hostname)] + [x509.IPAddress(ipaddress.ip_address(str(a)))
                                       for a in addresses]


def crl_url(hostname: str) -> str:
    """Where the CA says its revocation list is (certificates without a CRL or
    OCSP URI are rated HIGH by testssl; a public CA's always carry one)."""
    return f"http://ca.{hostname.split('.', 1)[1]}/mailops-ca.crl"


def _current(cert_path: Path, ca_cert, sans) -> bool:
    if not cert_path.exists():
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except x509.ExtensionNotFound:
        return False
    return (cert.issuer == ca_cert.subject and set(have) == set(sans)
            and cert.not_valid_after_utc - _now() > RENEW_BEFORE)


def _issue(kind: str, ca_key, ca_cert, hostname: str, sans):
    key = rsa.generate_private_key(65537, 3072) if kind == "rsa" else \
        ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            # key identifiers, as public CAs issue them (strict verifiers, e.g. Python 3.13's
            # default context, refuse a certificate without the authority's)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier(crl_url(hostname))], None, None, None)]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


def ensure_issued(ca_dir: Path, hostname: str, addresses,
                  ca_name: str = "mailops lab CA") -> Issued:
    """The CA and both certificates, created or renewed as needed."""
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key, ca_cert = _ensure_ca(ca_dir, ca_name)
    sans = _sans(hostname, addresses)
    out = {}
    for kind in ("rsa", "ec"):
        key_path, crt_path = ca_dir / f"{hostname}.{kind}.key", ca_dir / f"{hostname}.{kind}.crt"
        if not (key_path.exists() and _current(crt_path, ca_cert, sans)):
            key_pem, crt_pem = _issue(kind, ca_key, ca_cert, hostname, sans)
            _write_private(key_path, key_pem)
            crt_path.write_bytes(crt_pem)
        out[f"{kind}_key"] = key_path.read_bytes()
        out[f"{kind}_cert"] = crt_path.read_bytes()
    return Issued(ca_cert=(ca_dir / "ca.crt").read_bytes(), **out)
