"""The DNS records a mail server needs: expected, checked, published.

:func:`record_checks` compares every record the parameters call for (A, PTR, MX,
SPF, DMARC, TLS-RPT, DKIM) with what a resolver answers (`mailops dns check` asks
the server's own unbound, so it sees what postfix and rspamd see).  `mailops dns
publish` sends the ones missing or different as RFC 2136 updates signed with TSIG
(:class:`Publisher`) to the zones' primary, checked first against that server
itself; without ``dns.update`` the operator publishes them by hand, and the check is
the same.

A TXT value longer than 255 bytes is published as several character-strings
(RFC 1035 3.3.14; zone files and most DNS providers refuse a longer one):
:func:`zone_value` splits it the way dnspython writes it, and the resolver
joins the strings again.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import time

from mailops.core.resources.rspamd import DkimKey, dkim_record

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

    @classmethod
    def from_zone_line(cls, line: str) -> "DnsRecord":
        """``name. [ttl] [IN] TYPE value`` (TXT strings joined, as a resolver gives them)."""
        import dns.rdata
        import dns.rdataclass
        import dns.rdatatype
        fields = line.split()
        name, rest = fields[0].rstrip("."), fields[1:]
        if rest and rest[0].isdigit():
            rest = rest[1:]
        if rest and rest[0].upper() == "IN":
            rest = rest[1:]
        if len(rest) < 2:
            raise ValueError(f"not a DNS record: {line!r}")
        rtype = rest[0].upper()
        value = line.split(None, len(fields) - len(rest) + 1)[-1]
        rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), value)
        return cls(name, rtype, _text(rd))


@dataclasses.dataclass(frozen=True)
class DnsRecords:
    records: tuple[DnsRecord, ...]

    def __str__(self) -> str:
        return "\n".join(r.zone_line() for r in self.records) or "(none yet)"

    def _repr_html_(self) -> str:
        from mailops.core.tables import html_table
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


# DANE-EE, SPKI, SHA-256 of each served certificate's public key ("-": no such file)
TLSA_SPKI = r"""for f; do
  if [ -s "$f" ]; then
    openssl x509 -in "$f" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1
  else echo -; fi
done
"""


def tlsa_name(p) -> str:
    return f"_25._tcp.{p.hostname}"


def tlsa_values(session) -> list[str]:
    """``3 1 1 <sha256>`` for each certificate the server serves (RSA and EC), when
    ``dns.dane``; nothing before the certificates exist."""
    p = session.params
    if not p.dns.dane:
        return []
    from mailops.core.layout import tls_paths
    paths = tls_paths(p)
    out = session.host.run(["sh", "-c", TLSA_SPKI, "tlsa_spki", paths["rsa_cert"],
                            paths["ec_cert"]]).out.split()
    return [f"3 1 1 {h.lower()}" for h in out if h != "-"]


def dmarc_value(p) -> str:
    return f"v=DMARC1; p={p.dns.dmarc_policy}; rua=mailto:{p.postmaster}"


def tlsrpt_value(p) -> str:
    """SMTP TLS reporting (RFC 8460): where other servers send their TLS failure reports."""
    return f"v=TLSRPTv1; rua=mailto:{p.postmaster}"


def domain_records(session, domain: str) -> DnsRecords:
    """What to publish for a mail domain: MX, SPF, DMARC, TLS-RPT and (when its key
    exists) DKIM."""
    p = session.params
    dkim = dkim_record_of(session, domain)
    return DnsRecords((DnsRecord(domain, "MX", f"10 {p.hostname}."),
                       DnsRecord(domain, "TXT", p.dns.spf),
                       DnsRecord(f"_dmarc.{domain}", "TXT", dmarc_value(p)),
                       DnsRecord(f"_smtp._tls.{domain}", "TXT", tlsrpt_value(p)))
                      + ((dkim,) if dkim else ()))


def _text(rd) -> str:
    """An rdata as a resolver's answer reads: TXT strings joined, others as text."""
    if hasattr(rd, "strings"):
        return "".join(x.decode() for x in rd.strings)
    return rd.to_text()


# -- asking -----------------------------------------------------------------------------

class Resolver:
    """dnspython over TCP: by default to the server's unbound through an SSH port
    forward (127.0.0.1:port); or straight to an authoritative server."""

    def __init__(self, port: int, address: str = "127.0.0.1", timeout: float = 10):
        self.port, self.address, self.timeout = port, address, timeout

    def ask(self, name: str, rtype: str) -> tuple[str, list[str]]:
        """(rcode text, answers as text; TXT strings joined)."""
        import dns.message
        import dns.query
        import dns.rcode
        import dns.rdatatype
        q = dns.message.make_query(name, rtype)
        r = dns.query.tcp(q, self.address, port=self.port, timeout=self.timeout)
        want = dns.rdatatype.from_text(rtype)
        out = [_text(rd) for rrset in r.answer if rrset.rdtype == want for rd in rrset]
        return dns.rcode.to_text(r.rcode()), out


def spf_allows(spf: str, addresses, hostname: str, resolver: Resolver, domain: str) -> bool:
    """Whether the SPF record lets the server's addresses send (ip4/ip6, a, mx; one
    level, no include: enough to see a wrong record, not a full SPF evaluator)."""
    allowed = set()
    for term in spf.split()[1:]:
        mech = term.lstrip("+")
        if mech.startswith(("ip4:", "ip6:")):
            net = ipaddress.ip_network(mech[4:], strict=False)
            allowed |= {a for a in addresses if a in net}
        elif mech in ("a", "mx"):
            names = [domain] if mech == "a" else [
                m.split()[-1].rstrip(".") for m in resolver.ask(domain, "MX")[1]]
            for n in names:
                for rt in ("A", "AAAA"):
                    allowed |= {a for a in addresses if str(a) in resolver.ask(n, rt)[1]}
    return set(addresses) <= allowed


# -- checking ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RecordCheck:
    """One record the server needs, against what is published at its name."""
    record: DnsRecord            # the expected record
    label: str                   # "MX", "TXT (SPF)", ...
    published: tuple[str, ...]   # the values of its kind found there
    ok: bool
    # what publishing it replaces: the published values of its kind (an A, a PTR, the
    # SPF record, ...); an MX is added beside other MX records, never replacing them
    stale: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("missing" if not self.published else "different")

    def row(self) -> dict:
        return {"name": self.record.name, "type": self.label, "status": self.status,
                "published": " | ".join(self.published), "expected": self.record.value,
                "publish": self.record.zone_line()}


def _squash(v: str) -> str:
    return v.replace(" ", "")


def record_checks(session, resolver: Resolver, dkim: dict | None = None) -> list[RecordCheck]:
    """Every record the server needs, expected against published.  ``dkim``: domain ->
    DnsRecord or None (default: read the keys on the server); the TLSA values come from
    the served certificates when ``dns.dane``."""
    p = session.params
    if dkim is None:
        dkim = {d: dkim_record_of(session, d) for d in p.mail_domains}
    tlsa = tlsa_values(session)
    out = []

    def add(name, rtype, label, expected, published, ok, replaces=True):
        out.append(RecordCheck(DnsRecord(name, rtype, expected), label, tuple(published), ok,
                               tuple(published) if replaces else ()))

    def tagged(name, tag):
        return [t for t in resolver.ask(name, "TXT")[1] if t.startswith(tag)]

    for a in p.addresses:
        rt = "A" if a.version == 4 else "AAAA"
        got = resolver.ask(p.hostname, rt)[1]
        add(p.hostname, rt, rt, str(a), got, str(a) in got)
        ptr = resolver.ask(a.reverse_pointer, "PTR")[1]
        add(a.reverse_pointer, "PTR", "PTR", f"{p.hostname}.", ptr, f"{p.hostname}." in ptr)
    for d in p.mail_domains:
        mx = resolver.ask(d, "MX")[1]
        add(d, "MX", "MX", f"10 {p.hostname}.", mx,
            any(m.split()[-1] == f"{p.hostname}." for m in mx), replaces=False)
        spf = tagged(d, "v=spf1")
        add(d, "TXT", "TXT (SPF)", p.dns.spf, spf,
            len(spf) == 1 and spf_allows(spf[0], p.addresses, p.hostname, resolver, d))
        dmarc = tagged(f"_dmarc.{d}", "v=DMARC1")
        add(f"_dmarc.{d}", "TXT", "TXT (DMARC)", dmarc_value(p), dmarc, len(dmarc) == 1)
        rpt = tagged(f"_smtp._tls.{d}", "v=TLSRPTv1")
        add(f"_smtp._tls.{d}", "TXT", "TXT (TLS-RPT)", tlsrpt_value(p), rpt, len(rpt) == 1)
        key = dkim.get(d)
        if key is not None:
            got = resolver.ask(key.name, "TXT")[1]
            add(key.name, "TXT", "TXT (DKIM)", key.value, got,
                _squash(key.value) in {_squash(g) for g in got})
    if tlsa:
        # one record per served key; a published one that matches no served key is
        # stale (the first check carries it, so publishing deletes it once)
        name = tlsa_name(p)
        got = resolver.ask(name, "TLSA")[1]
        want = {_squash(v.lower()) for v in tlsa}
        have = {_squash(g.lower()) for g in got}
        stale = [g for g in got if _squash(g.lower()) not in want]
        for i, v in enumerate(tlsa):
            here = _squash(v.lower()) in have
            out.append(RecordCheck(DnsRecord(name, "TLSA", v), "TLSA (DANE)", tuple(got),
                                   here and not (i == 0 and stale),
                                   tuple(stale) if i == 0 else ()))
    return out


def dns_records(session, resolver: Resolver, dkim: dict | None = None) -> list[dict]:
    """:func:`record_checks` as rows: ok / missing / different, with the record to
    publish (zone-file syntax; a long TXT split into strings of 255 bytes)."""
    return [c.row() for c in record_checks(session, resolver, dkim)]


@dataclasses.dataclass
class DnsCheck:
    """`mailops dns check`: the records as a table, ok when every one is."""
    host: str
    rows: list[dict]

    @property
    def ok(self) -> bool:
        return all(r["status"] == "ok" for r in self.rows)

    def __str__(self) -> str:
        bad = [r for r in self.rows if r["status"] != "ok"]
        head = (f"dns check {self.host}: {len(self.rows) - len(bad)} of {len(self.rows)} "
                f"records as expected")
        lines = [f"  {r['status']:9} {r['type']:13} {r['name']}" for r in self.rows]
        if bad:
            lines += ["", "publish these (zone-file syntax):"] + [f"  {r['publish']}"
                                                                  for r in bad]
        return "\n".join([head] + lines)

    def _repr_html_(self) -> str:
        from mailops.core.tables import html_table, status as cell
        rows = [{"status": cell(r["status"] == "ok", "ok", r["status"]), "name": r["name"],
                 "type": r["type"], "published": r["published"],
                 "publish": "" if r["status"] == "ok" else r["publish"]} for r in self.rows]
        return html_table(rows, title=str(self).splitlines()[0])


def dns_check(session) -> DnsCheck:
    """Every record the server needs, asked of its own resolver (through SSH)."""
    with session.host.forward(53) as port:
        return DnsCheck(session.params.hostname, dns_records(session, Resolver(port)))


# -- publishing -------------------------------------------------------------------------

class PublishError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Change:
    """One RFC 2136 change: ``add`` a record, or ``delete`` one value (or, with value
    None, every record of the type at the name)."""
    op: str
    record: DnsRecord

    def __str__(self) -> str:
        r = self.record
        return f"{self.op:6} " + (f"{r.name}. IN {r.type} (every one)" if r.value is None
                                  else r.zone_line())


class Publisher:
    """RFC 2136 updates signed with TSIG to the zones' primary (``dns.update``).  The
    key is read when the first update is made and never leaves this object (no repr)."""

    def __init__(self, update, base_dir, ttl: int = 60):
        self.update, self.base_dir, self.ttl = update, base_dir, ttl
        self._zones: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Publisher(server={self.update.server}:{self.update.port})"

    @property
    def resolver(self) -> Resolver:
        return Resolver(self.update.port, str(self.update.server), timeout=5)

    def zone_of(self, name: str) -> str:
        """The zone holding ``name`` on this server: the closest enclosing name it
        answers SOA for with authority."""
        import dns.flags
        import dns.message
        import dns.query
        import dns.rdatatype
        labels = name.rstrip(".").split(".")
        for i in range(len(labels)):
            cand = ".".join(labels[i:])
            if cand in self._zones.values():
                return cand
            r = dns.query.tcp(dns.message.make_query(cand, "SOA"), str(self.update.server),
                              port=self.update.port, timeout=5)
            if r.flags & dns.flags.AA and any(rr.rdtype == dns.rdatatype.SOA and
                                              rr.name.to_text().rstrip(".").lower() == cand.lower()
                                              for rr in r.answer):
                self._zones[name] = cand
                return cand
        raise PublishError(f"{self.update.server} is not authoritative for any zone "
                           f"holding {name}")

    def wait_ready(self, zone: str, seconds: float = 10) -> None:
        """Until the server answers for ``zone`` (a DNS server just started)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.zone_of(zone)
                return
            except (OSError, PublishError, EOFError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def send(self, changes: list[Change]) -> None:
        """The changes, one signed update per zone, in order."""
        import dns.exception
        import dns.query
        import dns.rcode
        import dns.rdata
        import dns.rdataclass
        import dns.rdatatype
        import dns.tsig
        import dns.tsigkeyring
        import dns.update
        from mailops.core.secrets import resolve
        keyring = dns.tsigkeyring.from_text(
            {self.update.key_name: resolve(self.update.key_secret, self.base_dir).reveal()})
        algorithm = {"hmac-sha256": dns.tsig.HMAC_SHA256,
                     "hmac-sha512": dns.tsig.HMAC_SHA512}[self.update.algorithm]
        by_zone: dict[str, list[Change]] = {}
        for c in changes:
            by_zone.setdefault(self.zone_of(c.record.name), []).append(c)
        for zone, todo in by_zone.items():
            msg = dns.update.UpdateMessage(zone, keyring=keyring, keyname=self.update.key_name,
                                           keyalgorithm=algorithm)
            for c in todo:
                rtype = dns.rdatatype.from_text(c.record.type)
                name = c.record.name + "."
                if c.op == "delete" and c.record.value is None:
                    msg.delete(name, rtype)
                    continue
                rd = dns.rdata.from_text(dns.rdataclass.IN, rtype, c.record.zone_value())
                if c.op == "delete":
                    msg.delete(name, rd)
                else:
                    msg.add(name, self.ttl, rd)
            try:
                r = dns.query.tcp(msg, str(self.update.server), port=self.update.port, timeout=10)
            except (dns.tsig.PeerError, dns.exception.FormError) as exc:
                # the server's answer is not signed with the key (BADKEY, BADSIG)
                raise PublishError(f"{self.update.server} refused the update of {zone}: "
                                   f"{type(exc).__name__}: {exc} (are dns.update.key_name "
                                   "and key_secret the server's key?)") from None
            if r.rcode() != dns.rcode.NOERROR:
                raise PublishError(f"{self.update.server} refused the update of {zone}: "
                                   f"{dns.rcode.to_text(r.rcode())}")

    def replace(self, records: list[DnsRecord]) -> None:
        """Each record as the only one of its type at its name."""
        changes = []
        for r in records:
            changes += [Change("delete", DnsRecord(r.name, r.type, None)), Change("add", r)]
        self.send(changes)


def publish_plan(checks: list[RecordCheck]) -> list[Change]:
    """The changes that make every check pass: the stale values of a record that is not
    ok deleted, the expected one added."""
    changes = []
    for c in checks:
        if c.ok:
            continue
        changes += [Change("delete", DnsRecord(c.record.name, c.record.type, v)) for v in c.stale]
        changes.append(Change("add", c.record))
    return changes


@dataclasses.dataclass
class PublishResult:
    host: str
    server: str
    changes: list[Change]
    applied: bool
    still_wrong: list[dict] = dataclasses.field(default_factory=list)   # after applying

    @property
    def ok(self) -> bool:
        return not self.still_wrong

    @property
    def status(self) -> str:
        from mailops.core.plan import Status
        if not self.ok:
            return Status.FAILED.value
        if not self.changes:
            return Status.NO_CHANGES.value
        return (Status.APPLIED if self.applied else Status.PLANNED).value

    def record(self) -> dict:
        """The run record of step 88-dns (as :func:`mailops.provision.session.record` writes)."""
        return {"step": "88-dns", "host": self.host, "status": self.status,
                "changes": len(self.changes), "targets": [str(c) for c in self.changes][:50],
                "error": "; ".join(f"{r['name']} {r['type']} still {r['status']}"
                                   for r in self.still_wrong) or None}

    def raise_for_status(self) -> None:
        if not self.ok:
            raise PublishError(self.record()["error"])

    def _repr_html_(self) -> str:
        from mailops.core.tables import html_table
        return html_table([{"change": c.op, "record (zone file)": c.record.zone_line()
                            if c.record.value is not None else f"{c.record.name} {c.record.type}"}
                           for c in self.changes], title=str(self).splitlines()[0])

    def __str__(self) -> str:
        if not self.changes:
            return f"dns publish {self.host}: every record is published at {self.server}"
        verb = "sent to" if self.applied else "would send to (dry run; --apply sends them)"
        lines = [f"dns publish {self.host}: {len(self.changes)} changes {verb} "
                 f"{self.server}"] + [f"  {c}" for c in self.changes]
        lines += [f"still {r['status']} after the update: {r['name']} {r['type']} "
                  f"(published: {r['published']})" for r in self.still_wrong]
        return "\n".join(lines)


def publish(session, apply: bool = False) -> PublishResult:
    """The records missing or different at the zones' primary (asked directly, not
    through a cache), sent as RFC 2136 updates when ``apply``."""
    p = session.params
    if p.dns.update is None:
        raise PublishError("these parameters have no dns.update: publish the records "
                           "`mailops dns check` shows by hand at your DNS provider")
    pub = Publisher(p.dns.update, p.base_dir, ttl=p.dns.ttl)
    checks = record_checks(session, pub.resolver)
    changes = publish_plan(checks)
    still = []
    if apply and changes:
        pub.send(changes)
        still = [c.row() for c in record_checks(session, pub.resolver) if not c.ok]
    return PublishResult(p.hostname, f"{p.dns.update.server}:{p.dns.update.port}", changes,
                         apply, still)
