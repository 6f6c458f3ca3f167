"""20-tls: an RSA and an EC certificate for the mail host name.

``self-signed`` (the lab): issued by a CA the controller creates once, so
clients verify the server instead of switching checks off.  ``acme``: issued by
an ACME CA to certbot on the server (DNS-01 through RFC 2136), renewed by
certbot's timer, installed by a deploy hook that checks them first
(:mod:`mailops.core.resources.acme`).  ``files``: paths of existing certificates on the
server, used as they are.
"""
from __future__ import annotations

from mailops.core.facts import dovecot_series
from mailops.core.layout import TLS_DIR, tls_paths
from mailops.provision.pki import ensure_issued
from mailops.core.render import render
from mailops.core.resources import Directory, File, Packages, Resource, Service
from mailops.core.resources.acme import ACME_DIR, CREDENTIALS, DEPLOY_HOOK, AcmeCertificate
from mailops.core.resources.files import SecretFile
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
    elif p.tls.source == "acme":
        res += acme(p)
    return res + list(users(info))


RFC2136_INI = """# managed by mailops: certbot's DNS-01 updates (RFC 2136, TSIG)
dns_rfc2136_server = {server}
dns_rfc2136_port = {port}
dns_rfc2136_name = {name}
dns_rfc2136_secret = {{secret}}
dns_rfc2136_algorithm = {algorithm}
"""


def acme(p) -> list[Resource]:
    a, u = p.tls.acme, p.dns.update
    paths = tls_paths(p)
    res: list[Resource] = [
        Packages(("certbot", "python3-certbot-dns-rfc2136", "openssl")),
        Directory(ACME_DIR, mode="0700"),
        SecretFile(CREDENTIALS, mode="0600", secret_ref=a.key_secret or u.key_secret,
                   base_dir=p.base_dir, template=RFC2136_INI.format(
                       server=a.rfc2136_server or u.server, port=a.rfc2136_port if
                       a.rfc2136_server else u.port, name=a.key_name or u.key_name,
                       algorithm=(u.algorithm if u and not a.key_secret else "hmac-sha256")
                       .upper())),
        File(DEPLOY_HOOK, render("usr/local/sbin/mailops-tls-deploy.j2", host=p.hostname,
                                 kinds=[(k, paths[f"{k}_cert"], paths[f"{k}_key"])
                                        for k in ("rsa", "ec")]), mode="0755"),
    ]
    email = a.email or p.postmaster
    res += [AcmeCertificate(p.hostname, k, paths[f"{k}_cert"], a.server, email, a.propagation_s,
                            reuse_key=p.dns.dane)
            for k in ("rsa", "ec")]
    return res
