"""DNS records the operator publishes for the mail server (DKIM for now)."""
from __future__ import annotations

import dataclasses
import html

from .resources.rspamd import DKIM_DIR, dkim_record


@dataclasses.dataclass(frozen=True)
class DnsRecords:
    records: tuple[tuple[str, str, str], ...]     # name, type, value

    def __str__(self) -> str:
        return "\n".join(f"{n}. IN {t} \"{v}\"" for n, t, v in self.records) or "(none yet)"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td><code>{html.escape(n)}</code></td><td>{t}</td>"
                       f"<td><code style='word-break:break-all'>{html.escape(v)}</code></td></tr>"
                       for n, t, v in self.records)
        return ("<p><b>publish these DNS records</b></p><table><tr><th>name</th><th>type</th>"
                f"<th>value</th></tr>{rows}</table>")


def dkim_records(session) -> DnsRecords:
    """The DKIM TXT record of every mail domain whose key exists on the server."""
    p = session.params
    out = []
    for domain in p.mail_domains if p.rspamd.enabled else []:
        key = f"{DKIM_DIR}/{domain}.{p.rspamd.dkim_selector}.key"
        if session.host.run(["test", "-f", key], check=False).ok:
            out.append((f"{p.rspamd.dkim_selector}._domainkey.{domain}", "TXT",
                        dkim_record(session.host, domain, p.rspamd.dkim_selector)))
    return DnsRecords(tuple(out))
