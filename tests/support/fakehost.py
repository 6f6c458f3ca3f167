"""A fake host for unit tests: a small Debian machine kept in memory.

It understands exactly the commands mailops sends (the helper scripts by their
``$0`` name, and a handful of plain commands) and raises
:class:`UnexpectedCommand` for anything else, so a test fails when code sends
something nobody emulated.  It counts round trips and records every command.
Config checks are Python functions over the fake file system.
"""
from __future__ import annotations

import base64
import hashlib
import dataclasses
import time
from typing import Callable

from .fakestack import (FakeFile, PACKAGE_DIRS, PACKAGE_SERVICES, PACKAGE_USERS, PACKAGE_VERSIONS,
    StackCommands)
from mailops.core.host import CommandError, Host, Result
from mailops.core.resources.services import PENDING_DIR
from mailops.core.resources.system import DPKG_QUERY

READ_ONLY = {"stat_paths", "service_status", "batch", "hostname_is", "cat", "getent",
             "dpkg-query", "uname", "df", "init_system", "nft-list", "check", "userdb_dump",
             "sieve_fresh", "borg_repo_state", "borg_repo_id", "marker", "simulate", "acme_state", "ca_trusted", "tlsa_spki"}


class UnexpectedCommand(AssertionError):
    pass


class FakeHost(StackCommands, Host):
    def __init__(self, url: str = "fake://mx1"):
        self.url = url
        self.files: dict[str, FakeFile] = {
            "/etc/os-release": FakeFile(b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
                                        b'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'),
            "/proc/meminfo": FakeFile(b"MemTotal: 2048000 kB\nMemAvailable: 1024000 kB\n"),
        }
        self.dirs: dict[str, FakeFile] = {d: FakeFile(b"", 0o755) for d in
                                         ("/", "/etc", "/etc/unbound", "/etc/default", "/var",
                                          "/var/lib", "/var/log", "/var/backups", "/var/mail",
                                          "/var/spool", "/usr", "/usr/local", "/usr/local/lib",
                                          "/usr/local/sbin", "/etc/cron.d", "/etc/apt",
                                          "/etc/apt/apt.conf.d", "/etc/ssh",
                                          "/etc/ssh/sshd_config.d")}
        self.links: dict[str, str] = {}
        self.packages: dict[str, str] = {"openssh-server": "1:9.2p1-2"}
        self.users: dict[str, tuple[str, str, str]] = {"root": ("root", "/root", "/bin/bash")}
        self.groups: set[str] = {"root"}
        # name: {active, enabled}; sshd runs (mailops came in through it)
        self.services: dict[str, dict[str, bool]] = {"ssh": {"active": True, "enabled": True}}
        self.service_scripts: set[str] = {"ssh"}        # installed init scripts
        self.hostname = "vm"
        self.nft_loaded = False
        # name of a check command -> function(fake) returning an error text or ""
        self.checks: dict[str, Callable[["FakeHost"], str]] = {}
        # package -> init scripts it ships
        self.package_services: dict[str, tuple[str, ...]] = dict(PACKAGE_SERVICES)
        self.checks_run: list[str] = []
        self.fail_writes: set[str] = set()
        self.redis: dict[str, int] = {}                 # rspamd's RS hash: learns_spam, learns_ham
        self.commands: list[tuple[str, ...]] = []
        self.round_trips = 0
        self._init_stack()

    # -- transport ---------------------------------------------------------------
    def _exec(self, argv, stdin, timeout):
        return self._dispatch(argv, stdin)

    def run_many(self, commands, *, timeout=120):
        self.round_trips += 1
        return [self._dispatch(tuple(str(a) for a in c), None) for c in commands]

    def _dispatch(self, argv, stdin) -> Result:
        self.commands.append(argv)
        start = time.monotonic()
        try:
            code, out, err = self._emulate(list(argv), stdin or b"")
        except KeyError as exc:
            code, out, err = 1, b"", f"no such thing: {exc}".encode()
        return Result(self.url, tuple(argv), code, out, err, time.monotonic() - start)

    def command_names(self) -> list[str]:
        return ["nft-list" if c[:2] == ("nft", "list") else _name(c) for c in self.commands]

    def snapshot(self):
        """Everything a command could change, for "nothing changed" assertions."""
        return (
            {p: dataclasses.astuple(f) for p, f in self.files.items()},
            {p: dataclasses.astuple(f) for p, f in self.dirs.items()},
            dict(self.links), dict(self.packages), dict(self.users), set(self.groups),
            {k: dict(v) for k, v in self.services.items()}, self.hostname, self.nft_loaded)

    # -- emulation ---------------------------------------------------------------
    def _emulate(self, a: list[str], stdin: bytes) -> tuple[int, bytes, bytes]:
        name = _name(a).rsplit("/", 1)[-1]
        handler = getattr(self, "_cmd_" + name.replace("-", "_"), None)
        if handler is None:
            raise self._unexpected(a)
        return handler(a, stdin)

    @staticmethod
    def _unexpected(a) -> UnexpectedCommand:
        return UnexpectedCommand(f"fake host got an unexpected command: {a[:6]}")

    def _cmd_stat_paths(self, a, stdin):
        out = []
        for p in a[4:]:
            if p in self.links:
                out.append(f"L {self.links[p]}")
            elif p in self.dirs:
                d = self.dirs[p]
                out.append(f"D {d.mode:o} {d.owner} {d.group}")
            elif p in self.files:
                f = self.files[p]
                out.append(f"F {f.mode:o} {f.owner} {f.group} {len(f.content)}")
                out.append(base64.b64encode(f.content).decode())
            else:
                out.append("N")
        return 0, ("\n".join(out) + "\n").encode(), b""

    def _cmd_write_file(self, a, stdin):
        path, mode, owner, group = a[4:8]
        parent = path.rsplit("/", 1)[0] or "/"
        if path in self.fail_writes:
            return 1, b"", b"cat: write error: No space left on device\n"
        if parent not in self.dirs:
            return 1, b"", f"mktemp: failed to create file via template '{parent}/.mailops.XXXXXX'".encode()
        self.links.pop(path, None)
        self.files[path] = FakeFile(stdin, int(mode, 8), owner, group)
        return 0, b"", b""

    def _cmd_cat(self, a, stdin):
        p = a[-1]
        if p not in self.files:
            return 1, b"", f"cat: {p}: No such file or directory\n".encode()
        return 0, self.files[p].content, b""

    def _cmd_rm(self, a, stdin):
        for p in a[a.index("--") + 1:] if "--" in a else a[-1:]:
            self.files.pop(p, None)
        return 0, b"", b""

    # sieve: a binary "compiled" from a source holds the source's hash
    @staticmethod
    def _svbin(source: bytes) -> bytes:
        return b"svbin " + hashlib.sha256(source).hexdigest().encode()

    def _cmd_sieve_fresh(self, a, stdin):
        out = []
        for p in a[4:]:
            b = self.files.get(p[:-len(".sieve")] + ".svbin")
            src = self.files.get(p)
            out.append("fresh" if b and src and b.content == self._svbin(src.content) else "stale")
        return 0, ("\n".join(out) + "\n").encode(), b""

    def _cmd_sieve_install(self, a, stdin):
        path, mode, owner, group = a[4:8]
        if path.rsplit("/", 1)[0] not in self.dirs:
            return 1, b"", b"mktemp: failed to create directory\n"
        problem = self.checks["sievec"](self) if "sievec" in self.checks else ""
        if problem:
            return 1, b"", f"{problem}\nsievec refused {path}; the installed script is unchanged\n".encode()
        self.files[path[:-len(".sieve")] + ".svbin"] = FakeFile(self._svbin(stdin), int(mode, 8),
                                                                 owner, group)
        self.files[path] = FakeFile(stdin, int(mode, 8), owner, group)
        return 0, b"", b""

    def _cmd_validated_write(self, a, stdin):
        path, mode, owner, group = a[4:8]
        validator = a[9]
        problem = self.checks[validator](self) if validator in self.checks else ""
        if problem:
            return 1, b"", f"{problem}\n{validator} refused the new {path}\n".encode()
        return self._cmd_write_file(a[:8], stdin)

    def _cmd_tail(self, a, stdin):
        n, path = int(a[2]), a[3]
        if path not in self.files:
            return 1, b"", f"tail: cannot open '{path}'\n".encode()
        lines = self.files[path].content.splitlines(keepends=True)
        return 0, b"".join(lines[-n:]), b""

    def _cmd_redis_cli(self, a, stdin):
        if "redis-server" not in self.packages:
            return 127, b"", b"sh: 1: redis-cli: not found\n"
        if a[2:4] != ["HMGET", "RS"]:
            raise UnexpectedCommand(f"redis-cli {a[1:]}")
        return 0, "".join(f"{self.redis.get(k, '')}\n" for k in a[4:]).encode(), b""

    def _cmd_dpkg_query(self, a, stdin):
        if a != DPKG_QUERY:
            raise UnexpectedCommand(f"dpkg-query {a[1:]}")
        return 0, "".join(f"{n}\tii \t{v}\n" for n, v in self.packages.items()).encode(), b""

    def _cmd_apt_install(self, a, stdin):
        for pkg in a[4:]:
            self.packages[pkg] = PACKAGE_VERSIONS.get(pkg, "1.0-fake")
            for d in PACKAGE_DIRS.get(pkg, ()):
                self.dirs.setdefault(d, FakeFile(b"", 0o755))
            for user, group in [PACKAGE_USERS[pkg]] if pkg in PACKAGE_USERS else []:
                self.groups.add(group)
                self.users.setdefault(user, (group, "/nonexistent", "/usr/sbin/nologin"))
            for svc in self.package_services.get(pkg, ()):
                self.service_scripts.add(svc)
                self.services.setdefault(svc, {"active": False, "enabled": True})
        return 0, b"", b""

    def _cmd_getent(self, a, stdin):
        if a[1] == "passwd":
            gids = {g: i for i, g in enumerate(sorted(self.groups))}
            lines = [f"{u}:x:{1000 + i}:{gids.get(g, 65534)}::{h}:{s}"
                     for i, (u, (g, h, s)) in enumerate(self.users.items())]
        else:
            lines = [f"{g}:x:{i}:" for i, g in enumerate(sorted(self.groups))]
        return 0, ("\n".join(lines) + "\n").encode(), b""

    def _cmd_groupadd(self, a, stdin):
        self.groups.add(a[-1])
        return 0, b"", b""

    def _cmd_useradd(self, a, stdin):
        opts = {a[i]: a[i + 1] for i in range(1, len(a) - 1) if a[i] in ("-g", "-d", "-s")}
        self.users[a[-1]] = (opts["-g"], opts["-d"], opts["-s"])
        return 0, b"", b""

    def _cmd_install(self, a, stdin):
        mode, owner, group, path = a[3], a[5], a[7], a[8]
        self.dirs[path] = FakeFile(b"", int(mode, 8), owner, group)
        return 0, b"", b""

    def _cmd_chmod(self, a, stdin):
        target = self.dirs.get(a[2]) or self.files[a[2]]
        target.mode = int(a[1], 8)
        return 0, b"", b""

    def _cmd_ln(self, a, stdin):
        self.links[a[3]] = a[2]
        return 0, b"", b""

    def _cmd_mv(self, a, stdin):
        self.links[a[3]] = self.links.pop(a[2])
        self.files.pop(a[3], None)
        return 0, b"", b""

    def _cmd_service_status(self, a, stdin):
        lines = ["init sysv"]
        for s in a[4:]:
            if s in self.service_scripts:
                st = self.services[s]
                lines.append(f"{s} {'active' if st['active'] else 'inactive'} "
                             f"{'enabled' if st['enabled'] else 'disabled'}")
            else:
                lines.append(f"{s} missing missing")
        lines += [f"pending {p.rsplit('/', 1)[1]}" for p in sorted(self.files)
                  if p.startswith(PENDING_DIR + "/")]
        return 0, ("\n".join(lines) + "\n").encode(), b""

    def _cmd_pending_mark(self, a, stdin):
        self.dirs.setdefault(a[4], FakeFile(b"", 0o755))
        for name in a[5:]:
            self.files[f"{a[4]}/{name}"] = FakeFile(b"")
        return 0, b"", b""

    def _cmd_pending_clear(self, a, stdin):
        for name in a[5:]:
            self.files.pop(f"{a[4]}/{name}", None)
        return 0, b"", b""

    def _cmd_service_ctl(self, a, stdin):
        action, svc = a[4], a[5]
        if svc not in self.service_scripts:
            return 1, b"", f"{svc}: unrecognized service\n".encode()
        if action == "enable":
            self.services[svc]["enabled"] = True
        elif action == "stop":
            self.services[svc]["active"] = False
        else:
            self.services[svc]["active"] = True
            self.services[svc].setdefault("reloads", 0)
            self.services[svc]["reloads"] += 1
        return 0, b"", b""

    def _cmd_hostname_is(self, a, stdin):
        return (0 if self.hostname == a[4] else 1), b"", b""

    def _cmd_hostname(self, a, stdin):
        if len(a) > 1:
            self.hostname = a[1]
        return 0, f"{self.hostname}\n".encode(), b""

    def _cmd_init_system(self, a, stdin):
        return 0, b"sysv\n", b""

    def _cmd_uname(self, a, stdin):
        return 0, b"6.1.0-fake\n", b""

    def _cmd_df(self, a, stdin):
        return 0, b"Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/vda 10000000 4000000 6000000 40% /\n", b""

    def _cmd_nft(self, a, stdin):
        if a[1:3] == ["-c", "-f"]:
            return self._check("nft-check")
        if a[1] == "list":
            return (0 if self.nft_loaded else 1), b"", b""
        if a[1] == "-f":
            self.nft_loaded = True
            return 0, b"", b""
        raise UnexpectedCommand(f"nft {a[1:]}")

    def _cmd_unbound_checkconf(self, a, stdin):
        return self._check("unbound-checkconf")



def _name(argv) -> str:
    """A command's name: a helper script's $0, else the program."""
    argv = list(argv)
    if len(argv) >= 4 and argv[0] in ("sh", "python3") and argv[1] == "-c":
        return argv[3]
    return argv[0]


__all__ = ["CommandError", "FakeFile", "FakeHost", "READ_ONLY", "UnexpectedCommand"]
