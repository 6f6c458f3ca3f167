"""Mailbox migration work on the mail server (stdlib only).

Runs as `python3 -c <this file> migrate <op>` with one JSON request on stdin and
prints one JSON reply.  The old server's password arrives on stdin only: for
doveadm it goes into a 0600 file in a private directory under /run (0711: the mail
user passes through to the CA file, cannot list) that the dovecot configuration reads (`imapc_password = <file`), removed when the op ends; it is
never in argv, the environment or a reply.

Ops (every request has ``source`` {host, port, tls, ca_pem}, ``login``, ``password``):
  probe   connect, verify the certificate, log in, list the folders with their
          message counts; errors come back as {kind: connect|tls|login|imap, message}
  local   {user}: the local folders (messages, uidnext, uidvalidity), no source needed
  sync    {user, mode, series, folder?}: `doveadm backup -R` (mode backup) or
          `doveadm sync -1 -R` (mode sync) over imapc, one folder or all, with dsync's
          state kept per folder in <home>/.mailops-migrate (a re-run is incremental);
          replies with the local folders afterwards (as `local`)
  digest  {user}: a SHA-256 and the flags of every message, old side (IMAP, read
          only: EXAMINE and BODY.PEEK) and new side (doveadm fetch)
"""
import base64
import hashlib
import imaplib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile

RUN_DIR = "/run/mailops-migrate"
TIMEOUT = 30
IGNORED_FLAGS = {"\\Recent"}


# -- modified UTF-7 (RFC 3501 5.1.3), which IMAP and maildir++ use for folder names ----
def mutf7_encode(name):
    out, run = [], []

    def flush():
        if run:
            b = base64.b64encode("".join(run).encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + b.replace("/", ",") + "-")
            run.clear()
    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(name):
    def one(m):
        body = m.group(1)
        if not body:
            return "&"
        b = body.replace(",", "/")
        return base64.b64decode(b + "=" * (-len(b) % 4)).decode("utf-16-be")
    return re.sub(r"&([A-Za-z0-9+,]*)-", one, name)


# -- the old server over IMAP ---------------------------------------------------------
class ProbeError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind, self.message = kind, message


def _context(source):
    ctx = ssl.create_default_context(cadata=source["ca_pem"] or None)
    if not source["ca_pem"]:
        ctx.load_default_certs()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # judge the certificate as dovecot's imapc will (OpenSSL's defaults): Python 3.13
    # adds X509_STRICT, which refuses e.g. a certificate without an authority key id
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    return ctx


def _connect(source):
    host, port = source["host"], int(source["port"])
    try:
        if source["tls"] == "imaps":
            return imaplib.IMAP4_SSL(host, port, ssl_context=_context(source), timeout=TIMEOUT)
        m = imaplib.IMAP4(host, port, timeout=TIMEOUT)
        m.starttls(_context(source))
        return m
    except ssl.SSLCertVerificationError as exc:
        raise ProbeError("tls", f"the certificate of {host}:{port} is not trusted: "
                                f"{exc.verify_message}") from None
    except ssl.SSLError as exc:
        raise ProbeError("tls", f"TLS with {host}:{port} failed: {exc.reason or exc}") from None
    except imaplib.IMAP4.error as exc:       # STARTTLS refused
        raise ProbeError("tls", f"{host}:{port} did not start TLS: {exc}") from None
    except (OSError, socket.timeout) as exc:
        raise ProbeError("connect", f"cannot reach {host}:{port}: "
                                    f"{exc.strerror or exc}") from None


def _login(source, login, password):
    m = _connect(source)
    try:
        m.login(login, password)
    except imaplib.IMAP4.error as exc:
        m.shutdown()
        text = str(exc).strip("b'\"")
        raise ProbeError("login", f"{source['host']} refused the login of {login}: "
                                  f"{text}") from None
    return m


_LIST = re.compile(r'\((?P<flags>[^)]*)\) (?:"(?P<sep>[^"]*)"|NIL) (?P<name>.*)$')


def _unquote(s):
    s = s.strip()
    if s.startswith('"'):
        return s[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return s


def _folders(m):
    """[(raw name, separator, readable name with '/' as separator)] of selectable folders."""
    typ, data = m.list()
    if typ != "OK":
        raise ProbeError("imap", f"LIST failed: {data}")
    out = []
    for line in data:
        if isinstance(line, tuple):        # a literal name
            head, raw = line[0].decode(), line[1].decode()
        else:
            head, raw = line.decode(), None
        mt = _LIST.match(head)
        if not mt:
            continue
        if "\\noselect" in mt["flags"].lower() or "\\nonexistent" in mt["flags"].lower():
            continue
        raw = raw if raw is not None else _unquote(mt["name"])
        sep = mt["sep"] or "/"
        out.append((raw, sep, "/".join(mutf7_decode(p) for p in raw.split(sep))))
    return sorted(out, key=lambda f: (f[2] != "INBOX", f[2]))


def _quote(name):
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def probe(req):
    try:
        m = _login(req["source"], req["login"], req["password"])
    except ProbeError as exc:
        return {"ok": False, "kind": exc.kind, "message": exc.message}
    try:
        folders = []
        for raw, _sep, name in _folders(m):
            typ, data = m.status(_quote(raw), "(MESSAGES)")
            count = int(re.search(rb"MESSAGES (\d+)", data[0]).group(1)) if typ == "OK" else 0
            folders.append({"name": name, "messages": count})
        return {"ok": True, "folders": folders}
    except ProbeError as exc:
        return {"ok": False, "kind": exc.kind, "message": exc.message}
    finally:
        m.logout()


_FETCH = re.compile(rb"UID (\d+)|FLAGS \(([^)]*)\)")


def _old_digest(req):
    m = _login(req["source"], req["login"], req["password"])
    rows = []
    try:
        for raw, _sep, name in _folders(m):
            typ, _ = m.select(_quote(raw), readonly=True)       # EXAMINE: changes nothing
            if typ != "OK":
                continue
            typ, data = m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            for item in data:
                if not isinstance(item, tuple):
                    continue
                uid = flags = None
                for g in _FETCH.finditer(item[0]):
                    uid = int(g.group(1)) if g.group(1) else uid
                    flags = g.group(2).decode() if g.group(2) is not None else flags
                rows.append([name, uid, _flags(flags or ""), _sha(item[1])])
    finally:
        m.logout()
    return rows


def _flags(text):
    return " ".join(sorted(f for f in text.split() if f not in IGNORED_FLAGS))


def _sha(raw):
    """The message's digest, line endings as stored here (IMAP sends CRLF, mdbox keeps LF)."""
    return hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()


# -- this server ----------------------------------------------------------------------
def _doveadm(argv, timeout=3600):
    return subprocess.run(["doveadm", *argv], capture_output=True, timeout=timeout)


def local(req):
    p = _doveadm(["-f", "tab", "mailbox", "status", "-u", req["user"],
                  "messages uidnext uidvalidity", "*"], timeout=120)
    if p.returncode != 0:
        return {"ok": False, "message": _tail(p.stderr)}
    folders = {}
    lines = p.stdout.decode().splitlines()
    head = lines[0].split("\t") if lines else []
    for line in lines[1:]:
        row = dict(zip(head, line.split("\t")))
        folders[row["mailbox"]] = {k: int(row[k]) for k in ("messages", "uidnext", "uidvalidity")}
    return {"ok": True, "folders": folders}


def _new_digest(user):
    p = _doveadm(["-f", "json", "fetch", "-u", user, "mailbox uid flags text", "ALL"])
    if p.returncode != 0:
        raise RuntimeError(_tail(p.stderr))
    return [[r["mailbox"], int(r["uid"]), _flags(r["flags"]),
             _sha(r["text"].encode("utf-8", "surrogateescape"))]
            for r in json.loads(p.stdout or b"[]")]


def digest(req):
    try:
        old = _old_digest(req)
    except ProbeError as exc:
        return {"ok": False, "kind": exc.kind, "message": exc.message}
    return {"ok": True, "old": old, "new": _new_digest(req["user"])}


def _value(text):
    """A dovecot config value, quoted; % doubled (settings expand %variables)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


MAIN_CONF = "/etc/dovecot/dovecot.conf"


def _config_version():
    """2.4: a configuration file must begin with the main one's dovecot_config_version."""
    with open(MAIN_CONF) as f:
        for line in f:
            m = re.match(r"\s*dovecot_config_version\s*=\s*(\S+)", line)
            if m:
                return [f"dovecot_config_version = {m.group(1)}"]
    return []


def _config(d, req):
    src = req["source"]
    lines = (_config_version() if req["series"] == "2.4" else []) + [
             f"!include {MAIN_CONF}",
             f"imapc_host = {_value(src['host'])}", f"imapc_port = {int(src['port'])}",
             f"imapc_ssl = {'imaps' if src['tls'] == 'imaps' else 'starttls'}",
             f"imapc_user = {_value(req['login'])}",
             f"imapc_password = <{d}/password",
             "dsync_hashed_headers = Date Message-ID",
             "mail_prefetch_count = 20"]
    if src["ca_pem"]:
        with open(os.path.join(d, "ca.pem"), "w") as f:
            f.write(src["ca_pem"])
        os.chmod(os.path.join(d, "ca.pem"), 0o644)
        lines.append(f"ssl_client_ca_file = {d}/ca.pem")
    else:
        lines.append("ssl_client_ca_dir = /etc/ssl/certs")
    if req["series"] == "2.4":
        lines += ["ssl_client_require_valid_cert = yes"]
    else:
        lines += ["imapc_ssl_verify = yes", "imapc_features = rfc822.size fetch-headers modseq"]
    return "\n".join(lines) + "\n"


def _tail(err, n=6):
    lines = [l for l in err.decode(errors="replace").splitlines() if l.strip()]
    return "\n".join(lines[-n:])


STATE_DIR = ".mailops-migrate"          # in the mailbox's home: it goes where the mail goes


def _state_file(req):
    """dsync's state of one folder (or the whole mailbox) of one migration: where the
    last run left off, so a re-run copies only changes, and mail that arrived here in
    between (a UID the old server also uses) is renumbered once, not copied again."""
    src = req["source"]
    key = hashlib.sha256(json.dumps([src["host"], src["port"], req["login"], req["mode"],
                                     req.get("folder") or ""]).encode()).hexdigest()[:32]
    d = os.path.join(req["home"], STATE_DIR)
    os.makedirs(d, mode=0o700, exist_ok=True)
    return os.path.join(d, key + ".state")


def sync(req):
    # the mail user may pass through (doveadm reads the CA file after dropping to it)
    # but not list; the password file is root's alone (read while the config is parsed)
    os.makedirs(RUN_DIR, mode=0o711, exist_ok=True)
    os.chmod(RUN_DIR, 0o711)
    d = tempfile.mkdtemp(dir=RUN_DIR)
    os.chmod(d, 0o711)
    state_file = _state_file(req)
    try:
        with open(state_file) as f:
            state = f.read().strip()
    except FileNotFoundError:
        state = ""
    try:
        fd = os.open(os.path.join(d, "password"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(req["password"])
        conf = os.path.join(d, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(_config(d, req))
        argv = ["-c", conf]
        argv += (["backup", "-R"] if req["mode"] == "backup" else ["sync", "-1", "-R"])
        if req.get("folder"):
            argv += ["-m", req["folder"]]
        argv += ["-s", state, "-u", req["user"], "imapc:"]
        p = _doveadm(argv, timeout=req.get("timeout", 3600))
        if p.returncode != 0:
            return {"ok": False, "rc": p.returncode, "message": _tail(p.stderr)}
        new_state = p.stdout.decode().strip()
        if new_state:
            tmp = state_file + ".tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(new_state + "\n")
            os.replace(tmp, state_file)
        after = local(req)
        return {"ok": after["ok"], "rc": 0, "message": after.get("message", ""),
                "after": after.get("folders", {})}
    finally:
        shutil.rmtree(d, ignore_errors=True)


OPS = {"probe": probe, "local": local, "sync": sync, "digest": digest}

if __name__ == "__main__":
    request = json.load(sys.stdin)
    json.dump(OPS[sys.argv[-1]](request), sys.stdout)
