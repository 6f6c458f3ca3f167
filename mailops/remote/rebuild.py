"""Rebuild a lost server from its archive, on the new host (stdlib only).

Input (JSON on stdin): {"action": "choose"|"extract"|"state", ...}.  Output: JSON.
- choose: the archive to rebuild from (the named one, else the latest) and its age in
  hours, judged by this host's clock and time zone, as borg wrote the archive's time.
- extract: the archive's server state put in place before provisioning: the mail
  store, the DKIM keys, the certificates and the database copies (borg extracts into a
  private directory on the mail store's filesystem, then each tree is renamed into
  place; owners by name, as archived).  Refused when the host holds mail.
- own: the users database given its owners again (a rebuild resumed after its extract).
- state: after provisioning, the databases whose daemons now exist (redis: Bayes and
  history; fail2ban: ban history) put back from the copies, and the DKIM keys given to
  rspamd's group.
"""
import datetime
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

BORG = "/usr/local/sbin/mailops-borg"


def run(argv, warnings_ok=False, **kw):
    p = subprocess.run(argv, capture_output=True, **kw)
    # borg exits 1 for a warning: e.g. a path the archive does not hold (no ACME here)
    if p.returncode != 0 and not (warnings_ok and p.returncode == 1):
        sys.exit(f"{' '.join(argv[:4])} exited {p.returncode}: "
                 f"{p.stderr.decode(errors='replace').strip()[-600:]}")
    return p.stdout


def mail_files(vhosts, limit=1000):
    """Files under the mail store (up to ``limit``): a host with any holds mail."""
    found = 0
    for _, _, files in os.walk(vhosts):
        found += len(files)
        if found >= limit:
            break
    return found


def mailboxes(users_db):
    if not os.path.exists(users_db):
        return None
    con = sqlite3.connect(f"file:{users_db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM mailboxes").fetchone()[0]
    except sqlite3.Error:
        return None
    finally:
        con.close()


def choose(req):
    listing = json.loads(run([BORG, "list", "--json"]))["archives"]
    if not listing:
        sys.exit("the repository holds no archive")
    if req["archive"]:
        named = [a for a in listing if a["name"] == req["archive"]]
        if not named:
            sys.exit(f"the repository holds no archive {req['archive']!r}")
        chosen = named[0]
    else:
        chosen = listing[-1]
    made = datetime.datetime.fromisoformat(chosen["time"])
    if made.tzinfo is None:
        made = made.astimezone()          # borg writes the host's local time
    age = (datetime.datetime.now(datetime.timezone.utc) - made).total_seconds() / 3600
    return {"archive": chosen["name"], "age_hours": round(age, 2)}


def marker(req, phase=None):
    """The rebuild's progress on this host: read it, or record ``phase``."""
    if phase is None:
        try:
            with open(req["marker"]) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None
    os.makedirs(os.path.dirname(req["marker"]), exist_ok=True)
    tmp = req["marker"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"archive": req["archive"], "phase": phase}, f)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.rename(tmp, req["marker"])


def refuse_if_not_empty(req):
    m = marker(req)
    if m and m.get("phase") == "extracting" and m.get("archive") == req["archive"]:
        return                            # an extract of this archive cut off: again
    s = {"mail_files": mail_files(req["vhosts"]), "mailboxes": mailboxes(req["users_db"])}
    if s["mail_files"] or s["mailboxes"]:
        sys.exit(f"this host holds mail ({s['mail_files']} file(s) under {req['vhosts']}, "
                 f"{s['mailboxes'] or 0} mailbox(es) in {req['users_db']}): a rebuild "
                 "never overwrites a server; restore single mailboxes with the restore drill")


def service(action, name):
    if os.path.isdir("/run/systemd/system"):
        argv = ["systemctl", action, name]
    else:
        argv = ["service", name, action]
    run(argv, stdin=subprocess.DEVNULL)


def extract(req):
    refuse_if_not_empty(req)
    marker(req, "extracting")
    scratch = tempfile.mkdtemp(prefix=".mailops-rebuild-", dir=req["scratch_parent"])
    try:
        paths = [p.strip("/") for p in req["paths"]]
        run([BORG, "extract", f"::{req['archive']}", *paths], cwd=scratch, warnings_ok=True)
        copy = os.path.join(scratch, req["dumps"].strip("/"), "users.sqlite")
        if not os.path.exists(copy):       # checked before anything is placed
            sys.exit(f"archive {req['archive']} holds no copy of the users database "
                     f"({req['dumps']}/users.sqlite): nothing was placed")
        placed = []
        for p in paths:
            src, dst = os.path.join(scratch, p), "/" + p
            if not os.path.lexists(src):
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.isdir(dst) and not os.path.islink(dst):
                # an empty tree the new host made (/var/mail/vhosts), or what an extract
                # cut off left: replaced whole; anything else is kept aside
                if any(os.scandir(dst)) and p != req["vhosts"].strip("/"):
                    os.rename(dst, f"{dst}.before-rebuild-{os.getpid()}")
                else:
                    shutil.rmtree(dst)
            move(src, dst)
            placed.append("/" + p)
        db = os.path.join(req["dumps"], "users.sqlite")
        os.makedirs(os.path.dirname(req["users_db"]), mode=0o750, exist_ok=True)
        shutil.copy2(db, req["users_db"] + ".rebuild")
        os.rename(req["users_db"] + ".rebuild", req["users_db"])
        own(req)
        record_backup(req)
        marker(req, "extracted")
        return {"archive": req["archive"], "placed": placed,
                "mailboxes": mailboxes(req["users_db"]),
                "mail_files": mail_files(req["vhosts"], 10 ** 9)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def own(req):
    """The users database as the users-database helper makes it: root and the group
    postfix and dovecot read it by, 0640 (the archive's copy is root's alone)."""
    shutil.chown(req["users_db"], "root", req["users_db_group"])
    os.chmod(req["users_db"], 0o640)
    return {"users_db": f"root:{req['users_db_group']} 0640"}


def epoch(text):
    t = datetime.datetime.fromisoformat(text)
    return int((t if t.tzinfo else t.astimezone()).timestamp())


def record_backup(req):
    """The last backup of this server is the archive it was rebuilt from: recorded as
    mailops-backup records a run (verify judges its age), until the next backup runs."""
    info = json.loads(run([BORG, "info", "--json", f"::{req['archive']}"]))["archives"][0]
    rec = {"start": epoch(info["start"]), "end": epoch(info["end"]),
           "restored_from": req["archive"], "exit": 0}
    os.makedirs(os.path.dirname(req["state"]), exist_ok=True)
    with open(req["state"] + ".tmp", "w") as f:
        f.write(json.dumps(rec) + "\n")
    os.rename(req["state"] + ".tmp", req["state"])


def move(src, dst):
    """Rename (same filesystem); otherwise ``cp -a`` (owners, modes and times kept as
    extracted), then remove the source."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != 18:           # EXDEV
            raise
        run(["cp", "-a", "--", src, dst])
        shutil.rmtree(src)


def put_back(copy, live, service_name, owner):
    """Stop the daemon, replace its database with the archived copy, start it again."""
    if not os.path.exists(copy):
        return "no copy in the archive"
    service("stop", service_name)
    try:
        tmp = live + ".rebuild"
        shutil.copy2(copy, tmp)
        shutil.chown(tmp, owner, owner)
        os.chmod(tmp, 0o640 if owner == "redis" else 0o600)
        os.rename(tmp, live)
    finally:
        service("start", service_name)
    return "restored"


def state(req):
    d = req["dumps"]
    out = {"redis": put_back(os.path.join(d, "redis.rdb"), "/var/lib/redis/dump.rdb",
                             "redis-server", "redis")
           if req["redis"] else "not installed",
           "fail2ban": put_back(os.path.join(d, "fail2ban.sqlite3"),
                                "/var/lib/fail2ban/fail2ban.sqlite3", "fail2ban", "root")
           if req["fail2ban"] else "not installed"}
    keys = req["dkim_dir"]
    if os.path.isdir(keys):
        for n in os.listdir(keys):
            path = os.path.join(keys, n)
            shutil.chown(path, "root", "_rspamd")
            os.chmod(path, 0o640)
        shutil.chown(keys, "root", "_rspamd")
    return out


def main():
    req = json.load(sys.stdin)
    json.dump({"choose": choose, "extract": extract, "own": own, "state": state}[req["action"]](req),
              sys.stdout)


if __name__ == "__main__":
    main()
