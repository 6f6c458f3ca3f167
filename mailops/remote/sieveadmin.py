"""Sieve work on the server that doveadm has no command for.

Runs as `python3 -c <this file>` with one JSON request on stdin, prints one JSON
reply.  Ops:
  test   {script, messages[], recipient, sender, series}: sieve-test on each message
         (nothing is delivered), in a private directory owned by the mail user
  get    {home, name}: an admin script's text ("" when there is none)
  put    {home, name, text}: an admin script, compiled by sievec before it
         replaces the live one (a script that does not compile changes nothing)
  remove {home, name}
Admin scripts live in <home>/sieve-admin/, run by dovecot before the user's own.
"""
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

ADMIN_DIR = "sieve-admin"


def _mail_user():
    return pwd.getpwnam(os.environ.get("MAILOPS_VMAIL", "vmail"))


def _chown_tree(path, pw):
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for f in files:
            os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)


def test(req):
    pw = _mail_user()
    d = tempfile.mkdtemp(prefix="mailops-sieve-test.")
    try:
        with open(os.path.join(d, "script.sieve"), "w") as f:
            f.write(req["script"])
        for i, m in enumerate(req["messages"]):
            with open(os.path.join(d, f"m{i}.eml"), "w") as f:
                f.write(m)
        _chown_tree(d, pw)
        results = []
        for i in range(len(req["messages"])):
            # a scratch mail store (2.4 has no -l: the settings are given instead)
            store = (["-o", "mail_driver=mdbox", "-o", f"mail_path={d}/mail"]
                     if req.get("series") == "2.4" else ["-l", f"mdbox:{d}/mail"])
            argv = ["sieve-test", "-r", req["recipient"], "-f", req["sender"] or "MAILER-DAEMON",
                    *store, os.path.join(d, "script.sieve"), os.path.join(d, f"m{i}.eml")]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            results.append({"code": r.returncode, "out": r.stdout, "err": r.stderr})
        return {"results": results}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _paths(req):
    base = os.path.join(req["home"], ADMIN_DIR)
    return base, os.path.join(base, req["name"] + ".sieve")


def get(req):
    _, path = _paths(req)
    try:
        with open(path) as f:
            return {"text": f.read()}
    except FileNotFoundError:
        return {"text": ""}


def put(req):
    pw = _mail_user()
    base, path = _paths(req)
    for d in (os.path.dirname(req["home"]), req["home"], base):
        if not os.path.isdir(d):
            os.mkdir(d, 0o700)
            os.chown(d, pw.pw_uid, pw.pw_gid)
    fd, tmp = tempfile.mkstemp(prefix=".new.", suffix=".sieve", dir=base)
    tmpbin = tmp[:-len(".sieve")] + ".svbin"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(req["text"])
        os.chmod(tmp, 0o600)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        r = subprocess.run(["sievec", tmp], capture_output=True, text=True, timeout=60,
                           user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        if r.returncode != 0:
            err = (r.stderr or r.stdout).replace(tmp, req["name"] + ".sieve").strip()
            raise SystemExit(f"sievec refused the script; nothing changed: {err[-800:]}")
        os.rename(tmpbin, path[:-len(".sieve")] + ".svbin")
        os.rename(tmp, path)
    finally:
        for p in (tmp, tmpbin):
            if os.path.exists(p):
                os.unlink(p)
    return {"path": path}


def remove(req):
    _, path = _paths(req)
    gone = []
    for p in (path, path[:-len(".sieve")] + ".svbin"):
        if os.path.exists(p):
            os.unlink(p)
            gone.append(p)
    return {"removed": gone}


def main():
    req = json.load(sys.stdin)
    ops = {"test": test, "get": get, "put": put, "remove": remove}
    json.dump(ops[req["op"]](req), sys.stdout)


main()
