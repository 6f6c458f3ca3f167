"""DNS records the operator publishes for the mail server (DKIM for now).

A TXT value longer than 255 bytes is published as several character-strings
(RFC 1035 3.3.14; zone files and most DNS providers refuse a longer one):
:func:`zone_value` splits it the way dnspython writes it, and the resolver
joins the strings again.
"""
from __future__ import annotations

import dataclasses

from .resources.rspamd import DKIM_DIR, dkim_record

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


def dkim_records(session) -> DnsRecords:
    """The DKIM TXT record of every mail domain whose key exists on the server."""
    p = session.params
    out = []
    for domain in p.mail_domains if p.rspamd.enabled else []:
        key = f"{DKIM_DIR}/{domain}.{p.rspamd.dkim_selector}.key"
        if session.host.run(["test", "-f", key], check=False).ok:
            out.append(DnsRecord(f"{p.rspamd.dkim_selector}._domainkey.{domain}", "TXT",
                                 dkim_record(session.host, domain, p.rspamd.dkim_selector)))
    return DnsRecords(tuple(out))
