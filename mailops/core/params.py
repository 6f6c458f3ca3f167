"""Parameters: one YAML file per target, validated before anything connects.

Relative paths in a parameters file resolve against the file's own directory.
Secrets are references (``file:PATH#key``, ``env:NAME``), never literals.
"""
from __future__ import annotations

import functools
import ipaddress
import re
import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError,
                      model_validator)

from .secrets import check_ref

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
FQDN_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})+$")
_TZ = re.compile(r"^(UTC|[A-Z][A-Za-z_]+(/[A-Za-z0-9_+-]+){1,2})$")
LAB_NETS = [ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("203.0.113.0/24")]
RELEASES = ("bookworm", "trixie")


class ParamsError(ValueError):
    """Bad parameters: every problem, each naming field, value and what is allowed."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid parameters in {source}:\n" + "\n".join(
            f"  - {p}" for p in problems))


def _fqdn(value: str) -> str:
    if not isinstance(value, str) or not FQDN_RE.fullmatch(value):
        raise ValueError("must be a fully qualified domain name in lower case: labels of "
                         "a-z, 0-9 and '-' separated by dots, e.g. mx1.example.com")
    return value


def _tz(value: str) -> str:
    if not _TZ.fullmatch(value):
        raise ValueError("must be a tz database name such as UTC or Europe/Berlin")
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port from 1 to 65535")
    return value


def _target(value: str) -> str:
    if value == "local://" or re.fullmatch(r"^ssh://[a-z_][a-z0-9_-]*@[A-Za-z0-9.:\[\]-]+(:\d+)?$",
                                       value):
        return value
    raise ValueError("must be ssh://user@host[:port] or local://")


def _secret_ref(value: str) -> str:
    try:
        return check_ref(value)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


LOCAL_PART_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?$")


def _address(value: str) -> str:
    local, at, domain = value.rpartition("@") if isinstance(value, str) else ("", "", "")
    if not at or not LOCAL_PART_RE.fullmatch(local) or ".." in local or not FQDN_RE.fullmatch(domain):
        raise ValueError("must be a mail address local@domain in lower case; the local part "
                         "takes a-z, 0-9 and . _ + - only (no quotes, %, spaces or other "
                         "shell or SQL characters)")
    return value


FQDN = Annotated[str, AfterValidator(_fqdn)]
Address = Annotated[str, AfterValidator(_address)]
Port = Annotated[int, AfterValidator(_port)]
SecretRef = Annotated[str, AfterValidator(_secret_ref)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SSH(Model):
    key_file: Path = Field(description="private key used to log in")
    known_hosts: Path = Field(description="known_hosts holding the server's host key")


class LabBackupHost(Model):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{0,9}$")] = "lab3"
    """the backup lab host's name (its namespace, hostname and state directory)"""
    address: ipaddress.IPv4Address = ipaddress.IPv4Address("198.51.100.12")
    """its address on the lab's /24"""


class LabOldImapHost(Model):
    """A lab host acting as the old IMAP server a mailbox is migrated from."""
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{0,9}$")] = "lab5"
    """the old IMAP server's lab host name"""
    address: ipaddress.IPv4Address = ipaddress.IPv4Address("198.51.100.15")
    """its address on the lab's /24"""


class LabDnsHost(Model):
    """A lab host running Knot DNS: the lab's authoritative servers for its zones
    (the stand-in for a DNS provider), updated over RFC 2136 like one."""
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{0,9}$")] = "lab6"
    """the DNS host's lab host name"""
    address: ipaddress.IPv4Address = ipaddress.IPv4Address("198.51.100.53")
    """its address on the lab's /24 (the mail servers' unbound asks it for the lab zones)"""


class Lab(Model):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{0,9}$")] = "lab1"
    """the lab host's name: its namespace, veth, hostname and state under `.lab/`"""
    release: Literal["bookworm", "trixie"] = "bookworm"
    """the Debian release debootstrap'd for the lab host"""
    init: Literal["sshd", "systemd"] = "sshd"
    """the lab host's first process: sshd alone (fast), or systemd as on a real server (timers,
    units enabled at boot, a reboot that means something)"""
    address: ipaddress.IPv4Address = ipaddress.IPv4Address("198.51.100.10")
    """the lab host's address: a documentation range (198.51.100.0/24 or 203.0.113.0/24), not
    .0, .1 or .255"""
    state_dir: Path = Path("../.lab")
    """keys, known_hosts, secrets and CAs of the lab, on this machine (git-ignored)"""
    backup_host: LabBackupHost | None = None
    """a second lab host that serves the borg repository (`mailops lab up` builds it too)"""
    old_imap_host: LabOldImapHost | None = None
    """a lab host with plain Debian dovecot (maildir) and a seeded mailbox: the old server
    `mailops migrate` is tried against (`mailops lab up` builds it too)"""
    dns_host: LabDnsHost | None = None
    """a lab host with Knot DNS serving the lab's zones and pebble as the lab's ACME CA: the
    mail server's unbound asks it (a stub zone) (`mailops lab up` builds it too)"""

    @model_validator(mode="after")
    def _documentation_range(self):
        if not any(self.address in n for n in LAB_NETS) or int(self.address) & 0xFF in (0, 1, 255):
            raise ValueError(f"lab address {self.address} must be a host in 198.51.100.0/24 or "
                             "203.0.113.0/24 other than .0, .1 and .255")
        peers = [(f, h) for f, h in (("backup_host", self.backup_host),
                                      ("old_imap_host", self.old_imap_host),
                                      ("dns_host", self.dns_host)) if h is not None]
        for field, b in peers:
            if (b.address == self.address or b.name == self.name
                    or not any(b.address in n and self.address in n for n in LAB_NETS)
                    or int(b.address) & 0xFF in (0, 1, 255)):
                raise ValueError(f"lab {field} {b.name} {b.address} must be another host of the "
                                 f"lab's /24, with another name")
        if len({h.name for _, h in peers}) < len(peers) or \
                len({h.address for _, h in peers}) < len(peers):
            raise ValueError("lab " + ", ".join(f for f, _ in peers) + " must be different hosts")
        return self


class Resolver(Model):
    mode: Literal["recursive", "lab"] = "recursive"
    """recursive: unbound resolves and validates from the root; lab: it answers only the lab's
    zones and refuses the rest"""
    extra_records: list[str] = Field(default_factory=list,
                                     description="lab only: more local-data records")


class DnsUpdate(Model):
    """Where `mailops dns publish` sends the records: RFC 2136 dynamic updates signed
    with TSIG (BIND, Knot, PowerDNS and many providers take them; the lab's DNS host)."""
    server: ipaddress.IPv4Address | ipaddress.IPv6Address = Field(
        description="the primary authoritative server of the mail domains' zones")
    port: Port = 53
    """the primary's DNS port"""
    key_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")] = "mailops"
    """the TSIG key's name, as the primary knows it"""
    key_secret: SecretRef = Field(description="the TSIG key's secret (base64): file:PATH[#key] "
                                              "or env:NAME, never a literal")
    algorithm: Literal["hmac-sha256", "hmac-sha512"] = "hmac-sha256"
    """the TSIG key's algorithm"""


class Dns(Model):
    """The records the mail domains publish (`mailops dns check` compares them)."""
    ttl: Annotated[int, Field(ge=1, le=86400)] = 3600
    """the TTL of every record mailops publishes, in seconds"""
    spf: Annotated[str, Field(pattern=r"^v=spf1( [!-~]+)* [~?+-]?all$")] = Field(
        "v=spf1 mx -all", description="each mail domain's SPF record (it must allow the "
                                      "server's addresses)")
    dmarc_policy: Literal["none", "quarantine", "reject"] = "quarantine"
    """the DMARC policy published for every mail domain (`p=`)"""
    update: DnsUpdate | None = Field(None, description="publish with `mailops dns publish` "
                                                       "(RFC 2136); without it, by hand")
    dane: bool = False
    """DANE for mail to this server (RFC 7672): TLSA records (3 1 1, the SHA-256 of each served
    certificate's public key) at `_25._tcp.<hostname>`, and certbot keeps the keys at renewal so
    the records stay true; only where the host's zone is DNSSEC-signed"""


class Firewall(Model):
    ssh_port: Port = 22
    """the port sshd listens on, opened in the firewall"""
    ssh_from: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list, description="networks allowed to reach SSH; empty: anywhere")
    open_tcp: list[Port] = Field(default_factory=lambda: [25, 465, 587, 993, 4190])
    """the TCP ports opened to everyone (SMTP, submissions, submission, IMAPS, ManageSieve)"""


class Updates(Model):
    unattended: bool = True
    """security updates installed daily by Debian's unattended-upgrades (its default origins:
    the release's security archive); pending ones are shown by 90-verify"""


class Sshd(Model):
    key_only: bool = True
    """key-only SSH (no password or keyboard-interactive logins, root by key only); applied only
    over a key-based connection (ssh:// with a key), never over local://"""


class Acme(Model):
    """Certificates from an ACME CA, by Debian's certbot on the server, validated by DNS-01
    through RFC 2136 updates (no web server, no port 80): the account's key stays on the
    server; renewal is certbot's own timer; a deploy hook installs a renewed certificate
    only after it passes its checks."""
    server: Annotated[str, Field(pattern=r"^https://[A-Za-z0-9.-]+(:\d+)?/\S*$")] = Field(
        "https://acme-v02.api.letsencrypt.org/directory", description="the ACME directory URL")
    email: Address | None = Field(None, description="the account's contact (default: the "
                                                    "postmaster)")
    ca_file: Path | None = Field(None, description="a private ACME CA's root and the CA of its "
                                 "API's certificate (PEM, on this machine): trusted on the server "
                                 "and by verify; none for a public CA")
    rfc2136_server: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    """DNS-01: the zone's primary that takes RFC 2136 updates of `_acme-challenge` TXT records
    (default: dns.update's server)"""
    rfc2136_port: Port = 53
    """its DNS port"""
    key_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")] | None = None
    """a TSIG key allowed to update `_acme-challenge` TXT records (default: dns.update's; a key
    limited to those names is better, where the server allows)"""
    key_secret: SecretRef | None = None
    """that key's secret: file:PATH[#key] or env:NAME (default: dns.update's)"""
    propagation_s: Annotated[int, Field(ge=0, le=600)] = 30
    """seconds certbot waits after the TXT update, for the provider's secondaries"""


class TLS(Model):
    source: Literal["self-signed", "files", "acme"] = "self-signed"
    """where the RSA and EC certificates come from: self-signed (a lab CA this machine makes),
    files (already on the server) or acme (certbot, DNS-01)"""
    ca_dir: Path = Field(Path("../.lab/ca"), description="self-signed: where the controller "
                         "keeps the CA and the issued certificates")
    rsa_cert: str | None = Field(None, description="files: certificate chain path on the server")
    rsa_key: str | None = None
    """files: the RSA key's path on the server"""
    ec_cert: str | None = None
    """files: the EC certificate chain's path on the server"""
    ec_key: str | None = None
    """files: the EC key's path on the server"""
    acme: Acme | None = None
    """acme: the CA, account and DNS-01 settings"""

    @model_validator(mode="after")
    def _files_complete(self):
        paths = [self.rsa_cert, self.rsa_key, self.ec_cert, self.ec_key]
        if self.source == "files":
            missing = [n for n, v in zip(("rsa_cert", "rsa_key", "ec_cert", "ec_key"), paths)
                       if not v or not v.startswith("/")]
            if missing:
                raise ValueError(f"source files needs absolute server paths for: "
                                 f"{', '.join(missing)}")
        return self


class Mailbox(Model):
    address: Address
    """the mailbox's address (lower-case ASCII; its domain one of mail_domains)"""
    password: SecretRef = Field(description="initial password, set when the mailbox is created")
    quota_mb: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    """the mailbox's quota in MB; 0: mail.default_quota_mb"""


class Alias(Model):
    source: Address
    """the alias address"""
    destinations: list[Address] = Field(min_length=1)
    """where its mail goes: mailboxes or aliases on this server"""


class Mail(Model):
    message_size_limit_mb: Annotated[int, Field(ge=1, le=1024)] = 50
    """the largest message postfix takes, in MB"""
    default_quota_mb: Annotated[int, Field(ge=0, le=10_000_000)] = 2048
    """the quota of a mailbox that names none, in MB (0: none)"""
    password_scheme: Literal["auto", "SHA512-CRYPT", "BLF-CRYPT"] = "auto"
    """how passwords are hashed: auto (BLF-CRYPT where dovecot supports it, else SHA512-CRYPT),
    or one of them"""
    sha512_rounds: Annotated[int, Field(ge=5000, le=5_000_000)] = 5000
    """SHA512-CRYPT's rounds"""
    bcrypt_cost: Annotated[int, Field(ge=4, le=15)] = 6
    """BLF-CRYPT's cost; dovecot checks the password against the (cached) hash on every login,
    so this cost is paid per login (6 is about 5 ms on the lab's CPU, bench/auth.py)"""
    purge_at: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = "04:07"
    """daily `doveadm purge -A` at this time, server time (mdbox gives expunged mail's disk
    space back only then)"""
    outbound: Literal["direct", "lab"] = Field("direct", description="lab: outbound mail "
                                               "never leaves the host; it is kept in "
                                               "/var/spool/mailops/outbound")
    postmaster: Address | None = None
    """where DMARC and TLS-RPT reports go, and the ACME account's contact (default: postmaster@
    the first mail domain)"""
    mailboxes: list[Mailbox] = Field(default_factory=list)
    """the mailboxes the first provision creates with these initial passwords (later changes:
    `mailops user`)"""
    aliases: list[Alias] = Field(default_factory=list)
    """aliases the first provision creates"""
    catch_all: dict[FQDN, Address] = Field(default_factory=dict)
    """per domain, the address that gets mail for every unknown local part there"""
    tls_policy: dict[FQDN, Literal["none", "may", "encrypt", "dane", "dane-only", "verify",
                                   "secure"]] = Field(default_factory=dict)
    """per-destination TLS for outbound mail (postfix smtp_tls_policy_maps): secure, the chain
    and the name (the domain or a name under it); verify, the chain and the MX's name; encrypt,
    TLS with any certificate; dane, DANE where the domain publishes TLSA over DNSSEC; may,
    opportunistic (everyone else's default)"""


class Rspamd(Model):
    enabled: bool = True
    """rspamd as postfix's milter, with redis"""
    reject: Annotated[float, Field(gt=0)] = 15.0
    """score at which mail is refused at SMTP time (554)"""
    add_header: Annotated[float, Field(gt=0)] = 6.0
    """score at which mail gets `X-Spam: Yes` (the global sieve files it into Junk)"""
    greylist: Annotated[float, Field(gt=0)] = 4.0
    """score at which mail is greylisted (4xx, the sender retries)"""
    history_rows: Annotated[int, Field(ge=200, le=1_000_000)] = 5000
    """rows of scan history kept in redis (collect must run before they wrap)"""
    milter_default_action: Literal["tempfail", "accept"] = "tempfail"
    """when rspamd does not answer: tempfail (senders retry; nothing passes unscanned) or accept"""
    controller_password: SecretRef | None = Field(
        None, description="set when the controller has none; stored hashed")
    dkim_selector: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] = "mail"
    """the DKIM selector of every domain's key"""

    @model_validator(mode="after")
    def _ordered(self):
        if not self.greylist <= self.add_header <= self.reject:
            raise ValueError("thresholds must be ordered greylist <= add_header <= reject")
        if self.enabled and self.controller_password is None:
            raise ValueError("controller_password is required (a secret reference)")
        return self


class Sieve(Model):
    spam_to_junk: bool = True
    """global sieve_before: a message rspamd marked `X-Spam: Yes` is filed into Junk"""
    learn: bool = True
    """IMAPSieve (needs rspamd): moving a message into Junk teaches rspamd spam, moving it out
    of Junk (not to Trash) teaches ham"""
    learn_timeout_s: Annotated[int, Field(ge=1, le=60)] = 10
    """seconds a learn call may take (it blocks the user's MOVE)"""


class Jail(Model):
    maxretry: Annotated[int, Field(ge=1, le=1000)] = 5
    """failures within findtime_s that ban an address"""
    findtime_s: Annotated[int, Field(ge=10, le=30 * 86400)] = 600
    """the window failures are counted in, in seconds"""
    bantime_s: Annotated[int, Field(ge=10, le=365 * 86400)] = 3600
    """how long a ban lasts, in seconds"""


class Fail2ban(Model):
    enabled: bool = True
    """fail2ban with the jails below, banning through nftables"""
    ignoreip: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(default_factory=list)
    """never banned: loopback and the server's own addresses always; add monitoring hosts here"""
    dovecot: Jail = Jail()
    """failed IMAP and ManageSieve logins"""
    postfix_sasl: Jail = Jail()
    """failed SMTP AUTH on 25, 465 and 587"""
    rspamd: Jail = Jail(maxretry=10, findtime_s=3600)
    """senders whose messages rspamd keeps refusing (554)"""
    recidive: Jail = Jail(maxretry=3, findtime_s=86400, bantime_s=7 * 86400)
    """an address banned again and again is banned from every port for longer"""
    dbpurgeage_days: Annotated[int, Field(ge=90, le=3650)] = 180
    """days of ban history kept in fail2ban's sqlite (the analysis notebooks read it)"""
    sshd: Literal["auto", "on", "off"] = "auto"
    """auto watches sshd through the journal where systemd runs, and is off where no log of sshd
    exists (a jail without its log stops fail2ban)"""


class Backup(Model):
    enabled: bool = False
    """daily borg backups by borgmatic"""
    repository: Annotated[str, Field(pattern=r"^ssh://[a-z_][a-z0-9_-]*@[A-Za-z0-9.:\[\]-]+(:\d+)?/[A-Za-z0-9._/~-]+$")] = \
        "ssh://borg@backup.invalid/srv/borg/mail"
    """the borg repository over SSH: ssh://USER@HOST[:PORT]/PATH"""
    passphrase: SecretRef | None = Field(None, description="borg repokey passphrase (read by a "
                                         "pass command on the server, never argv)")
    ssh_key: SecretRef | None = Field(None, description="private key (OpenSSH format) the server "
                                      "logs in to the repository host with")
    known_hosts: Path | None = Field(None, description="known_hosts line(s) of the repository "
                                     "host: its key is checked, never accepted blindly")
    key_copy: Path | None = Field(None, description="where this machine keeps an exported copy "
                                  "of the repository key (0600, never shown)")
    compression: Annotated[str, Field(pattern=r"^(none|lz4|zstd(,\d{1,2})?|zlib(,\d)?|lzma(,\d)?|auto,[a-z0-9,]+)$")] = "zstd,6"
    """borg's compression"""
    keep_daily: Annotated[int, Field(ge=0, le=366)] = 7
    """daily archives kept"""
    keep_weekly: Annotated[int, Field(ge=0, le=520)] = 4
    """weekly archives kept"""
    keep_monthly: Annotated[int, Field(ge=0, le=1200)] = 12
    """monthly archives kept"""
    checks: list[Literal["repository", "archives", "data"]] = Field(
        default_factory=lambda: ["repository", "archives"])
    """borgmatic's consistency checks (borgmatic 1.8+ runs them every check_frequency; 1.7 every
    time, limited to the last check_last archives)"""
    check_frequency: Annotated[str, Field(pattern=r"^(always|\d+ (hours?|days?|weeks?|months?))$")] = "2 weeks"
    """how often the checks run: always, or a number of hours, days, weeks or months"""
    check_last: Annotated[int, Field(ge=1, le=1000)] = 3
    """borgmatic 1.7: the archives checked"""
    at: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = "03:17"
    """daily at this time (server's time zone): a systemd timer where systemd runs, cron
    otherwise"""
    max_age_hours: Annotated[int, Field(ge=1, le=24 * 31)] = 26
    """verify and status fail when the last successful backup is older"""
    rebuild_max_age_hours: Annotated[int, Field(ge=1, le=24 * 366)] = 48
    """`mailops rebuild` refuses an archive older than this (mail received after it would be
    lost); `--max-age-hours` accepts an older one on purpose"""

    @model_validator(mode="after")
    def _complete(self):
        if self.enabled and (self.passphrase is None or self.ssh_key is None
                             or self.known_hosts is None or self.key_copy is None):
            raise ValueError("an enabled backup needs passphrase, ssh_key, known_hosts and "
                             "key_copy (where the repository key is exported to)")
        return self


# an old IMAP server: imaps:// (TLS from the start) or imap:// (STARTTLS), host, port
IMAP_SOURCE_RE = re.compile(r"(imaps?)://([A-Za-z0-9.-]+|\[[0-9a-fA-F:.]+\])(?::(\d{1,5}))?/?")


def imap_login_ok(value) -> bool:
    """A user name for an IMAP login: 1-255 characters, no control characters."""
    return isinstance(value, str) and 1 <= len(value) <= 255 and not any(
        ord(c) < 32 or ord(c) == 127 for c in value)


def _source_url(value: str) -> str:
    m = IMAP_SOURCE_RE.fullmatch(value)
    if not m or not 1 <= int(m[3] or 993) <= 65535:
        raise ValueError("must be imaps://host[:port] (TLS from the start, port 993) or "
                         "imap://host[:port] (STARTTLS, port 143); plain text is never used")
    return value


def _imap_login(value: str) -> str:
    if not imap_login_ok(value):
        raise ValueError("must be 1-255 characters without control characters")
    return value


class MigrationMailbox(Model):
    login: Annotated[str, AfterValidator(_imap_login)] = Field(
        description="the user name on the old server")
    password: SecretRef = Field(description="file:PATH[#key] or env:NAME (never a literal)")
    to: Address = Field(description="the mailbox here (it must exist: mailops user add)")


class Insight(Model):
    """`mailops collect`, the analysis notebooks and `mailops report`."""
    store: str = Field("../store", description="the local parquet store (all hosts), "
                       "relative to this file")
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")] | None = Field(
        None, description="this host's name in the store and reports (default: the short hostname)")
    collect_every_min: Annotated[int, Field(ge=1, le=1440)] = 5
    """minutes between collections (`mailops schedule install`)"""
    report_to: Address | None = Field(None, description="mail each report here, through the "
                                      "server's own submission port")
    report_from: Address | None = Field(None, description="the mailbox that sends the reports "
                                        "(default: the first mailbox)")


class Migration(Model):
    """`mailops migrate`: mailboxes pulled from an old IMAP server with dovecot's dsync."""
    source: Annotated[str, AfterValidator(_source_url)] = Field(
        description="imaps://host[:port] or imap://host[:port] (STARTTLS)")
    ca_file: Path | None = Field(None, description="trust this CA for the old server's "
                                 "certificate (default: the mail server's system CAs)")
    mode: Literal["sync", "backup"] = Field("sync", description="sync: copy and update, never "
                                            "delete here; backup: an exact copy (deletes here "
                                            "what the old server does not have)")
    mailboxes: list[MigrationMailbox] = Field(default_factory=list)
    """the mailboxes to pull, each a login there and an address here"""


class RemoteMailbox(Model):
    """A mailbox on another mail server: verify sends to it (from this server's first
    mailbox, through 587) and reads it back there over IMAPS, proof that mail from here
    arrives signed and checked (DKIM, SPF and DMARC pass at the other side) over TLS."""
    address: Address
    """a mailbox on another server that verify sends to"""
    imap: Annotated[str, Field(pattern=r"^imaps://[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
                               description="imaps://host[:port]: its IMAP server, the name "
                                           "its certificate carries")]
    dial: ipaddress.IPv4Address | ipaddress.IPv6Address | None = Field(
        None, description="connect to this address (the certificate is still checked "
                          "against the imap host's name); default: the name, resolved")
    password: SecretRef = Field(description="file:PATH[#key] or env:NAME")
    ca_file: Path | None = Field(None, description="the CA of its certificate (default: "
                                                   "this machine's system CAs)")
    wait_s: Annotated[int, Field(ge=5, le=900)] = 60
    """seconds verify waits for the message to arrive there"""

    @property
    def imap_host(self) -> str:
        return self.imap.removeprefix("imaps://").rsplit(":", 1)[0]

    @property
    def imap_port(self) -> int:
        rest = self.imap.removeprefix("imaps://")
        return int(rest.rsplit(":", 1)[1]) if ":" in rest else 993


class Verify(Model):
    remote_mailboxes: list[RemoteMailbox] = Field(
        default_factory=list, description="mailboxes elsewhere that verify sends to and "
                                          "reads back: mail from here to the internet")


class Params(Model):
    target: Annotated[str, AfterValidator(_target)]
    """the server: ssh://USER@HOST[:PORT] or local://"""
    ssh: SSH | None = None
    """the key and known_hosts for an ssh:// target (the host key is checked, never accepted
    unseen)"""
    hostname: FQDN
    """the server's fully qualified name: HELO, certificates, MX target, PTR"""
    mail_domains: list[FQDN] = Field(min_length=1)
    """the domains this server receives mail for (the first is the primary)"""
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(min_length=1)
    """the server's public addresses (A/AAAA, PTR, SPF)"""
    timezone: Annotated[str, AfterValidator(_tz)] = "Etc/UTC"
    """the server's time zone (the charts' time axes use it too)"""
    packages: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]+$")]] = Field(
        default_factory=list, description="extra Debian packages for the base step")
    resolver: Resolver = Resolver()
    """the server's own unbound, which rspamd and postfix ask"""
    dns: Dns = Dns()
    """the records the server needs and where they are published"""
    firewall: Firewall = Firewall()
    """the nftables firewall"""
    updates: Updates = Updates()
    """security updates"""
    sshd: Sshd = Sshd()
    """sshd hardening"""
    secrets: dict[Annotated[str, Field(pattern=r"^[a-z_]+$")], SecretRef] = Field(
        default_factory=dict)
    """named secret references (file:PATH[#key] or env:NAME, never values); `mailops lab up`
    generates the lab's"""
    tls: TLS = TLS()
    """the server's certificates"""
    mail: Mail = Mail()
    """postfix and dovecot: limits, hashes, mailboxes, aliases, outbound TLS"""
    rspamd: Rspamd = Rspamd(enabled=False)
    """spam filtering (off unless set)"""
    sieve: Sieve = Sieve()
    """global sieve and learning from Junk moves"""
    fail2ban: Fail2ban = Fail2ban()
    """bans after failed logins and refused mail"""
    backup: Backup = Backup()
    """borg backups"""
    lab: Lab | None = None
    """lab only: the lab host this server is and its neighbours"""
    migration: Migration | None = None
    """mailboxes pulled from an old IMAP server (`mailops migrate`)"""
    insight: Insight = Insight()
    """collect, store and reports"""
    verify: Verify = Verify()
    """what 90-verify checks besides its own tests"""
    base_dir: Path = Field(default=Path("."), exclude=True,
                           description="set by load_params: the file's directory")

    @model_validator(mode="after")
    def _ssh_needs_keys(self):
        if self.target.startswith("ssh://") and self.ssh is None:
            raise ValueError("target is ssh:// but no `ssh:` section names key_file and "
                             "known_hosts")
        return self

    @model_validator(mode="after")
    def _acme_complete(self):
        if self.tls.source != "acme":
            return self
        if self.tls.acme is None:
            raise ValueError("tls.source acme needs a tls.acme section (server, ...)")
        a = self.tls.acme
        if (a.key_secret is None or a.rfc2136_server is None) and self.dns.update is None:
            raise ValueError("tls.source acme validates by DNS-01: give tls.acme.rfc2136_server "
                             "and key_secret (or dns.update, whose server and key it then uses)")
        return self

    @model_validator(mode="after")
    def _mail_consistent(self):
        domains = set(self.mail_domains)
        problems = []
        seen = set()
        for i, mb in enumerate(self.mail.mailboxes):
            if mb.address.split("@")[1] not in domains:
                problems.append(f"mail.mailboxes.{i}.address {mb.address!r}: domain not in "
                                "mail_domains")
            if mb.address in seen:
                problems.append(f"mail.mailboxes.{i}.address {mb.address!r}: declared twice")
            seen.add(mb.address)
        for i, al in enumerate(self.mail.aliases):
            if al.source.split("@")[1] not in domains:
                problems.append(f"mail.aliases.{i}.source {al.source!r}: domain not in "
                                "mail_domains")
            if al.source in seen:
                problems.append(f"mail.aliases.{i}.source {al.source!r}: already a mailbox "
                                "or an alias")
            seen.add(al.source)
        for d in self.mail.catch_all:
            if d not in domains:
                problems.append(f"mail.catch_all {d!r}: domain not in mail_domains")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def postmaster(self) -> str:
        return self.mail.postmaster or f"postmaster@{self.mail_domains[0]}"

    def path(self, p: Path | str) -> Path:
        """A path from the file, resolved against the file's directory."""
        return (self.base_dir / Path(p).expanduser()).resolve()

    @property
    def short_hostname(self) -> str:
        return self.hostname.split(".")[0]

    def __repr__(self) -> str:
        return f"Params(target={self.target!r}, hostname={self.hostname!r})"


def parse_params(data, source: str = "<parameters>", base_dir: Path = Path(".")) -> Params:
    if not isinstance(data, dict):
        raise ParamsError(source, ["the file must be a YAML mapping of parameters"])
    try:
        return Params.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ParamsError(source, [_describe(e) for e in exc.errors()]) from None


@functools.cache
def _secret_fields() -> frozenset[str]:
    """Names of every field that holds a secret reference, in any model."""
    names, todo, seen = set(), [Params], set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            text = repr(field.annotation) + repr(field.metadata)
            if "_secret_ref" in text:
                names.add(name)
            for sub in _models_in(field.annotation):
                todo.append(sub)
    return frozenset(names)


def _models_in(annotation) -> list[type]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _shown(loc: tuple, value) -> str:
    """The bad value as an error may show it: never a secret's, never a mapping's
    or list's contents (a model-level error's input holds its secrets too)."""
    if any(str(part) in _secret_fields() for part in loc):
        return "the value is not shown: it would be a secret"
    if isinstance(value, dict):
        return f"got a mapping with keys {', '.join(map(str, value))}"
    if isinstance(value, (list, tuple)):
        return f"got a list of {len(value)}"
    return f"got {value!r}"


def _describe(err: dict) -> str:
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key (allowed keys: see parameters/example.yaml)"
    if err["type"] == "missing":
        return f"{loc}: required but missing"
    return f"{loc}: {msg} ({_shown(err['loc'], err.get('input'))})"


def load_params(path: str | Path) -> Params:
    """Read and validate a parameters file; raises :class:`ParamsError`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ParamsError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        # PyYAML's own message quotes the offending line, which may hold a secret
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ParamsError(str(path), [f"not valid YAML{where}: {problem}"]) from None
    return parse_params(data, str(path), path.resolve().parent)
