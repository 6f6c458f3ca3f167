"""Everything `mailops collect` takes from the server, in one run (stdlib only).

Input (JSON on stdin): the log files to follow with the cursors of the last run,
the rspamd history key's newest row seen, the fail2ban database and the last ban
time seen, the files holding the controller password and the backup record.
Output (JSON on stdout): what is new since then.  Reads only; writes nothing.

Logs are followed by **fingerprint and offset**: a file's fingerprint is the
SHA-256 of its first line, so a file keeps its cursor when logrotate renames it
(``postfix.log`` -> ``.1``), copies it (copytruncate), or compresses it (``.2.gz``;
offsets count uncompressed bytes).  A compressed file read to its end is marked
final and never opened again except for its first line.  Only whole lines are
returned.  The rspamd history (a redis list, newest first, each row one zstd frame)
is read until the row seen last time; when that row is gone and the list is full,
the history wrapped between two runs and the reply says so.
"""
import base64
import glob
import gzip
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import zlib

HEAD = 4096


def _open(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _fingerprint(path):
    with _open(path) as f:
        head = f.read(HEAD)
    nl = head.find(b"\n")
    if nl < 0:
        return None                     # no whole line yet
    return hashlib.sha256(head[:nl]).hexdigest()[:24]


def _rotation_order(path, base):
    """Oldest first: base.N.gz ... base.1, base."""
    tail = path[len(base):].lstrip(".").split(".")[0]
    return -int(tail) if tail.isdigit() else 0


def read_logs(spec, cursors, budget):
    base = spec["path"]
    files = [p for p in glob.glob(glob.escape(base) + "*")
             if p == base or p[len(base):].startswith(".")]
    files.sort(key=lambda p: _rotation_order(p, base))
    out, more, present = [], False, []
    for path in files:
        try:
            st = os.stat(path)
            fp = _fingerprint(path)
        except (OSError, EOFError, zlib.error) as exc:
            out.append({"path": path, "error": f"{type(exc).__name__}: {exc}"})
            continue
        if fp is None:
            continue
        present.append(fp)
        cur = cursors.get(fp, {"offset": 0})
        if cur.get("final"):
            continue
        gz = path.endswith(".gz")
        if not gz and st.st_size <= cur["offset"]:
            continue
        if budget <= 0:
            more = True
            break
        with _open(path) as f:
            if gz:
                left = cur["offset"]
                while left > 0:
                    skipped = len(f.read(min(left, 1 << 20)))
                    if not skipped:
                        break
                    left -= skipped
            else:
                f.seek(cur["offset"])
            data = f.read(budget + 1)
        if len(data) > budget:
            more = True
            data = data[:budget]
        end = data.rfind(b"\n") + 1
        data = data[:end]
        final = gz and not more
        budget -= len(data)
        if not data and not final:
            continue
        out.append({"path": path, "inode": st.st_ino, "fingerprint": fp,
                    "offset": cur["offset"], "end": cur["offset"] + len(data), "final": final,
                    "mtime": st.st_mtime,
                    "data": base64.b64encode(zlib.compress(data, 1)).decode()})
        if more:
            break
    return out, more, budget, present


class Redis:
    """Just enough RESP for SCAN, LLEN and LRANGE."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.f = self.sock.makefile("rb")

    def call(self, *args):
        msg = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            msg += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(msg)
        return self._reply()

    def _reply(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind in (b"+", b":"):
            return int(rest) if kind == b":" else rest.decode()
        if kind == b"-":
            raise RuntimeError("redis: " + rest.decode(errors="replace"))
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"redis: unexpected reply {line[:40]!r}")


def read_history(req):
    r = Redis(req.get("redis", "127.0.0.1:6379"))
    keys, cursor = [], "0"
    while True:
        cursor, batch = r.call("SCAN", cursor, "MATCH", "rs_history*", "COUNT", 1000)
        keys += [k.decode() for k in batch]
        if cursor in ("0", b"0"):
            break
    keys = sorted(set(keys))
    if not keys:
        return {"key": None, "rows": [], "length": 0, "wrapped": False, "newest": None}
    key = keys[0] if len(keys) == 1 else max(keys, key=lambda k: r.call("LLEN", k))
    length = r.call("LLEN", key)
    last = req.get("newest") if req.get("key") in (None, key) else None
    rows, found, start, step = [], last is None, 0, 500
    while start < length:
        chunk = r.call("LRANGE", key, start, start + step - 1) or []
        if not chunk:
            break
        for raw in chunk:
            if last is not None and hashlib.sha256(raw).hexdigest() == last:
                found = True
                break
            rows.append(raw)
        if found and last is not None:
            break
        start += step
    newest = hashlib.sha256(rows[0]).hexdigest() if rows else last
    wrapped = last is not None and not found
    # with nothing seen before, every row is new; a row that vanished means rows lost
    # only when the list is at its limit (rspamd trims it to nrows)
    return {"key": key, "rows": [base64.b64encode(x).decode() for x in rows],
            "length": length, "nrows": req.get("nrows"),
            "wrapped": bool(wrapped and length >= (req.get("nrows") or 0)),
            "lost_track": bool(wrapped), "newest": newest}


def read_stat(req):
    try:
        with open(req["password_file"]) as f:
            password = f.read().strip()
    except OSError as exc:
        return {"error": f"controller password: {exc.strerror}"}
    rq = urllib.request.Request("http://127.0.0.1:11334/stat", headers={"Password": password})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(rq, timeout=10) as resp:
            return json.load(resp)
    except OSError as exc:
        return {"error": f"rspamd controller: {exc}"}


def read_fail2ban(req):
    db = req["db"]
    if not os.path.exists(db):
        return {"error": f"{db}: no such file"}
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    copy = sqlite3.connect(":memory:")
    src.backup(copy)            # a consistent read-only copy; fail2ban keeps writing
    src.close()
    rows = copy.execute("SELECT jail, ip, timeofban, bantime, bancount FROM bans "
                        "WHERE timeofban >= ? ORDER BY timeofban", (req.get("since", 0),)).fetchall()
    latest = copy.execute("SELECT jail, ip, timeofban, bantime, bancount FROM bips").fetchall()
    copy.close()
    banned = None
    res = subprocess.run(["fail2ban-client", "banned"], capture_output=True, text=True,
                         timeout=30)
    if res.returncode == 0:
        import ast
        try:
            banned = {j: ips for d in ast.literal_eval(res.stdout.strip()) for j, ips in d.items()}
        except (ValueError, SyntaxError):
            banned = None
    return {"bans": rows, "bips": latest, "banned": banned,
            "banned_error": None if banned is not None else (res.stderr or res.stdout)[-300:]}


def read_queue():
    res = subprocess.run(["postqueue", "-j"], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        return {"error": res.stderr.strip()[-300:]}
    items = []
    for line in res.stdout.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        items.append({"queue": m.get("queue_name"), "id": m.get("queue_id"),
                      "arrival": m.get("arrival_time"), "size": m.get("message_size"),
                      "sender": m.get("sender"), "recipients": len(m.get("recipients", []))})
    return {"items": items}


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    req = json.load(sys.stdin)
    now = time.time()
    budget = req.get("max_bytes", 64 << 20)
    logs, present, more = {}, {}, False
    for spec in req.get("logs", []):
        chunks, m, budget, fps = read_logs(spec, req.get("cursors", {}).get(spec["name"], {}),
                                           budget)
        logs[spec["name"]] = chunks
        present[spec["name"]] = fps
        more = more or m
    out = {"time": now, "logs": logs, "present": present, "more": more}
    if req.get("history") is not None:
        try:
            out["history"] = read_history(req["history"])
        except (OSError, RuntimeError) as exc:
            out["history"] = {"error": str(exc)}
    if req.get("stat") is not None:
        out["stat"] = read_stat(req["stat"])
    if req.get("fail2ban") is not None:
        try:
            out["fail2ban"] = read_fail2ban(req["fail2ban"])
        except (OSError, sqlite3.Error, subprocess.SubprocessError) as exc:
            out["fail2ban"] = {"error": f"{type(exc).__name__}: {exc}"}
    if req.get("queue"):
        try:
            out["queue"] = read_queue()
        except (OSError, subprocess.SubprocessError) as exc:
            out["queue"] = {"error": f"postqueue: {exc}"}
    if req.get("backup_state"):
        out["backup"] = read_json(req["backup_state"])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
