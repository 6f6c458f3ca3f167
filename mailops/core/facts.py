"""Host facts: what the target is (OS, init system, resources, package versions).

Read in one round trip; every parser is pure and tested on fixtures.
"""
from __future__ import annotations

import dataclasses
import shlex

from mailops.core.resources.system import DPKG_QUERY, parse_dpkg

# The packages whose versions the connect step shows.
STACK = ("postfix", "dovecot-core", "rspamd", "redis-server", "unbound", "fail2ban",
         "borgbackup", "borgmatic", "nftables", "openssh-server")
SUPPORTED = {("debian", "12"), ("debian", "13"), ("ubuntu", "24.04")}

INFO_COMMANDS = [
    ["cat", "/etc/os-release"],
    ["sh", "-c", "if [ -d /run/systemd/system ]; then echo systemd; else echo sysv; fi",
     "init_system"],
    ["uname", "-r"],
    ["df", "-Pk", "/"],
    ["cat", "/proc/meminfo"],
    DPKG_QUERY,
    ["hostname"],
]


class UnsupportedHost(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class HostInfo:
    os_id: str
    os_version: str
    codename: str
    pretty_name: str
    init: str
    kernel: str
    hostname: str
    disk_total: int
    disk_free: int
    mem_total: int
    mem_available: int
    packages: dict[str, str] = dataclasses.field(repr=False)

    @property
    def supported(self) -> bool:
        return (self.os_id, self.os_version) in SUPPORTED

    def require_supported(self) -> None:
        if not self.supported:
            raise UnsupportedHost(f"{self.pretty_name} is not supported: Debian 12, Debian 13 "
                                  "and Ubuntu 24.04 are")

    def stack_versions(self) -> dict[str, str | None]:
        return {p: self.packages.get(p) for p in STACK}

    def table(self) -> list[tuple[str, str]]:
        gib = 1024 ** 3
        rows = [("os", f"{self.pretty_name}" + ("" if self.supported else " (UNSUPPORTED)")),
                ("init", self.init), ("kernel", self.kernel), ("hostname", self.hostname),
                ("disk /", f"{self.disk_free / gib:.1f} GiB free of {self.disk_total / gib:.1f}"),
                ("memory", f"{self.mem_available / gib:.1f} GiB available of "
                           f"{self.mem_total / gib:.1f}")]
        rows += [(p, v or "not installed") for p, v in self.stack_versions().items()]
        return rows

    def _repr_html_(self) -> str:
        from .tables import html_table
        return html_table([{"fact": k, "value": v} for k, v in self.table()],
                          title=f"host {self.hostname}")

    def __str__(self) -> str:
        return "\n".join(f"{k:16} {v}" for k, v in self.table())


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            parts = shlex.split(value) if value else [""]
            out[key.strip()] = parts[0] if parts else ""
    return out


def parse_df(text: str) -> tuple[int, int]:
    """``df -Pk /`` -> (total bytes, free bytes)."""
    fields = text.strip().splitlines()[-1].split()
    return int(fields[1]) * 1024, int(fields[3]) * 1024


def parse_meminfo(text: str) -> tuple[int, int]:
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.strip():
            values[key] = int(rest.split()[0]) * 1024
    return values["MemTotal"], values.get("MemAvailable", values.get("MemFree", 0))


def parse_host_info(outputs: list[str]) -> HostInfo:
    osr, init, kernel, df, meminfo, dpkg, hostname = outputs
    rel = parse_os_release(osr)
    disk_total, disk_free = parse_df(df)
    mem_total, mem_avail = parse_meminfo(meminfo)
    return HostInfo(rel.get("ID", "unknown"), rel.get("VERSION_ID", ""),
                    rel.get("VERSION_CODENAME", ""), rel.get("PRETTY_NAME", "unknown"),
                    init.strip(), kernel.strip(), hostname.strip(), disk_total, disk_free,
                    mem_total, mem_avail, parse_dpkg(dpkg))


def read_host_info(host) -> HostInfo:
    results = host.run_many(INFO_COMMANDS)
    failed = [r for r in results[:5] if not r.ok]
    if failed:
        r = failed[0]
        raise UnsupportedHost(f"{host.url}: reading host facts failed at `{' '.join(r.argv)}`: "
                              f"{r.err.strip()[-300:]}")
    return parse_host_info([r.out for r in results])


def series(info, package: str, by_release: dict[tuple[str, str], str], default: str) -> str:
    """'MAJOR.MINOR' of the installed ``package``, else what the host's release ships."""
    import re
    installed = info.packages.get(package)
    if installed:
        m = re.match(r"^(?:\d+:)?(\d+\.\d+)", installed)
        if m:
            return m.group(1)
    return by_release.get((info.os_id, info.os_version), default)


# the distribution's packages, when they are not installed yet
RELEASE_DOVECOT = {("debian", "12"): "2.3", ("ubuntu", "24.04"): "2.3", ("debian", "13"): "2.4"}
RELEASE_BORGMATIC = {("debian", "12"): "1.7", ("ubuntu", "24.04"): "1.8", ("debian", "13"): "1.9"}


def dovecot_series(info) -> str:
    """'2.3' or '2.4': the installed dovecot's, else the release's."""
    return series(info, "dovecot-core", RELEASE_DOVECOT, "2.3")


def borgmatic_series(info) -> str:
    """'1.7' (sectioned config) or a later one (flat config)."""
    return series(info, "borgmatic", RELEASE_BORGMATIC, "1.7")
