"""The server's DNS records, asked of its own resolver (what postfix and rspamd see)."""
from __future__ import annotations

import time

from .result import CheckFailed

# a record just published can be cached as missing for the zone's negative TTL (5 s in the
# lab); the check asks again for this long before it fails
SETTLE_S = 8.0


def judge(rows: list[dict]) -> str:
    """Evidence when every record is as expected; else CheckFailed naming each wrong one
    and the record to publish."""
    bad = [f"{x['name']} {x['type']} {x['status']} (publish: {x['publish'][:120]})"
           for x in rows if x["status"] != "ok"]
    if bad:
        raise CheckFailed("; ".join(bad))
    return f"{len(rows)} records published as expected"


def published(session, settle: float = SETTLE_S) -> str:
    """Every record the server needs (A, PTR, MX, SPF, DMARC, TLS-RPT, DKIM) as
    expected, through the server's resolver."""
    from mailops.provision.dnsrecords import Resolver, dns_records
    deadline = time.monotonic() + settle
    while True:
        with session.host.forward(53) as port:
            rows = dns_records(session, Resolver(port))
        try:
            return judge(rows)
        except CheckFailed:
            if time.monotonic() > deadline:
                raise
        time.sleep(1)
