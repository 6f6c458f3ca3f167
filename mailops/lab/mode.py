"""Everything a lab host's configuration adds to a production server's, in one place.

Production steps declare what a real server needs and know nothing of the lab.
For a parameters file with a ``lab:`` section, :func:`overlay` adds, per step:

- 10-base: the trust anchors of the lab's DNSSEC-signed zones (from the lab's DNS
  host), which the server's unbound validates them with;
- 50-postfix: the lab's outbound transport (the lab has no route out: mail for
  other domains is kept in ``/var/spool/mailops/outbound``; ``mail.outbound: lab``
  selects it in main.cf and master.cf);
- 96-upgrade: sshd restarted by the lab, not by its package (:func:`upgrade_restartable`);
- 60-rspamd: lookups that cannot work in the lab are not made (fuzzy storage,
  DNS block lists, ASN; the lab resolver refuses them, and rspamd logged an error
  for each on every message), and a multimap rule the tests use to reach the
  add_header action.

With ``resolver.mode: lab`` the server's unbound answers the lab's zones only
(:func:`zones`): from the lab's DNS host (``lab.dns_host``, Knot, where `mailops
dns publish` puts the records as it would at a provider) or, without one, from
local data (:func:`dns`).
"""
from __future__ import annotations

import ipaddress

from mailops.core.params import LAB_NETS

from mailops.core.render import render
from mailops.core.resources import Directory, File, Resource

OUTBOUND_DIR = "/var/spool/mailops/outbound"
# the lab zones' trust anchors, written by `mailops lab up` into lab.state_dir
ANCHORS_FILE = "dnssec-anchors.conf"
ANCHORS = "/etc/unbound/mailops-lab-anchors.conf"
OUTBOUND_SCRIPT = """#!/bin/sh
# managed by mailops (lab only): keep outbound mail on the host, one file each
umask 077
f=/var/spool/mailops/outbound/$(date +%s.%N).$$.eml
{ printf 'X-Lab-Envelope-From: %s\\n' "$1"; shift; printf 'X-Lab-Envelope-To: %s\\n' "$*"; cat; } >"$f"
"""
# rspamd modules whose lookups the lab resolver refuses, and why they are off
RSPAMD_OFF = {
    "fuzzy_check": "the lab has no route out: fuzzy storage servers are out of reach",
    "rbl": "DNS block lists (RBL, SURBL, DBL) are on the internet; the lab resolver refuses them",
    "asn": "ASN lookups go to asn.rspamd.com; the lab resolver refuses them",
}


# the lab's own names (the gateway, the DNS host, the ACME CA) live in one domain,
# whichever mail server's parameters bring the lab up
LAB_DOMAIN = "lab.test"


def gateway_name(p) -> str:
    """The lab gateway's name (this machine, where tests and verify connect from)."""
    return f"gw.{LAB_DOMAIN}"


def _reverse_zone(address) -> str:
    return ipaddress.ip_address(address).reverse_pointer.split(".", 1)[1]


def zones(p) -> list[str]:
    """The lab zones a mail server's parameters need answered: the host's domain, the
    mail domains, the reverse zones of its addresses and of the lab network, and the
    zones of ``resolver.extra_records``."""
    out = [p.hostname.split(".", 1)[1], *p.mail_domains]
    out += [_reverse_zone(a) for a in p.addresses]
    if p.lab is not None:
        out.append(_reverse_zone(p.lab.address))
    names = [r.split()[0].rstrip(".") for r in p.resolver.extra_records if r.split()]
    out += [n.split(".", 1)[1] for n in names if "." in n]
    return sorted(dict.fromkeys(z.lower() for z in out))


def stub_zones(p) -> list[str]:
    """What the server's unbound asks the lab's DNS host: the top-level domains of the lab
    zones (``test``: every lab host's domain, the second mail server's too) and the
    reverse zones of the lab's networks."""
    forward = {z.rsplit(".", 1)[-1] for z in zones(p) if not z.endswith(".arpa")}
    reverse = {_reverse_zone(f"{net.network_address}") for net in LAB_NETS}
    return sorted(forward) + sorted(reverse)


def dns_host_zones(p) -> list[str]:
    """The zones the lab's DNS host serves for these parameters: the lab zones and the
    stub zones above them (``test.`` itself, so a name under no lab zone is NXDOMAIN, as
    the internet would say, not a refusal)."""
    return sorted(set(zones(p)) | set(stub_zones(p)) | {LAB_DOMAIN})


def infrastructure_records(p) -> list[str]:
    """What the lab itself holds in DNS, not the mail server's records: the gateway's
    forward and reverse names (where tests and verify connect from), the DNS host's
    name, and ``resolver.extra_records``."""
    records = []
    if p.lab is not None:
        net = ipaddress.ip_network(f"{p.lab.address}/24", strict=False)
        gw, gw_name = net.network_address + 1, gateway_name(p)
        records += [f"{gw_name}. 300 IN A {gw}", f"{gw.reverse_pointer}. 300 IN PTR {gw_name}."]
        if p.lab.dns_host is not None:
            ns = dns_host_name(p)
            records += [f"{ns}. 300 IN A {p.lab.dns_host.address}",
                        f"{p.lab.dns_host.address.reverse_pointer}. 300 IN PTR {ns}.",
                        # the lab's ACME CA (pebble) runs on the DNS host too
                        f"{acme_name(p)}. 300 IN A {p.lab.dns_host.address}"]
    return records + list(p.resolver.extra_records)


def dns_host_name(p) -> str:
    return f"ns.{LAB_DOMAIN}"


def acme_name(p) -> str:
    return f"acme.{LAB_DOMAIN}"


def dns(p) -> tuple[list[str], list[str]]:
    """Zones and records a lab resolver without a DNS host answers from local data: the
    lab's own records and the mail server's (A, PTR, MX, SPF, DMARC, TLS-RPT; DKIM keys
    exist only after 60-rspamd, and `mailops dns check` shows those to publish)."""
    from mailops.provision.dnsrecords import dmarc_value, tlsrpt_value
    records = [f"{p.hostname}. 300 IN {'A' if a.version == 4 else 'AAAA'} {a}"
               for a in p.addresses]
    records += [f"{d}. 300 IN MX 10 {p.hostname}." for d in p.mail_domains]
    records += [f"{ipaddress.ip_address(a).reverse_pointer}. 300 IN PTR {p.hostname}."
                for a in p.addresses]
    records += [f'{name}. 300 IN TXT "{p.dns.spf}"' for name in [p.hostname, *p.mail_domains]]
    records += [f'_dmarc.{d}. 300 IN TXT "{dmarc_value(p)}"' for d in p.mail_domains]
    records += [f'_smtp._tls.{d}. 300 IN TXT "{tlsrpt_value(p)}"' for d in p.mail_domains]
    return zones(p), records + infrastructure_records(p)


def resolver(p) -> dict:
    """The unbound template's lab inputs: stub zones to the lab's DNS host, or zones
    answered from local data (nothing for a production resolver)."""
    if p.resolver.mode != "lab":
        return {"zones": [], "records": [], "stub": None}
    if p.lab is not None and p.lab.dns_host is not None:
        return {"zones": stub_zones(p), "records": [], "stub": str(p.lab.dns_host.address),
                "anchors": ANCHORS}
    z, records = dns(p)
    return {"zones": z, "records": records, "stub": None}


def overlay(step: str, p, info) -> list[Resource]:
    """What the lab adds to ``step``'s resources (nothing outside the lab)."""
    if p.lab is None:
        return []
    if step == "10-base" and resolver(p)["stub"]:
        # the signed lab zones' trust anchors, as `mailops lab up` read them from the
        # DNS host (a production resolver validates from the root's)
        from mailops.core.resources.files import CopiedFile
        return [CopiedFile(ANCHORS, source=p.path(p.lab.state_dir) / ANCHORS_FILE,
                           notify=("unbound",))]
    if step == "50-postfix" and p.mail.outbound == "lab":
        return [Directory("/usr/local/lib/mailops"), Directory("/var/spool/mailops"),
                Directory(OUTBOUND_DIR, mode="0700", owner="nobody", group="nogroup"),
                File("/usr/local/lib/mailops/lab-outbound", OUTBOUND_SCRIPT, mode="0755")]
    if step == "60-rspamd" and p.rspamd.enabled:
        off = [File(f"/etc/rspamd/local.d/{module}.conf",
                    render("etc/rspamd/local.d/module-off.conf.j2", why=why), notify=("rspamd",))
               for module, why in RSPAMD_OFF.items()]
        return off + [
            File("/etc/rspamd/local.d/multimap.conf",
                 render("etc/rspamd/local.d/multimap.conf.j2"), notify=("rspamd",)),
            File("/etc/rspamd/local.d/mailops-lab-add-header.map",
                 "/mailops-lab-add-header/i\n", notify=("rspamd",)),
            File("/etc/rspamd/local.d/mailops-lab-greylist.map",
                 "/mailops-lab-greylist/i\n", notify=("rspamd",))]
    return []


def upgrade_restartable(p) -> tuple[str, ...]:
    """The init scripts an in-place upgrade lets restart while packages move.  On a
    real server that is ssh: openssh 10 moved sessions into ``sshd-session``, and a
    9.2 listener left running cannot start the new binary (every new connection is
    reset), so Debian's postinst restarts it.  In the lab sshd runs under the
    namespace's first process, not from its init script: see
    :func:`upgrade_after_packages`."""
    return () if p.lab else ("ssh",)


def upgrade_after_packages(p) -> list[list[str]]:
    """Commands an in-place upgrade runs once the packages moved: in the lab, the
    old sshd listener is stopped and the lab's first process starts the new one
    (the sessions under way go on)."""
    # the lab's loop starts the new listener within a second; it writes its pid file once
    # it listens, so the next connection finds it (waited for up to 30 s)
    wait = r"""old=$(cat /run/sshd.pid); kill "$old"
for i in $(seq 150); do
  sleep 0.2; new=$(cat /run/sshd.pid 2>/dev/null)
  [ -n "$new" ] && [ "$new" != "$old" ] && kill -0 "$new" 2>/dev/null && exit 0
done
echo "the lab's sshd did not come back" >&2; exit 1
"""
    return [["sh", "-c", wait, "lab_sshd_restart"]] if p.lab else []
