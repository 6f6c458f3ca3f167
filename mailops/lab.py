"""The lab host: a throwaway Debian server built on this machine.

A debootstrap'd rootfs (cached as a tarball, so a rebuild skips debootstrap)
runs in its own network, UTS, PID and mount namespaces with sshd as its first
process.  Its veth joins a bridge on the host that carries a documentation-range
network (198.51.100.0/24 or 203.0.113.0/24) and nothing else: the lab has no
default route.  apt inside goes through apt-cacher-ng, which listens only on
the bridge's address.  Everything here runs through :class:`LocalHost`.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
import time
from pathlib import Path

from .host import CommandError, LocalHost

IMAGE_VERSION = 1
CACHE_DIR = Path("/var/cache/mailops")
# The bridge and its apt proxy serve every lab on the machine, whichever checkout
# started them: their state is machine-wide, like the namespaces.
RUN_DIR = Path("/run/mailops")
PROXY_PORT = 3149          # not 3142: a system apt-cacher-ng may hold that one
MIRROR = "http://deb.debian.org/debian"
PACKAGES = "openssh-server,iproute2,procps,ca-certificates"
SYSTEMD_PACKAGES = ",systemd,systemd-sysv,dbus"
SYSTEMD_MASK = ("systemd-modules-load.service", "getty@tty1.service", "console-getty.service",
                "systemd-udevd.service", "systemd-udev-trigger.service", "sys-kernel-config.mount",
                "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "systemd-remount-fs.service")


class LabError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class LabSpec:
    name: str
    release: str
    address: ipaddress.IPv4Address
    state_dir: Path
    cache_dir: Path = CACHE_DIR
    mirror: str = MIRROR
    secret_keys: tuple[str, ...] = ()   # keys the parameters read from <state_dir>/secrets.yaml
    init: str = "sshd"                  # the first process: sshd, or systemd (pivot_root)

    @classmethod
    def from_params(cls, params) -> "LabSpec":
        if params.lab is None:
            raise LabError("these parameters have no `lab:` section")
        lab = params.lab
        state_dir = params.path(lab.state_dir)
        refs = [mb.password for mb in params.mail.mailboxes] + list(params.secrets.values())
        refs += [params.rspamd.controller_password] if params.rspamd.controller_password else []
        refs += [r for r in (params.backup.passphrase, params.backup.ssh_key) if r]
        refs += [m.password for m in params.migration.mailboxes] if params.migration else []
        refs += [params.dns.update.key_secret] if params.dns.update else []
        keys = tuple(ref.split("#", 1)[1] for ref in refs if ref.startswith("file:") and "#" in ref
                     and params.path(ref[5:].split("#", 1)[0]) == state_dir / "secrets.yaml")
        return cls(lab.name, lab.release, lab.address, state_dir, secret_keys=keys, init=lab.init)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"{self.address}/24", strict=False)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def bridge(self) -> str:
        return f"mo-br{str(self.network.network_address).split('.')[0]}"

    netns = property(lambda self: f"mailops-{self.name}")
    veth = property(lambda self: f"mo-{self.name}")
    dir = property(lambda self: self.state_dir / self.name)
    rootfs = property(lambda self: self.dir / "rootfs")
    key_file = property(lambda self: self.dir / "id_ed25519")
    known_hosts = property(lambda self: self.dir / "known_hosts")
    state_file = property(lambda self: self.dir / "state.json")
    log_file = property(lambda self: self.dir / "lab.log")
    url = property(lambda self: f"ssh://root@{self.address}:22")

    @property
    def image(self) -> Path:
        flavour = "" if self.init == "sshd" else f"-{self.init}"
        return self.cache_dir / f"rootfs-{self.release}{flavour}-v{IMAGE_VERSION}.tar.zst"


@dataclasses.dataclass(frozen=True)
class LabStatus:
    name: str
    state: str            # up, down, half-dead
    url: str
    pid: int | None
    detail: str = ""

    @property
    def up(self) -> bool:
        return self.state == "up"

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"lab {self.name}: {self.state} {self.url}" + (
            f" pid {self.pid}" if self.pid else "") + extra


# -- processes -----------------------------------------------------------------

def _start_time(pid: int) -> str | None:
    """The process's start time (to tell it from a later one with its pid);
    None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(record: dict | None) -> bool:
    return bool(record) and _start_time(record["pid"]) == record["start"]


def _record(pid: int) -> dict:
    for _ in range(50):
        start = _start_time(pid)
        if start:
            return {"pid": pid, "start": start}
        time.sleep(0.01)
    raise LabError(f"process {pid} exited at once")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _banner(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


# -- status, up, down ------------------------------------------------------------

def status(spec: LabSpec, local: LocalHost | None = None) -> LabStatus:
    local = local or LocalHost()
    state = _read_json(spec.state_file)
    netns_exists = local.run(["ip", "netns", "pids", spec.netns], check=False).ok
    if state is None and not netns_exists:
        return LabStatus(spec.name, "down", spec.url, None)
    problems = []
    if state is None:
        problems.append("namespace without state")
    elif not _alive(state.get("ns")):
        problems.append("first process is gone")
    if not netns_exists:
        problems.append("network namespace is gone")
    if not problems and not _banner(str(spec.address)):
        problems.append("sshd does not answer")
    if not problems and not spec.known_hosts.exists():
        problems.append("known_hosts is missing")
    pid = state["ns"]["pid"] if state else None
    if problems:
        return LabStatus(spec.name, "half-dead", spec.url, pid, "; ".join(problems))
    return LabStatus(spec.name, "up", spec.url, pid, spec.release)


def up(spec: LabSpec, log=print) -> LabStatus:
    """Bring the lab up; a no-op when it is up, a rebuild when it is half-dead."""
    local = LocalHost()
    fence(spec.network, local)
    st = status(spec, local)
    if st.up:
        _ensure_egress_watch(spec, local)
        _ensure_proxy(spec, local, log)   # the proxy can die on its own
        ensure_secrets(spec)
        log(f"{st} (already up)")
        return st
    if st.state == "half-dead":
        log(f"lab {spec.name} is half-dead ({st.detail}): tearing it down")
    _teardown(spec, local)
    spec.dir.mkdir(parents=True, exist_ok=True)
    _ensure_bridge(spec, local)
    _ensure_egress_watch(spec, local)
    _ensure_proxy(spec, local, log)
    _ensure_rootfs(spec, local, log)
    _ensure_keys(spec, local)
    ensure_secrets(spec)
    _start(spec, local)
    st = status(spec, local)
    if not st.up:
        raise LabError(f"lab {spec.name} did not come up: {st.detail}; see {spec.log_file}")
    log(str(st))
    return st


def running(local: LocalHost | None = None) -> list[str]:
    """The names of the lab hosts whose namespaces exist on this machine."""
    out = (local or LocalHost()).run(["ip", "netns", "list"]).out
    return [n.split()[0].removeprefix("mailops-") for n in out.splitlines()
            if n.startswith("mailops-")]


def down(spec: LabSpec, purge: bool = False, log=print) -> None:
    """Stop what ``up`` started (by pid) and remove the namespace; ``purge``
    also removes the rootfs and keys."""
    local = LocalHost()
    fence(spec.network, local)
    _teardown(spec, local)
    others = [n for n in running(local) if n != spec.name]
    if not others:
        _stop_proxy(spec, local)
        local.run(["ip", "link", "del", spec.bridge], check=False)
        local.run(["nft", "delete", "table", "inet", _watch_table(spec)], check=False)
    if purge and spec.dir.exists():
        local.run(["rm", "-rf", "--one-file-system", str(spec.dir)])
    log(f"lab {spec.name}: down" + (" (purged)" if purge else ""))


def _teardown(spec: LabSpec, local: LocalHost) -> None:
    state = _read_json(spec.state_file) or {}
    if _alive(state.get("ns")):
        local.run(["kill", "-KILL", str(state["ns"]["pid"])], check=False)
    pids = local.run(["ip", "netns", "pids", spec.netns], check=False).out.split()
    if pids:
        local.run(["kill", "-KILL", *pids], check=False)
    for _ in range(100):
        if not local.run(["ip", "netns", "pids", spec.netns], check=False).out.strip():
            break
        time.sleep(0.05)
    local.run(["ip", "netns", "del", spec.netns], check=False)
    local.run(["ip", "link", "del", spec.veth], check=False)
    spec.state_file.unlink(missing_ok=True)


# Egress watch: every packet that reaches this machine from the lab bridge for an
# address outside the lab's documentation ranges is counted and dropped before
# routing (the labs have no default route, so there should be none; IPv6
# link-local neighbour discovery stays on the link and is not counted).
EGRESS_RULES = """table inet {table} {{
  chain egress {{
    type filter hook prerouting priority -300; policy accept;
    iifname "{bridge}" ip daddr != {{ 198.51.100.0/24, 203.0.113.0/24 }} counter drop comment "lab egress"
    iifname "{bridge}" ip6 daddr != {{ fe80::/10, ff02::/16 }} counter drop comment "lab egress"
  }}
}}
"""


def _watch_table(spec: LabSpec) -> str:
    return "mailops_watch_" + spec.bridge.replace("-", "_")


def _ensure_egress_watch(spec: LabSpec, local: LocalHost) -> None:
    if not local.run(["nft", "list", "table", "inet", _watch_table(spec)], check=False).ok:
        local.run(["nft", "-f", "-"], stdin=EGRESS_RULES.format(
            table=_watch_table(spec), bridge=spec.bridge).encode())


def reset_egress_watch(spec: LabSpec) -> None:
    """Counters back to zero (the table made anew)."""
    local = LocalHost()
    local.run(["nft", "delete", "table", "inet", _watch_table(spec)], check=False)
    _ensure_egress_watch(spec, local)


def parse_counters(text: str) -> int:
    """The packets counted by every rule of an `nft list table` output (pure)."""
    import re
    return sum(int(n) for n in re.findall(r"counter packets (\d+) bytes", text))


def egress_packets(spec: LabSpec) -> int:
    """Packets from the lab to non-lab addresses since the watch was (re)made."""
    out = LocalHost().run(["nft", "list", "table", "inet", _watch_table(spec)]).out
    return parse_counters(out)


# The fence: a lab's network is unreachable from this machine except through its
# bridge.  Without it, a probe sent to a lab address while the lab is down (after a
# reboot, say) would follow the default route out.  The bridge's own connected route
# (metric 0) wins while the lab is up; the fence (a high metric) is what is left when it
# is gone, and `down` leaves it.  Only the lab's own /24 is fenced: this machine may
# reach its package mirrors at other documentation-range addresses.
FENCE_METRIC = "4242"


def fence(network, local: LocalHost | None = None) -> None:
    local = local or LocalHost()
    local.run(["ip", "route", "replace", "unreachable", str(network), "metric", FENCE_METRIC])


def fenced(network, local: LocalHost | None = None) -> bool:
    local = local or LocalHost()
    return f"unreachable {network} " in local.run(
        ["ip", "route", "show", "table", "main", "type", "unreachable"]).out + " "


def _ensure_bridge(spec: LabSpec, local: LocalHost) -> None:
    if not local.run(["ip", "link", "show", spec.bridge], check=False).ok:
        local.run(["ip", "link", "add", spec.bridge, "type", "bridge"])
    addr = f"{spec.gateway}/{spec.network.prefixlen}"
    if addr not in local.run(["ip", "-o", "addr", "show", "dev", spec.bridge]).out:
        local.run(["ip", "addr", "add", addr, "dev", spec.bridge])
    local.run(["ip", "link", "set", spec.bridge, "up"])


def _proxy_file(spec: LabSpec) -> Path:
    return RUN_DIR / f"apt-proxy-{spec.bridge}.json"


def _ensure_proxy(spec: LabSpec, local: LocalHost, log) -> None:
    if _alive(_read_json(_proxy_file(spec))) and _listening(spec.gateway, PROXY_PORT):
        return
    logdir = RUN_DIR / f"apt-proxy-{spec.bridge}"
    logdir.mkdir(parents=True, exist_ok=True)
    cache = spec.cache_dir / "apt-cacher-ng"
    cache.mkdir(parents=True, exist_ok=True)
    pid = local.spawn(["apt-cacher-ng", "-c", "/etc/apt-cacher-ng", "ForeGround=1",
                       f"BindAddress={spec.gateway}", f"Port={PROXY_PORT}",
                       f"CacheDir={cache}", f"LogDir={logdir}",
                       f"SocketPath={logdir}/socket", f"PidFile={logdir}/pid",
                       # Debian's mirror list needs a backend: the mirror this machine uses
                       f"Remap-debrep=file:deb_mirror*.gz /debian ; {spec.mirror}/"],
                      logdir / "stdout.log")
    _proxy_file(spec).write_text(json.dumps(_record(pid)))
    for _ in range(100):
        if _listening(spec.gateway, PROXY_PORT):
            log(f"apt proxy on {spec.gateway}:{PROXY_PORT} (pid {pid})")
            return
        time.sleep(0.05)
    raise LabError(f"apt-cacher-ng did not listen on {spec.gateway}:{PROXY_PORT}; "
                   f"see {logdir}")


def _stop_proxy(spec: LabSpec, local: LocalHost) -> None:
    rec = _read_json(_proxy_file(spec))
    if _alive(rec):
        local.run(["kill", str(rec["pid"])], check=False)
    _proxy_file(spec).unlink(missing_ok=True)


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), 0.5):
            return True
    except OSError:
        return False


# -- the rootfs --------------------------------------------------------------------

def _ensure_rootfs(spec: LabSpec, local: LocalHost, log) -> None:
    if (spec.rootfs / "usr/sbin/sshd").exists():
        return
    if not spec.image.exists():
        _build_image(spec, local, log)
    log(f"extracting {spec.image.name}")
    spec.rootfs.mkdir(parents=True, exist_ok=True)
    local.run(["tar", "--zstd", "-xpf", str(spec.image), "--numeric-owner", "-C",
               str(spec.rootfs)], timeout=600)


def _build_image(spec: LabSpec, local: LocalHost, log) -> None:
    spec.cache_dir.mkdir(parents=True, exist_ok=True)
    build = spec.cache_dir / f"build-{spec.image.name}"
    local.run(["rm", "-rf", "--one-file-system", str(build)])
    log(f"debootstrap {spec.release} (about a minute; cached afterwards as {spec.image})")
    packages = PACKAGES + (SYSTEMD_PACKAGES if spec.init == "systemd" else "")
    local.run(["debootstrap", "--variant=minbase", f"--include={packages}", spec.release,
               str(build), spec.mirror], timeout=1800)
    if spec.init == "systemd":
        # no kernel modules to load in a namespace; no consoles to get
        for unit in SYSTEMD_MASK:
            link = build / "etc/systemd/system" / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
    # the host's resolver must never be used from inside the lab
    (build / "etc/resolv.conf").write_text("nameserver 127.0.0.1\n")
    (build / "etc/apt/sources.list").write_text(
        f"deb {spec.mirror} {spec.release} main\n"
        f"deb {spec.mirror} {spec.release}-updates main\n"
        f"deb {spec.mirror}-security {spec.release}-security main\n")
    for key in (build / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (build / "etc/ssh/sshd_config.d/mailops-lab.conf").write_text(
        "# managed by mailops lab\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nHostKey /etc/ssh/ssh_host_ed25519_key\n")
    local.run(["chroot", str(build), "apt-get", "clean"])
    tmp = spec.image.with_suffix(".tmp")
    local.run(["tar", "--zstd", "-cpf", str(tmp), "--numeric-owner", "-C", str(build), "."],
              timeout=1800)
    tmp.rename(spec.image)
    local.run(["rm", "-rf", "--one-file-system", str(build)])


def ensure_secrets(spec: LabSpec) -> None:
    """Random lab passwords for every key the parameters read from
    ``<state_dir>/secrets.yaml`` (mode 0600); existing ones are kept."""

    import yaml

    path = spec.state_dir / "secrets.yaml"
    data = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    missing = [k for k in spec.secret_keys if k not in data]
    if not missing and path.exists():
        return
    data.update({k: _new_secret(k) for k in missing})
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    tmp.write_text(yaml.safe_dump(data))
    tmp.replace(path)


def _new_secret(key: str) -> str:
    """A random password; for a key named *_ssh_key, an ed25519 private key."""
    import secrets as pysecrets
    if key.endswith("_tsig"):      # a TSIG key's secret: 256 random bits, base64
        import base64
        return base64.b64encode(pysecrets.token_bytes(32)).decode()
    if key.endswith("_imap"):      # characters a config file or a protocol must quote
        return pysecrets.token_urlsafe(12) + ' %u "\\ $x'
    if not key.endswith("_ssh_key"):
        return pysecrets.token_urlsafe(18)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()


def ssh_public_key(private_openssh: str, comment: str = "") -> str:
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_ssh_private_key(private_openssh.encode(), password=None)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH).decode()
    return f"{pub} {comment}".strip()


# -- the backup host: a second lab host serving a borg repository over SSH ------

def _peer_spec(params, field: str, **spec) -> LabSpec | None:
    """Another lab host named in ``lab.<field>``: the lab's spec with its name and address
    (sshd as first process), and ``spec``'s other changes."""
    peer = getattr(params.lab, field) if params.lab else None
    if peer is None:
        return None
    return dataclasses.replace(LabSpec.from_params(params), name=peer.name,
                               address=peer.address, init="sshd", **spec)


def backup_spec(params) -> LabSpec | None:
    return _peer_spec(params, "backup_host", secret_keys=())   # the same host for every lab


# borg in the backup host, and an account that can only run `borg serve` in its repository
# directory, for the mail server's backup key ($1)
PREPARE_BACKUP_HOST = r"""set -e
if ! command -v borg >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends borgbackup openssh-client >/dev/null
fi
id borg >/dev/null 2>&1 || useradd --system --home-dir /srv/borg --create-home --shell /bin/sh borg
install -d -m 0700 -o borg -g borg /srv/borg/.ssh
printf 'restrict,command="borg serve --restrict-to-path /srv/borg" %s
' "$1" >/srv/borg/.ssh/authorized_keys
chown borg:borg /srv/borg/.ssh/authorized_keys
chmod 0600 /srv/borg/.ssh/authorized_keys
"""


def prepare_backup_host(params, log=print) -> LabStatus | None:
    """Bring up the backup lab host and let the mail server's backup key in."""
    spec = backup_spec(params)
    if spec is None:
        return None
    st = up(spec, log=log)
    from .host import SSHHost
    from .secrets import resolve
    pub = ssh_public_key(resolve(params.backup.ssh_key, params.base_dir).reveal(),
                         f"mailops-backup@{params.hostname}")
    with SSHHost(spec.url, key_file=spec.key_file, known_hosts=spec.known_hosts) as h:
        h.run(["sh", "-c", PREPARE_BACKUP_HOST, "prepare_backup_host", pub], timeout=600)
    log(f"lab {spec.name}: borg repository host for {params.hostname} ready")
    return st


# -- the old IMAP server: plain Debian dovecot with maildir, a migration's source ---------

OLD_IMAP_NAME = "imap.old.test"      # the lab resolver answers it (resolver.extra_records)
OLD_IMAP_SECRET = "old_imap"          # its mailboxes' password, a key of <state_dir>/secrets.yaml
OLD_IMAP_MAILBOXES = {"old@old.test": 300}   # login -> messages seeded


def old_imap_spec(params) -> LabSpec | None:
    # an old server: always Debian 12's dovecot 2.3, whatever the mail server runs
    return _peer_spec(params, "old_imap_host", release="bookworm",
                      secret_keys=(OLD_IMAP_SECRET,))


# Debian's dovecot as a small provider would run it: maildir under one system user,
# users in a passwd-file, IMAPS only, the lab CA's certificate; Debian's own config
# stays, PAM users are switched off.  $1: the vmail uid.
INSTALL_OLD_IMAP = r"""set -e
if ! command -v dovecot >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends dovecot-imapd >/dev/null
fi
id vmail >/dev/null 2>&1 || useradd --uid "$1" --user-group --home-dir /srv/mail --create-home \
  --shell /usr/sbin/nologin vmail
sed -i 's/^!include auth-system.conf.ext/#&/' /etc/dovecot/conf.d/10-auth.conf
"""
START_OLD_IMAP = "doveconf -n >/dev/null && if pidof dovecot >/dev/null; then doveadm reload; " \
                 "else dovecot </dev/null >/dev/null 2>&1; fi"
OLD_IMAP_CONF = """# managed by mailops lab: the old IMAP server a migration is tried against
protocols = imap
listen = *
mail_location = maildir:~/Maildir
first_valid_uid = {uid}
ssl = required
ssl_cert = </etc/dovecot/private/old.crt
ssl_key = </etc/dovecot/private/old.key
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain
log_path = /var/log/dovecot.log
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT /etc/dovecot/old-users
}}
userdb {{
  driver = static
  args = uid=vmail gid=vmail home=/srv/mail/%d/%n
}}
"""
OLD_IMAP_UID = 5000


def prepare_old_imap_host(params, mailboxes: dict[str, int] | None = None, fresh=(),
                          log=print) -> LabStatus | None:
    """Bring up the old IMAP server and seed its mailboxes (``login -> messages``;
    a mailbox already seeded with that many is left alone, unless its login is in
    ``fresh``)."""
    spec = old_imap_spec(params)
    if spec is None:
        return None
    st = up(spec, log=log)
    import yaml
    from passlib.hash import sha512_crypt
    from . import pki
    from .host import SSHHost
    password = yaml.safe_load((spec.state_dir / "secrets.yaml").read_text())[OLD_IMAP_SECRET]
    issued = pki.ensure_issued(params.path(params.tls.ca_dir), OLD_IMAP_NAME, [spec.address])
    mailboxes = {**OLD_IMAP_MAILBOXES, **(mailboxes or {})}
    with SSHHost(spec.url, key_file=spec.key_file, known_hosts=spec.known_hosts) as h:
        h.run(["sh", "-c", INSTALL_OLD_IMAP, "install_old_imap", str(OLD_IMAP_UID)], timeout=600)
        h.write_file("/etc/dovecot/private/old.crt", issued.ec_cert + issued.ca_cert)
        h.write_file("/etc/dovecot/private/old.key", issued.ec_key, mode="0600")
        h.write_file("/etc/dovecot/conf.d/99-mailops-old.conf",
                     OLD_IMAP_CONF.format(uid=OLD_IMAP_UID).encode())
        users = "".join(f"{login}:{{SHA512-CRYPT}}{sha512_crypt.using(rounds=5000).hash(password)}\n"
                        for login in sorted(mailboxes))
        h.write_file("/etc/dovecot/old-users", users.encode(), mode="0640", group="dovecot")
        h.run(["sh", "-c", START_OLD_IMAP])
        for login, n in mailboxes.items():
            _seed_old_mailbox(h, login, n, log, login in fresh)
    log(f"lab {spec.name}: old IMAP server {OLD_IMAP_NAME} ready "
        f"({', '.join(f'{k}: {v} messages' for k, v in mailboxes.items())})")
    return st


def _seed_old_mailbox(h, login: str, n: int, log, fresh: bool = False) -> None:
    """Write the corpus straight into the maildir (as an old server would hold it:
    nested folders under maildir++'s '.' separator, a non-ASCII one in modified
    UTF-7, flags in the file names), one tar over stdin."""
    import io
    import tarfile
    from .labmode import old_server_messages
    from .remote.migrate import mutf7_encode
    local, domain = login.split("@")
    home = f"/srv/mail/{domain}/{local}"
    marker = f"{home}/.mailops-seed"
    if not fresh and h.run(["cat", marker], check=False).out.strip() == str(n):
        return
    buf = io.BytesIO()
    letters = {r"\Draft": "D", r"\Flagged": "F", r"\Answered": "R", r"\Seen": "S"}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, data: bytes | None) -> None:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = OLD_IMAP_UID
            info.mtime = 1_760_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
        folders = set()
        for i, (folder, flags, raw) in enumerate(old_server_messages(login, n)):
            d = "Maildir" if folder == "INBOX" else \
                "Maildir/." + ".".join(mutf7_encode(part) for part in folder.split("/"))
            if d not in folders:
                folders.add(d)
                for sub in ("", "/cur", "/new", "/tmp"):
                    add(d + sub, None)
                if d != "Maildir":
                    add(d + "/maildirfolder", b"")
            info = "".join(sorted(letters[f] for f in flags.split() if f in letters))
            add(f"{d}/cur/{1_760_000_000 + i}.M{i}P1.{OLD_IMAP_NAME},S={len(raw)}:2,{info}", raw)
    log(f"seeding {n} messages into {login} on the old IMAP server")
    h.run(["sh", "-c", 'set -e; rm -rf "$1"; install -d -o vmail -g vmail -m 0700 "$1"; '
           'tar -xzf - --same-owner -C "$1"; chown -R vmail:vmail "$1"; '
           'printf %s "$2" > "$1/.mailops-seed"', "seed", home, str(n)],
          stdin=buf.getvalue(), timeout=600)


# -- the DNS host: Knot, authoritative for the lab zones, updated over RFC 2136 ----------

def dns_spec(params) -> LabSpec | None:
    # one DNS host for every lab: always Debian 12's knot, whatever the mail server runs
    return _peer_spec(params, "dns_host", release="bookworm", secret_keys=())


# knot from Debian; its zones' files owned by knot (it writes updates back at once)
INSTALL_KNOT = r"""set -e
if ! command -v knotd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends knot >/dev/null
fi
install -d -o knot -g knot -m 0750 /var/lib/knot /var/lib/knot/zones
install -d -o knot -g knot -m 0755 /run/knot
"""
# conf-check, then start knotd or reload it (no systemd in the lab host)
START_KNOT = ("knotc -c /etc/knot/knot.conf conf-check >/dev/null && "
              "if knotc -c /etc/knot/knot.conf status >/dev/null 2>&1; "
              "then knotc -c /etc/knot/knot.conf reload >/dev/null; "
              "else knotd -d -c /etc/knot/knot.conf; fi")
KNOT_CONF = """# managed by mailops lab: the lab zones' authoritative server
server:
    rundir: "/run/knot"
    user: knot:knot
    listen: [ 0.0.0.0@53 ]
    identity: ""
    version: ""
log:
  - target: /var/log/knot.log
    any: info
database:
    storage: "/var/lib/knot"
key:
  - id: {key_name}
    algorithm: {algorithm}
    secret: {secret}
acl:
  - id: mailops_update
    key: {key_name}
    action: update
policy:
  - id: lab
    algorithm: ecdsap256sha256
    nsec3: off
template:
  - id: default
    storage: "/var/lib/knot/zones"
    file: "%s.zone"
    zonefile-sync: 0
    serial-policy: unixtime
    semantic-checks: on
    acl: mailops_update
zone:
{zones}"""
# the forward zones are DNSSEC-signed (Knot keeps their keys in /var/lib/knot/keys and
# signs every update); their KSKs' DS records are the mail servers' trust anchors
ANCHORS_FILE = "dnssec-anchors.conf"
ANCHORS = r"""for z; do
  for i in $(seq 100); do
    ds=$(runuser -u knot -- keymgr "$z" ds 2>/dev/null | head -n 1)
    [ -n "$ds" ] && break; sleep 0.1
  done
  [ -n "$ds" ] || { echo "no DS for $z: is it signed?" >&2; exit 1; }
  echo "$ds"
done
"""
# a new zone's file: SOA (negative answers cached 5 s: a record just published is seen
# at once) and NS; everything else comes by RFC 2136, as to a provider's API
ZONE_FILE = """$ORIGIN {zone}.
$TTL 60
@ IN SOA {ns}. hostmaster.{ns_domain}. 1 60 60 600 5
@ IN NS {ns}.
"""
ZONES_LIST = "/etc/knot/mailops-zones"


def prepare_dns_host(params, log=print) -> LabStatus | None:
    """Bring up the DNS host, serve every lab zone these parameters need (zones other
    parameters added stay), and publish the lab's own records (the gateway, the DNS
    host, ``resolver.extra_records``) there over RFC 2136."""
    spec = dns_spec(params)
    if spec is None:
        return None
    if params.dns.update is None or params.dns.update.server != spec.address:
        raise LabError(f"lab.dns_host {spec.name} needs dns.update.server: {spec.address} "
                       "(the records are published there)")
    st = up(spec, log=log)
    ensure_secrets(LabSpec.from_params(params))      # the TSIG key, before the mail server
    from . import labmode
    from .dnsrecords import DnsRecord, Publisher
    from .host import SSHHost
    from .secrets import resolve
    u = params.dns.update
    secret = resolve(u.key_secret, params.base_dir)
    ns = labmode.dns_host_name(params)
    with SSHHost(spec.url, key_file=spec.key_file, known_hosts=spec.known_hosts) as h:
        h.run(["sh", "-c", INSTALL_KNOT], timeout=600)
        have = h.run(["cat", ZONES_LIST], check=False).out.split()
        zones = sorted(dict.fromkeys([*have, *labmode.dns_host_zones(params)]))
        for z in zones:
            if not h.run(["test", "-s", f"/var/lib/knot/zones/{z}.zone"], check=False).ok:
                h.write_file(f"/var/lib/knot/zones/{z}.zone",
                             ZONE_FILE.format(zone=z, ns=ns, ns_domain=ns.split(".", 1)[1]).encode(),
                             mode="0640", owner="knot", group="knot")
        h.write_file(ZONES_LIST, "".join(f"{z}\n" for z in zones).encode())
        h.write_file("/etc/knot/knot.conf", KNOT_CONF.format(
            key_name=u.key_name, algorithm=u.algorithm, secret=secret.reveal(),
            zones="".join(f"  - domain: {z}\n" + ("" if z.endswith(".arpa") else
                                                    "    dnssec-signing: on\n    dnssec-policy: lab\n")
                          for z in zones)).encode(),
            mode="0640", group="knot")
        h.run(["sh", "-c", START_KNOT])
        signed = [z for z in zones if not z.endswith(".arpa")]
        ds = h.run(["sh", "-c", ANCHORS, "anchors", *signed], timeout=60).out.split("\n")
    pub = Publisher(u, params.base_dir)
    pub.wait_ready(zones[0])
    records = [DnsRecord.from_zone_line(line) for line in labmode.infrastructure_records(params)]
    pub.replace(records)
    write_anchors(LabSpec.from_params(params).state_dir / ANCHORS_FILE, ds)
    log(f"lab {spec.name}: DNS host {ns} serving {', '.join(zones)} (signed: "
        f"{', '.join(signed)})")
    return st


def anchors_conf(ds_lines) -> str:
    """unbound's trust anchors for the signed lab zones, from Knot's DS records (pure)."""
    lines = [" ".join(line.split()) for line in ds_lines if " DS " in f" {line} "]
    return ("# managed by mailops lab: the lab zones' DNSSEC trust anchors (the DS of each\n"
            "# zone's KSK on the lab's DNS host); unbound validates those zones with them\n"
            "server:\n" + "".join(f'    trust-anchor: "{line}"\n' for line in lines))


def write_anchors(path: Path, ds_lines) -> None:
    text = anchors_conf(ds_lines)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# -- the lab's ACME CA: Debian's pebble on the DNS host -----------------------------------

PEBBLE_CONF = """{{
  "pebble": {{
    "listenAddress": "0.0.0.0:14000",
    "managementListenAddress": "0.0.0.0:15000",
    "certificate": "/etc/pebble/api.crt",
    "privateKey": "/etc/pebble/api.key",
    "httpPort": 80,
    "tlsPort": 443,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false
  }}
}}
"""
# pebble keeps everything in memory: its root is new at every start, so it is started
# only when it is not running (certificates issued before a restart are issued again:
# 20-tls sees that their chain no longer verifies)
START_PEBBLE = r"""set -e
if ! command -v pebble >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends pebble >/dev/null
fi
if ! pgrep -x pebble >/dev/null; then
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 setsid pebble -config /etc/pebble/pebble.json \
    -dnsserver 127.0.0.1:53 </dev/null >>/var/log/pebble.log 2>&1 &
fi
for i in $(seq 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/15000) 2>/dev/null; then exit 0; fi
  sleep 0.1
done
echo "pebble did not listen on 15000: $(tail -5 /var/log/pebble.log)" >&2
exit 1
"""


def prepare_acme_ca(params, log=print) -> Path | None:
    """pebble on the DNS host, its API's certificate from a CA of its own; writes
    ``tls.acme.ca_file`` (pebble's current root and its API's CA) for the mail server and
    verify to trust.  Not the lab CA: a mail server trusts what its ACME client needs
    and no more (the old IMAP server's lab CA certificate stays untrusted there, as a
    stranger's would be).  Nothing when the parameters do not use ACME."""
    if params.tls.source != "acme" or params.tls.acme.ca_file is None:
        return None
    spec = dns_spec(params)
    if spec is None:
        raise LabError("tls.source acme in the lab needs lab.dns_host (pebble runs there)")
    from . import pki
    from .host import SSHHost
    from .labmode import acme_name
    api_ca = params.path(params.tls.acme.ca_file).parent / "acme-api-ca"
    issued = pki.ensure_issued(api_ca, acme_name(params), [spec.address],
                               ca_name="mailops lab ACME API CA")
    with SSHHost(spec.url, key_file=spec.key_file, known_hosts=spec.known_hosts) as h:
        h.run(["install", "-d", "-m", "0755", "/etc/pebble"])
        api_crt = issued.rsa_cert + issued.ca_cert
        if h.run(["cat", "/etc/pebble/api.crt"], check=False).stdout != api_crt:
            h.run(["sh", "-c", "pkill -x pebble; for i in $(seq 100); do "          # it serves
                   "pgrep -x pebble >/dev/null || exit 0; sleep 0.1; done"], check=False)  # the new one
        h.write_file("/etc/pebble/api.crt", api_crt)
        h.write_file("/etc/pebble/api.key", issued.rsa_key, mode="0600")
        h.write_file("/etc/pebble/pebble.json", PEBBLE_CONF.format().encode())
        h.run(["bash", "-c", START_PEBBLE], timeout=600)
    root = _https_get(str(spec.address), 15000, acme_name(params), "/roots/0",
                      issued.ca_cert)
    out = params.path(params.tls.acme.ca_file)
    bundle = issued.ca_cert + root
    if not out.exists() or out.read_bytes() != bundle:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(bundle)
    log(f"lab {spec.name}: ACME CA (pebble) at https://{acme_name(params)}:14000/dir; "
        f"its root and its API's CA in {out}")
    return out


def _https_get(address: str, port: int, name: str, path: str, ca_pem: bytes) -> bytes:
    """GET over TLS verified against ``ca_pem`` for ``name`` (the controller does not
    resolve lab names: it connects to the address)."""
    import http.client
    import ssl
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    conn = http.client.HTTPSConnection(address, port, context=ctx, timeout=10)
    conn.sock = ctx.wrap_socket(socket.create_connection((address, port), 10),
                                server_hostname=name)
    conn.request("GET", path, headers={"Host": f"{name}:{port}"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    if r.status != 200:
        raise LabError(f"https://{name}:{port}{path}: HTTP {r.status}")
    return body


def _ensure_keys(spec: LabSpec, local: LocalHost) -> None:
    if not spec.key_file.exists():
        local.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mailops-{spec.name}",
                   "-f", str(spec.key_file)])
    hostkey = spec.rootfs / "etc/ssh/ssh_host_ed25519_key"
    if not hostkey.exists():
        local.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", spec.name,
                   "-f", str(hostkey)])
    ssh_dir = spec.rootfs / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(Path(f"{spec.key_file}.pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    kind, key = Path(f"{hostkey}.pub").read_text().split()[:2]
    spec.known_hosts.write_text(f"{spec.address} {kind} {key}\n")
    (spec.rootfs / "etc/apt/apt.conf.d/01mailops-lab-proxy").write_text(
        f'Acquire::http::Proxy "http://{spec.gateway}:{PROXY_PORT}";\n')


# The namespace's first process: mounts, hostname, then sshd as PID 1.
NS_INIT = r"""set -e
R=$1
mount -t proc proc "$R/proc"
mount -t sysfs -o ro sysfs "$R/sys"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
mount --bind "$R/dev/pts/ptmx" "$R/dev/ptmx"
mkdir -p "$R/run/sshd" "$R/run/lock"
hostname "$2"
exec chroot "$R" /usr/sbin/sshd -D -e
"""


# systemd as the namespace's first process: it must own the root (pivot_root; under
# chroot it exits 255), with proc, sys and /dev's pseudo file systems ready
NS_INIT_SYSTEMD = r"""set -e
R=$1
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
mount --bind "$R/dev/pts/ptmx" "$R/dev/ptmx"
hostname "$2"
cd "$R"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot 2>/dev/null || true
exec env -i container=mailops-lab /lib/systemd/systemd --log-target=console
"""


def _start(spec: LabSpec, local: LocalHost) -> None:
    ns = spec.netns
    local.run(["ip", "netns", "add", ns])
    local.run(["ip", "link", "add", spec.veth, "type", "veth", "peer", "name", "eth0",
               "netns", ns])
    local.run(["ip", "link", "set", spec.veth, "master", spec.bridge, "up"])
    local.run(["ip", "-n", ns, "addr", "add", f"{spec.address}/{spec.network.prefixlen}",
               "dev", "eth0"])
    local.run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    local.run(["ip", "-n", ns, "link", "set", "lo", "up"])
    routes = local.run(["ip", "-n", ns, "route", "show", "default"]).out.strip()
    if routes:
        raise LabError(f"lab {spec.name} has a default route ({routes}); refusing to start")
    pid = local.spawn(["ip", "netns", "exec", ns, "unshare", "--uts", "--pid", "--mount",
                       "--fork", "--kill-child", "--propagation", "private",
                       "sh", "-c", NS_INIT if spec.init == "sshd" else NS_INIT_SYSTEMD,
                       "lab-init", str(spec.rootfs), spec.name],
                      spec.log_file)
    spec.state_file.write_text(json.dumps({"ns": _record(pid), "release": spec.release,
                                           "address": str(spec.address)}))
    for _ in range(200 if spec.init == "sshd" else 1200):
        if _banner(str(spec.address), timeout=0.5):
            return
        if _start_time(pid) is None:
            break
        time.sleep(0.05)
    tail = spec.log_file.read_text()[-800:] if spec.log_file.exists() else ""
    raise LabError(f"sshd in lab {spec.name} did not answer: {tail}")


def ssh_argv(spec: LabSpec, *command: str) -> list[str]:
    return ["ssh", "-i", str(spec.key_file), "-o", f"UserKnownHostsFile={spec.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
            f"root@{spec.address}", *command]


__all__ = ["LabError", "LabSpec", "LabStatus", "CommandError", "down", "ssh_argv",
           "status", "up"]
