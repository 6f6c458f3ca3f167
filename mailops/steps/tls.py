"""20-tls: an RSA and an EC certificate for the mail host name.

``self-signed`` (the lab): issued by a CA the controller creates once, so
clients verify the server instead of switching checks off.  ``files``: paths of
existing certificates on the server (an ACME client's), used as they are.
"""
from __future__ import annotations

from ..facts import dovecot_series
from ..layout import TLS_DIR, tls_paths
from ..pki import ensure_issued
from ..resources import Directory, File, Resource, Service
from .checks import POSTFIX_CHECK, dovecot_check


# postfix and dovecot are configured by later steps; here they are only
# reloaded, when they run, after a certificate changes
def users(info) -> tuple[Service, ...]:
    return (Service("postfix", running=None, check=POSTFIX_CHECK),
            Service("dovecot", running=None, check=dovecot_check(dovecot_series(info))))


def declare(p, info) -> list[Resource]:
    res: list[Resource] = [Directory("/etc/mailops"), Directory(TLS_DIR, mode="0750")]
    if p.tls.source == "self-signed":
        issued = ensure_issued(p.path(p.tls.ca_dir), p.hostname, p.addresses)
        paths = tls_paths(p)
        notify = ("postfix", "dovecot")
        res += [
            File(paths["rsa_key"], issued.rsa_key, mode="0600", secret=True, notify=notify),
            File(paths["rsa_cert"], issued.rsa_cert, notify=notify),
            File(paths["ec_key"], issued.ec_key, mode="0600", secret=True, notify=notify),
            File(paths["ec_cert"], issued.ec_cert, notify=notify),
            File(f"{TLS_DIR}/ca.crt", issued.ca_cert),
        ]
    return res + list(users(info))
