"""10-base: hostname, /etc/hosts, mailname, time zone, base packages, the
server's own resolver (unbound) and the nftables firewall."""
from __future__ import annotations

from .. import labmode
from ..render import render
from ..resources import File, Link, Packages, Resource, Service
from ..resources.files import ValidatedFile

BASE_PACKAGES = ("ca-certificates", "netbase", "tzdata", "unbound", "nftables", "logrotate")
LOG_WEEKS = 26           # mail logs kept (weekly, compressed) for the analysis notebooks
NFT_CONF = "/etc/nftables.conf"


def declare(p, info) -> list[Resource]:
    lab = p.resolver.mode == "lab"
    zones, records = labmode.dns(p) if lab else ([], [])
    systemd = info is not None and info.init == "systemd"
    # logrotate runs from a systemd timer, or from cron's daily run where no systemd runs
    cron = () if systemd else ("cron",)
    return [
        Packages(tuple(dict.fromkeys((*BASE_PACKAGES, *cron, *p.packages)))),
        File("/etc/hostname", f"{p.hostname}\n", notify=("hostname",)),
        File("/etc/hosts", render("etc/hosts.j2", p=p)),
        File("/etc/mailname", f"{p.hostname}\n"),
        File("/etc/timezone", f"{p.timezone}\n"),
        Link("/etc/localtime", f"/usr/share/zoneinfo/{p.timezone}"),
        File("/etc/unbound/unbound.conf",
             render("etc/unbound/unbound.conf.j2", lab=lab, zones=zones, records=records),
             notify=("unbound",)),
        File("/etc/default/unbound", render("etc/default/unbound.j2", lab=lab),
             notify=("unbound",)),
        File("/etc/resolv.conf", "# managed by mailops: the local unbound\n"
                                 "nameserver 127.0.0.1\noptions edns0 trust-ad\n"),
        File(NFT_CONF, render("etc/nftables.conf.j2", fw=p.firewall), mode="0755",
             notify=("nftables",)),
        ValidatedFile("/etc/logrotate.d/mailops", render("etc/logrotate.d/mailops.j2",
                                                         weeks=LOG_WEEKS),
                      validate=("logrotate", "--debug", "{}")),
        Service("hostname", probe=("sh", "-c", '[ "$(hostname)" = "$1" ]', "hostname_is",
                                   p.hostname),
                start=("hostname", p.hostname)),
        *[Service(name) for name in cron],
        Service("unbound", check=("unbound-checkconf",), on_change="restart"),
        Service("nftables", check=("nft", "-c", "-f", NFT_CONF),
                probe=("nft", "list", "table", "inet", "mailops"),
                start=("nft", "-f", NFT_CONF)),
    ]
