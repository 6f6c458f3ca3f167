"""An in-place Debian upgrade's work on the host (stdlib only).

Input (JSON on stdin): {"action": ..., ...}.  Output: JSON.
- defer-start: the stand-in that answers SMTP with 421 while the mail daemons are down
  (25 and 587 in clear, 465 in TLS with the server's certificate): senders keep the
  mail and retry, submission clients are told to try again.  A daemon of its own
  (double fork, new session), so a cut SSH connection leaves it answering; every
  connection it answers is one line of its log.
- defer-stop: the stand-in stopped; the connections it answered counted, first and last.
- sources: the apt sources moved from one release's codename to the next (originals
  kept beside the upgrade's state); sources-restore puts the originals back.
- apt-start: the package upgrade started detached (policy-rc.d denies every service
  start while packages move), its output and exit code in files: a cut connection does
  not stop it; apt-status reads them.
"""
import glob
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

GREETING = ("421 4.3.2 {host} Service temporarily unavailable: system upgrade in "
            "progress, try again later\r\n")


# ---- the stand-in -------------------------------------------------------------------

def _listen(port):
    socks = []
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((addr, port))
        except OSError:
            s.close()
            if family == socket.AF_INET:
                raise
            continue
        s.listen(64)
        socks.append(s)
    return socks


def _answer(conn, port, peer, ctx, greeting, log, lock):
    try:
        conn.settimeout(15)
        if ctx is not None:
            conn = ctx.wrap_socket(conn, server_side=True)
        conn.sendall(greeting)
        with lock:
            log.write(f"{time.time():.3f} {port} {peer[0]}\n")
            log.flush()
    except OSError:
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def _serve(listeners, ctx, greeting, log_path):
    log = open(log_path, "a")
    lock = threading.Lock()

    def loop(sock, port, tls):
        while True:
            try:
                conn, peer = sock.accept()
            except OSError:
                time.sleep(0.1)
                continue
            threading.Thread(target=_answer, daemon=True,
                             args=(conn, port, peer, ctx if tls else None, greeting, log,
                                   lock)).start()

    threads = [threading.Thread(target=loop, args=a, daemon=True) for a in listeners]
    for t in threads:
        t.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def defer_start(req):
    pidfile = req["pidfile"]
    if os.path.exists(pidfile):
        pid = int(open(pidfile).read().strip() or 0)
        if pid and _alive(pid):
            return {"pid": pid, "already": True}
    if req.get("fresh") and os.path.exists(req["log"]):   # a new window: counted anew
        os.unlink(req["log"])
    ctx = None
    if req.get("tls_port"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        for cert, key in req["certs"]:
            ctx.load_cert_chain(cert, key)
    listeners = []
    for port in req["ports"]:
        for s in _listen(port):
            listeners.append((s, port, False))
    if req.get("tls_port"):
        for s in _listen(req["tls_port"]):
            listeners.append((s, req["tls_port"], True))
    greeting = GREETING.format(host=req["hostname"]).encode()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    r, w = os.pipe()
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        with open(pidfile + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(pidfile + ".tmp", pidfile)
        os.write(w, b"ok")
        os.close(w)
        _serve(listeners, ctx, greeting, req["log"])
        os._exit(0)
    os.close(w)
    os.waitpid(first, 0)
    for s, _, _ in listeners:
        s.close()
    ready = os.read(r, 2)
    if ready != b"ok":
        sys.exit("the upgrade's SMTP stand-in did not start")
    return {"pid": int(open(pidfile).read()), "already": False}


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def defer_stop(req):
    pidfile, stopped = req["pidfile"], False
    if os.path.exists(pidfile):
        pid = int(open(pidfile).read().strip() or 0)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.05)
            stopped = True
        os.unlink(pidfile)
    times = []
    if os.path.exists(req["log"]):
        with open(req["log"]) as f:
            times = [float(line.split()[0]) for line in f if line.strip()]
    return {"stopped": stopped, "answered": len(times), "first": min(times, default=None),
            "last": max(times, default=None)}


# ---- apt sources ----------------------------------------------------------------------

def source_files():
    files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")
                                               + glob.glob("/etc/apt/sources.list.d/*.sources"))
    return [f for f in files if os.path.isfile(f)]


def sources(req):
    """Each source file naming the old codename rewritten to name the new one (the
    codename as a word: bookworm, bookworm-updates, bookworm-security)."""
    word = re.compile(rf"\b{re.escape(req['from'])}(?=[\s/-]|$)", re.M)
    keep = req["keep_dir"]
    os.makedirs(keep, mode=0o700, exist_ok=True)
    changed = []
    for path in source_files():
        text = open(path).read()
        new = word.sub(req["to"], text)
        if new == text:
            continue
        saved = os.path.join(keep, "apt" + path.replace("/", "%"))
        if not os.path.exists(saved):           # the first run's originals are the originals
            with open(saved, "w") as f:
                f.write(text)
        tmp = path + ".mailops-tmp"
        with open(tmp, "w") as f:
            f.write(new)
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.rename(tmp, path)
        changed.append(path)
    if not changed and not any(re.search(rf"\b{re.escape(req['to'])}\b", open(p).read())
                               for p in source_files()):
        sys.exit(f"no apt source names {req['from']} or {req['to']}: the host's sources "
                 "are not Debian's; move them by hand")
    return {"changed": changed}


def sources_restore(req):
    keep, restored = req["keep_dir"], []
    for saved in sorted(glob.glob(os.path.join(keep, "apt%*"))):
        path = os.path.basename(saved)[len("apt"):].replace("%", "/")
        tmp = path + ".mailops-tmp"
        with open(saved) as src, open(tmp, "w") as f:
            f.write(src.read())
        os.rename(tmp, path)
        os.unlink(saved)
        restored.append(path)
    return {"restored": restored}


# ---- the package upgrade --------------------------------------------------------------

def apt_start(req):
    log, rc, script = req["log"], req["rc"], req["script_path"]
    st = apt_status(req)
    if st["running"]:
        return {**st, "started": False}
    for f in (rc,):
        if os.path.exists(f):
            os.unlink(f)
    with open(script, "w") as f:
        f.write(req["script"])
    os.chmod(script, 0o700)
    cmd = f'sh {script} >>{log} 2>&1; echo $? >{rc}.tmp; mv {rc}.tmp {rc}'
    # a session of its own (a cut connection does not reach it); the pid is the job's
    # shell, alive until the job ends (setsid(1) here would fork and leave a dead pid)
    p = subprocess.Popen(["sh", "-c", cmd], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    with open(req["pidfile"], "w") as f:
        f.write(f"{p.pid}\n")
    return {"running": True, "started": True, "pid": p.pid}


def apt_status(req):
    running = False
    if os.path.exists(req["pidfile"]) and not os.path.exists(req["rc"]):
        pid = int(open(req["pidfile"]).read().strip() or 0)
        running = bool(pid) and _alive(pid)
    code = None
    if os.path.exists(req["rc"]):
        code = int(open(req["rc"]).read().strip() or 1)
    tail = ""
    if os.path.exists(req["log"]):
        with open(req["log"], "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4000))
            tail = f.read().decode(errors="replace")
    return {"running": running, "rc": code, "tail": tail}


ACTIONS = {"defer-start": defer_start, "defer-stop": defer_stop, "sources": sources,
           "sources-restore": sources_restore, "apt-start": apt_start, "apt-status": apt_status}


def main():
    req = json.load(sys.stdin)
    print(json.dumps(ACTIONS[req["action"]](req)))


if __name__ == "__main__":
    main()
