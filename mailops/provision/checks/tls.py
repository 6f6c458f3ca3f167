"""Both certificate types on every TLS port, the chain checked against the host name
(and the CA the parameters trust: the lab CA, a private ACME CA, or the system's), with
the days left."""
from __future__ import annotations

import datetime as dt
import socket

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .clients import Target
from .result import require

RSA_CIPHERS = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"
EC_CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"
PORTS = ((25, "starttls"), (465, "implicit"), (587, "starttls"), (993, "imaps"))
KINDS = (("RSA", RSA_CIPHERS), ("EC", EC_CIPHERS))
DAYS_MIN = 14            # fail below this many days left (ACME renews at 30)


def peer_key(sock) -> str:
    cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
    key = cert.public_key()
    kind = "RSA" if isinstance(key, rsa.RSAPublicKey) else (
        "EC" if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__)
    return f"{kind}, {cert.subject.rfc4514_string()}, {sock.version()}"


def certificate(t: Target, port: int, mode: str, kind: str, ciphers: str) -> str:
    """The server presents a ``kind`` certificate for the host name on ``port``."""
    ctx = t.context(ciphers)
    if mode in ("implicit", "imaps"):
        with socket.create_connection((t.address, port), 15) as raw, \
                ctx.wrap_socket(raw, server_hostname=t.hostname) as s:
            got, der = peer_key(s), s.getpeercert(binary_form=True)
    else:
        with t.smtp(port, tls="starttls", context=ctx) as s:
            got, der = peer_key(s.sock), s.sock.getpeercert(binary_form=True)
    require(got.startswith(kind + ","), f"asked for {kind}, got {got}")
    cert = x509.load_der_x509_certificate(der)
    left = (cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days
    issuer = ", ".join(a.value for a in cert.issuer.get_attributes_for_oid(
        x509.NameOID.COMMON_NAME)) or cert.issuer.rfc4514_string()
    require(left >= DAYS_MIN, f"{got}: expires in {left} days (renewal is failing?)")
    return f"{got}, issued by {issuer}, {left} days left"
