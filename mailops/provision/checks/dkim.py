"""DKIM: rspamd on the server signs, dkimpy verifies independently."""
from __future__ import annotations

import email.utils

from .result import require


def signs(host, params, domain: str) -> str:
    """rspamd on the server signs a message from ``domain`` as it signs an
    authenticated user's (nothing is sent); the signature is verified with
    dkimpy against the server's key, and outside the lab against DNS too."""
    import dkim
    from mailops.core.resources.rspamd import dkim_record
    selector = params.rspamd.dkim_selector
    sender = f"postmaster@{domain}"
    msg = (f"From: {sender}\nTo: verify@example.invalid\nSubject: mailops DKIM check\n"
           f"Date: {email.utils.formatdate()}\nMessage-ID: {email.utils.make_msgid(domain=domain)}\n"
           "\nA DKIM check of mailops' verify step; this message is never sent.\n")
    out = host.run(["rspamc", "-h", "127.0.0.1:11333", "--mime", "--user", sender, "--from", sender,
                    "--rcpt", "verify@example.invalid"], stdin=msg.encode(), timeout=30).stdout
    require(b"DKIM-Signature:" in out, "rspamd added no DKIM-Signature")
    record = dkim_record(host, domain, selector)
    name = f"{selector}._domainkey.{domain}"
    signed = out.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    ok = dkim.verify(signed, dnsfunc=lambda qname, timeout=5: record.encode())
    require(ok, f"the signature does not verify against the key in {name}")
    if params.lab is not None:
        return f"d={domain} s={selector}: verifies against the server's key (lab: not in DNS)"
    published = txt(name)
    require(published == record,
            f"{name} TXT in DNS is {published[:40] + '...' if published else 'missing'}"
            f"; publish: {record[:40]}...")
    return f"d={domain} s={selector}: verifies; DNS publishes the server's key"


def txt(name: str) -> str | None:
    """A TXT record as a resolver returns it (its strings joined)."""
    import dns.resolver
    try:
        answer = dns.resolver.resolve(name, "TXT", lifetime=10)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    return "".join(b.decode() for b in answer[0].strings)
