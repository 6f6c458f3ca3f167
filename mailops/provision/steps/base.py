"""10-base: hostname, /etc/hosts, mailname, time zone, base packages, the
server's own resolver (unbound) and the nftables firewall."""
from __future__ import annotations

from mailops.lab import mode as labmode
from mailops.core.render import render
from mailops.core.resources import File, Link, Packages, Resource, Service
from mailops.core.resources.acme import CA_TRUST
from mailops.core.resources.files import CopiedFile, ValidatedFile

BASE_PACKAGES = ("ca-certificates", "netbase", "tzdata", "unbound", "nftables", "logrotate")
LOG_WEEKS = 26           # mail logs kept (weekly, compressed) for the analysis notebooks
NFT_CONF = "/etc/nftables.conf"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def declare(p, info) -> list[Resource]:
    lab = p.resolver.mode == "lab"
    systemd = info is not None and info.init == "systemd"
    sshd_files, sshd_service = _sshd(p)
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
             render("etc/unbound/unbound.conf.j2", lab=lab, **labmode.resolver(p)),
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
        *_updates(p),
        *sshd_files,
        *_private_ca(p),
        Service("hostname", probe=("sh", "-c", '[ "$(hostname)" = "$1" ]', "hostname_is",
                                   p.hostname),
                start=("hostname", p.hostname)),
        *[Service(name) for name in cron],
        Service("unbound", check=("unbound-checkconf",), on_change="restart"),
        *_firewall_service(systemd),
        *sshd_service,
    ]


# a private ACME CA's certificates in the server's trust, here and not in 20-tls: the
# update runs at the end of a step, and certbot must trust the CA's API before 20-tls
# asks it for certificates.  The probe: every line of the file is in the bundle.
CA_PROBE = ("sh", "-c", f'f=$1; [ -s "$f" ] && ! grep -qvxFf {CA_BUNDLE} "$f"', "ca_trusted",
            CA_TRUST)


def _private_ca(p) -> list[Resource]:
    if p.tls.source != "acme" or p.tls.acme is None or p.tls.acme.ca_file is None:
        return []
    return [CopiedFile(CA_TRUST, source=p.path(p.tls.acme.ca_file), notify=("ca-certificates",)),
            Service("ca-certificates", probe=CA_PROBE, start=("update-ca-certificates",))]


def _firewall_service(systemd: bool) -> list[Resource]:
    """The ruleset loaded now, and under systemd also at boot (nftables.service
    loads /etc/nftables.conf; not enabled, the firewall was gone after a reboot)."""
    check = ("nft", "-c", "-f", NFT_CONF)
    if not systemd:
        return [Service("nftables", check=check, probe=("nft", "list", "table", "inet", "mailops"),
                        start=("nft", "-f", NFT_CONF))]
    return [Service("nftables", check=check,
                    probe=("sh", "-c", "nft list table inet mailops >/dev/null && "
                           "systemctl is-enabled --quiet nftables", "nft_probe"),
                    start=("sh", "-c", 'nft -f "$1" && systemctl enable --quiet nftables',
                           "nft_start", NFT_CONF))]


def _updates(p) -> list[Resource]:
    on = p.updates.unattended
    return [*([Packages(("unattended-upgrades",))] if on else []),
            ValidatedFile("/etc/apt/apt.conf.d/20auto-upgrades",
                          render("etc/apt/apt.conf.d/20auto-upgrades.j2", on=on),
                          validate=("apt-config", "-c", "{}", "dump"))]


def key_based(p) -> bool:
    """Whether mailops reaches the host with a key (ssh:// needs one): only then
    may sshd be made key-only without locking the operator out."""
    return p.target.startswith("ssh://") and p.ssh is not None


def _sshd(p) -> tuple[list[Resource], list[Resource]]:
    """sshd's key-only file and its service (checked with `sshd -t`, then reloaded)."""
    if not (p.sshd.key_only and key_based(p)):
        return [], []
    return ([File("/etc/ssh/sshd_config.d/05-mailops.conf",
                  render("etc/ssh/sshd_config.d/05-mailops.conf.j2"), notify=("ssh",))],
            [Service("ssh", check=("sshd", "-t"), on_change="reload")])
