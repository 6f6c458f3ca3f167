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

from mailops.core.host import CommandError, LocalHost

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


def peer_spec(params, field: str, **spec) -> LabSpec | None:
    """Another lab host named in ``lab.<field>``: the lab's spec with its name and address
    (sshd as first process), and ``spec``'s other changes."""
    peer = getattr(params.lab, field) if params.lab else None
    if peer is None:
        return None
    return dataclasses.replace(LabSpec.from_params(params), name=peer.name,
                               address=peer.address, init="sshd", **spec)


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


# The namespace's first process: mounts, hostname, then sshd under a shell loop.
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
# sshd supervised, not exec'd: killing its listener (an upgrade of openssh must restart
# it: 9.2's listener cannot start 10's sshd-session) starts the new binary, and the
# sessions under way go on; a listener started by an init script is left alone
while :; do
  chroot "$R" sh -c 'kill -0 "$(cat /run/sshd.pid 2>/dev/null)" 2>/dev/null' ||
    chroot "$R" /usr/sbin/sshd -D -e || true
  sleep 1
done
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
