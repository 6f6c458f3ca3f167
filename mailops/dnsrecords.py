"""DNS records the operator publishes for the mail server (DKIM for now).

A TXT value longer than 255 bytes is published as several character-strings
(RFC 1035 3.3.14; zone files and most DNS providers refuse a longer one):
:func:`zone_value` splits it the way dnspython writes it, and the resolver
joins the strings again.
"""
from __future__ import annotations

import dataclasses

from .resources.rspamd import DkimKey, dkim_record

MAX_STRING = 255


@dataclasses.dataclass(frozen=True)
class DnsRecord:
    name: str
    type: str
    value: str          # the whole value, as a resolver returns it joined

    def zone_value(self) -> str:
        """The value in zone-file syntax (TXT: quoted strings of at most 255 bytes)."""
        if self.type != "TXT":
            return self.value
        import dns.rdataclass
        import dns.rdatatype
        from dns.rdtypes.ANY.TXT import TXT
        raw = self.value.encode()
        chunks = [raw[i:i + MAX_STRING] for i in range(0, len(raw), MAX_STRING)] or [b""]
        return TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks).to_text()

    def zone_line(self) -> str:
        return f"{self.name}. IN {self.type} {self.zone_value()}"


@dataclasses.dataclass(frozen=True)
class DnsRecords:
    records: tuple[DnsRecord, ...]

    def __str__(self) -> str:
        return "\n".join(r.zone_line() for r in self.records) or "(none yet)"

    def _repr_html_(self) -> str:
        from .tables import html_table
        return html_table([{"name": r.name, "type": r.type, "value (zone file)": r.zone_value()}
                           for r in self.records], title="publish these DNS records")


def dkim_record_of(session, domain: str) -> DnsRecord | None:
    """A domain's DKIM TXT record, when rspamd signs and the domain's key exists."""
    r = session.params.rspamd
    if not r.enabled or not session.host.run(["test", "-f", DkimKey(domain, r.dkim_selector).path],
                                             check=False).ok:
        return None
    return DnsRecord(f"{r.dkim_selector}._domainkey.{domain}", "TXT",
                     dkim_record(session.host, domain, r.dkim_selector))


def dkim_records(session) -> DnsRecords:
    """The DKIM TXT record of every mail domain whose key exists on the server."""
    found = (dkim_record_of(session, d) for d in session.params.mail_domains)
    return DnsRecords(tuple(r for r in found if r is not None))


def dmarc_value(p) -> str:
    return f"v=DMARC1; p=quarantine; rua=mailto:{p.postmaster}"


def tlsrpt_value(p) -> str:
    """SMTP TLS reporting (RFC 8460): where other servers send their TLS failure reports."""
    return f"v=TLSRPTv1; rua=mailto:{p.postmaster}"


def domain_records(session, domain: str) -> DnsRecords:
    """What to publish for a mail domain: MX, SPF, DMARC, TLS-RPT and (when its key
    exists) DKIM."""
    p = session.params
    dkim = dkim_record_of(session, domain)
    return DnsRecords((DnsRecord(domain, "MX", f"10 {p.hostname}."),
                       DnsRecord(domain, "TXT", "v=spf1 mx -all"),
                       DnsRecord(f"_dmarc.{domain}", "TXT", dmarc_value(p)),
                       DnsRecord(f"_smtp._tls.{domain}", "TXT", tlsrpt_value(p)))
                      + ((dkim,) if dkim else ()))
