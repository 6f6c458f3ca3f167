"""Host access: the only module that imports paramiko or subprocess.

A host is named by URL: ``ssh://user@host:port`` (paramiko, key auth, host key
checked against a known_hosts file, never auto-accepted) or ``local://``
(subprocess, for running on the server itself).  Every command is an argument
list, quoted for the remote shell; it returns a :class:`Result`, and a failure
raises :class:`CommandError` naming host, command, exit code and stderr's tail.

Several read-only commands can be sent in one round trip with
:meth:`Host.run_many`; the remote side frames each command's output with
its length, so no output can be confused with a separator.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlsplit

STDERR_TAIL = 800


@dataclasses.dataclass(frozen=True)
class Result:
    """What one command did."""

    host: str
    argv: tuple[str, ...]
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return (f"Result(host={self.host!r}, cmd={display_command(self.argv)!r}, "
                f"exit_code={self.exit_code}, stdout={len(self.stdout)}B, "
                f"stderr={len(self.stderr)}B, duration={self.duration:.3f}s)")


class HostError(Exception):
    """Anything that went wrong reaching or using a host."""


class ConnectError(HostError):
    pass


class HostKeyError(ConnectError):
    """The server's host key is unknown or has changed: refused, never added."""


class CommandError(HostError):
    """A command exited non-zero (or timed out); carries its :class:`Result`."""

    def __init__(self, result: Result, message: str | None = None):
        self.result = result
        tail = result.err.strip()[-STDERR_TAIL:] or result.out.strip()[-STDERR_TAIL:]
        super().__init__(message or (
            f"{result.host}: `{display_command(result.argv)}` exited {result.exit_code}"
            + (f": {tail}" if tail else "")))


class CommandTimeout(CommandError):
    pass


def display_command(argv: Sequence[str], limit: int = 240) -> str:
    """A command as a person reads it: shell-quoted, long scripts shortened."""
    if len(argv) >= 4 and argv[0] in ("sh", "python3") and argv[1] == "-c":
        # our helper scripts: show their name ($0, or python's argv[1]), not the body
        argv = [f"{argv[0]}:{argv[3]}", *argv[4:]]
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(argv: Sequence[str]) -> str:
    return shlex.join([str(a) for a in argv])


# A batch is one shell script.  The commands run in parallel (they only read),
# each with stdout, stderr and exit code captured to files; then one header
# line carries the exit codes, `wc -c` the sizes, and one `cat` all outputs in
# order.  Sizes frame the output, so no output can pass for a separator.
_BATCH_HEAD = r"""d=$(mktemp -d) || exit 97
trap 'rm -rf "$d"' EXIT
r() { i=$1; shift; "$@" </dev/null >"$d/$i.o" 2>"$d/$i.e"; echo $? >"$d/$i.c"; }
"""
_BATCH_TAIL = r"""wait
printf 'MAILOPS-BATCH'
for i in $(seq 0 $((n - 1))); do read -r c <"$d/$i.c"; printf ' %s' "$c"; done
printf '\n'
set --
for i in $(seq 0 $((n - 1))); do set -- "$@" "$d/$i.o" "$d/$i.e"; done
wc -c "$@"
cat "$@"
"""


def batch_script(commands: Sequence[Sequence[str]]) -> str:
    lines = [_BATCH_HEAD]
    lines += [f"r {i} {quote(argv)} &" for i, argv in enumerate(commands)]
    lines.append(f"n={len(commands)}")
    return "\n".join(lines) + "\n" + _BATCH_TAIL


def parse_batch(host: str, commands: Sequence[Sequence[str]], blob: bytes,
                duration: float) -> list[Result]:
    n = len(commands)
    try:
        head, rest = blob.split(b"\n", 1)
        tag, *codes = head.split(b" ")
        lines = rest.split(b"\n", 2 * n + 1)
        sizes = [int(line.split()[0]) for line in lines[: 2 * n]]
        if tag != b"MAILOPS-BATCH" or len(codes) != n or not lines[2 * n].strip().endswith(b"total"):
            raise ValueError("bad header")
        data = lines[2 * n + 1]
    except (ValueError, IndexError):
        raise HostError(f"{host}: batch output is not in the expected form: {blob[:200]!r}") from None
    if len(data) != sum(sizes):
        raise HostError(f"{host}: batch output has {len(data)} bytes, expected {sum(sizes)}")
    results, pos = [], 0
    for i, argv in enumerate(commands):
        out = data[pos: pos + sizes[2 * i]]
        pos += sizes[2 * i]
        err = data[pos: pos + sizes[2 * i + 1]]
        pos += sizes[2 * i + 1]
        results.append(Result(host, tuple(argv), int(codes[i]), out, err, duration))
    return results


class Host:
    """What every transport offers.  Subclasses implement :meth:`_exec`."""

    url: str = ""
    round_trips: int = 0      # commands sent (a batch is one)

    def _exec(self, argv: Sequence[str], stdin: bytes | None, timeout: float) -> Result:
        raise NotImplementedError

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float = 120, check: bool = True) -> Result:
        argv = tuple(str(a) for a in argv)
        self.round_trips += 1
        result = self._exec(argv, stdin, timeout)
        if check and not result.ok:
            raise CommandError(result)
        return result

    def run_many(self, commands: Sequence[Sequence[str]], *, timeout: float = 120) -> list[Result]:
        """Run read-only commands in one round trip; never raises for exit codes."""
        if not commands:
            return []
        commands = [tuple(str(a) for a in c) for c in commands]
        res = self.run(["sh", "-c", batch_script(commands), "batch"], timeout=timeout)
        return parse_batch(self.url, commands, res.stdout, res.duration)

    # -- files ---------------------------------------------------------------
    def read_file(self, path: str) -> bytes:
        return self.run(["cat", "--", path]).stdout

    def write_file(self, path: str, data: bytes, *, mode: str = "0644",
                   owner: str = "root", group: str = "root") -> Result:
        """Atomic write: temp file in the same directory, owner and mode set,
        fsync, then rename over the old file.  A failure at any point leaves
        the old file as it was and removes the temp file."""
        return self.run(["sh", "-c", WRITE_FILE, "write_file", path, mode, owner, group],
                        stdin=data)

    @contextlib.contextmanager
    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[int]:
        """A local port that reaches ``remote_host:remote_port`` as seen from the host."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


WRITE_FILE = r"""set -e
p=$1; mode=$2; owner=$3; group=$4
t=$(mktemp "$(dirname -- "$p")/.mailops.XXXXXX")
trap 'rm -f -- "$t"' EXIT
cat >"$t"
chown -- "$owner:$group" "$t"
chmod -- "$mode" "$t"
sync -- "$t"
mv -f -- "$t" "$p"
trap - EXIT
sync -- "$(dirname -- "$p")" 2>/dev/null || true
"""


class LocalHost(Host):
    """The machine this runs on, through subprocess."""

    def __init__(self, url: str = "local://"):
        self.url = url

    def _exec(self, argv, stdin, timeout):
        start = time.monotonic()
        try:
            proc = subprocess.run(list(argv), input=stdin if stdin is not None else b"",
                                  capture_output=True, timeout=timeout,
                                  env={**os.environ, "LC_ALL": "C"})
        except subprocess.TimeoutExpired as exc:
            res = Result(self.url, tuple(argv), -1, exc.stdout or b"", exc.stderr or b"",
                         time.monotonic() - start)
            raise CommandTimeout(res, f"{self.url}: `{display_command(argv)}` timed out "
                                      f"after {timeout}s") from None
        except FileNotFoundError:
            res = Result(self.url, tuple(argv), 127, b"", f"{argv[0]}: not found".encode(),
                         time.monotonic() - start)
            return res
        return Result(self.url, tuple(argv), proc.returncode, proc.stdout, proc.stderr,
                      time.monotonic() - start)

    def run_many(self, commands, *, timeout=120):
        # no round trip to save: run each directly
        return [self.run(c, timeout=timeout, check=False) for c in commands]

    @contextlib.contextmanager
    def forward(self, remote_port, remote_host="127.0.0.1"):
        yield remote_port

    def spawn(self, argv: Sequence[str], log_path: str | Path) -> int:
        """Start a long-running process detached from us (own session), output
        to ``log_path``; returns its pid.  Used for the lab's processes."""
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True)
        return proc.pid


class SSHHost(Host):
    """A host reached with paramiko: one connection, opened lazily, kept open."""

    def __init__(self, url: str, *, key_file: str | Path, known_hosts: str | Path,
                 connect_timeout: float = 10):
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise ValueError(f"not an ssh:// URL: {url!r}")
        self.url = url
        self.hostname = parts.hostname
        self.port = parts.port or 22
        self.username = parts.username or "root"
        self.key_file = str(key_file)
        self.known_hosts = str(known_hosts)
        self.connect_timeout = connect_timeout
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self):
        paramiko = _import_paramiko()

        if not os.path.exists(self.known_hosts):
            raise HostKeyError(f"{self.url}: known_hosts file {self.known_hosts} does not "
                               f"exist; host keys are never accepted blindly")
        client = paramiko.SSHClient()
        client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            sock = socket.create_connection((self.hostname, self.port), self.connect_timeout)
        except OSError as exc:
            raise ConnectError(f"{self.url}: cannot connect: {exc}") from None
        # paramiko leaves Nagle on: ~48 ms per round trip instead of ~5 ms
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.connect(self.hostname, self.port, username=self.username,
                           key_filename=self.key_file, sock=sock, allow_agent=False,
                           look_for_keys=False, timeout=self.connect_timeout,
                           banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout)
        except paramiko.BadHostKeyException as exc:
            sock.close()
            raise HostKeyError(
                f"{self.url}: host key CHANGED (got {exc.key.get_name()} "
                f"{exc.key.fingerprint}, {self.known_hosts} expects "
                f"{exc.expected_key.fingerprint}); refusing to connect") from None
        except paramiko.SSHException as exc:
            sock.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(
                    f"{self.url}: host key unknown (not in {self.known_hosts}); "
                    f"verify its fingerprint and add it to known_hosts") from None
            raise ConnectError(f"{self.url}: ssh failed: {exc}") from None
        return client

    def _exec(self, argv, stdin, timeout):
        start = time.monotonic()
        transport = self.client.get_transport()
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
        except Exception as exc:  # noqa: BLE001 - paramiko's, e.g. sshd's MaxSessions
            raise HostError(f"{self.url}: cannot open a channel for "
                            f"`{display_command(argv)}`: {exc!r}") from None
        chan.settimeout(timeout)
        chan.exec_command(quote(argv))
        errs: list[bytes] = []
        outs: list[bytes] = []

        def read_stderr():
            with contextlib.suppress(OSError):
                while data := chan.recv_stderr(65536):
                    errs.append(data)

        def write_stdin():
            with contextlib.suppress(OSError):
                if stdin:
                    chan.sendall(stdin)
                chan.shutdown_write()

        workers = [threading.Thread(target=read_stderr, daemon=True),
                   threading.Thread(target=write_stdin, daemon=True)]
        for w in workers:
            w.start()
        try:
            while data := chan.recv(65536):
                outs.append(data)
            for w in workers:
                w.join(max(0.0, timeout - (time.monotonic() - start)))
            code = chan.recv_exit_status()
        except socket.timeout:
            chan.close()
            res = Result(self.url, tuple(argv), -1, b"".join(outs), b"".join(errs),
                         time.monotonic() - start)
            raise CommandTimeout(res, f"{self.url}: `{display_command(argv)}` timed out "
                                      f"after {timeout}s") from None
        chan.close()
        return Result(self.url, tuple(argv), code, b"".join(outs), b"".join(errs),
                      time.monotonic() - start)

    @contextlib.contextmanager
    def forward(self, remote_port, remote_host="127.0.0.1"):
        transport = self.client.get_transport()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        stop = threading.Event()

        def pump(src, dst):
            with contextlib.suppress(OSError, EOFError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError, EOFError):
                dst.shutdown(socket.SHUT_WR) if isinstance(dst, socket.socket) else dst.shutdown_write()

        def serve():
            while not stop.is_set():
                try:
                    conn, peer = listener.accept()
                except OSError:
                    return
                try:
                    chan = transport.open_channel("direct-tcpip", (remote_host, remote_port), peer)
                except Exception:  # noqa: BLE001 - refuse this client, keep serving
                    conn.close()
                    continue
                threading.Thread(target=pump, args=(conn, chan), daemon=True).start()
                threading.Thread(target=pump, args=(chan, conn), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            listener.close()

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None


def _import_paramiko():
    """paramiko, imported without invoke: paramiko.config imports it (0.12 s)
    only for `Match exec` in ssh_config files, which mailops never reads."""
    if "paramiko" not in sys.modules and "invoke" not in sys.modules:
        sys.modules["invoke"] = None
        try:
            importlib.import_module("paramiko")
        finally:
            del sys.modules["invoke"]
    return importlib.import_module("paramiko")


def connect(url: str, *, key_file: str | Path | None = None,
            known_hosts: str | Path | None = None) -> Host:
    """Open a host by URL (``ssh://user@host:port`` or ``local://``)."""
    scheme = urlsplit(url).scheme
    if scheme == "local":
        return LocalHost(url)
    if scheme == "ssh":
        if key_file is None or known_hosts is None:
            raise ValueError(f"{url}: ssh needs key_file and known_hosts")
        return SSHHost(url, key_file=key_file, known_hosts=known_hosts)
    raise ValueError(f"unsupported host URL {url!r}: use ssh://user@host:port or local://")


def exec_replace(argv: Sequence[str]) -> None:
    """Replace this process with ``argv`` (for interactive commands such as ssh)."""
    os.execvp(argv[0], list(argv))
