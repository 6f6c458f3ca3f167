"""Restore drill and mailbox restore, on the server (stdlib only).

Input (JSON on stdin): {"action": "drill"|"restore", "archive": NAME or "",
"scratch_parent": DIR, "vhosts": DIR, "series": "2.3"|"2.4", "user": ADDRESS (restore)}.
Output: JSON.  Messages are compared by (folder, GUID) and the SHA-256 of their
full text, as doveadm fetches them from the live store and from the restored one.
The archive is extracted into a new private directory (mkdtemp) under
``scratch_parent``, on the mail store's filesystem, so a restored mailbox is
renamed into place with its owners as archived; it is removed afterwards.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BORG = "/usr/local/sbin/mailops-borg"


def run(argv, **kw):
    p = subprocess.run(argv, capture_output=True, **kw)
    # doveadm can log an error (e.g. a store it cannot read) and still exit 0
    if p.returncode != 0 or (argv[0] == "doveadm" and b" Error: " in p.stderr):
        sys.exit(f"{' '.join(argv[:4])} exited {p.returncode}: "
                 f"{p.stderr.decode(errors='replace').strip()[-600:]}")
    return p.stdout


def users():
    return [u for u in run(["doveadm", "user", "*"]).decode().split() if "@" in u]


def home_of(vhosts, user):
    local, domain = user.split("@", 1)
    return f"{vhosts}/{domain}/{local}"


def messages(user, series, mdbox=None):
    """{(folder, guid): (sha256, saved)} of a mailbox, live or at ``mdbox``."""
    argv = ["doveadm"]
    if mdbox:
        argv += ["-o", f"mail_location=mdbox:{mdbox}"] if series == "2.3" else \
                ["-o", f"mail_path={mdbox}"]
    argv += ["-f", "pager", "fetch", "-u", user, FETCH_FIELDS, "ALL"]
    return parse_fetch(run(argv))


FETCH_FIELDS = "mailbox guid date.saved text"


def parse_fetch(out):
    """``doveadm -f pager fetch`` of FETCH_FIELDS (records end in a form feed, ``text``
    last) -> {(folder, guid): (sha256 of the text, date saved)} (pure)."""
    found = {}
    for record in out.split(b"\x0c\n"):
        head, sep, text = record.partition(b"\ntext:\n")
        if not sep:
            continue
        fields = dict(line.split(": ", 1) for line in head.decode(errors="replace").split("\n")
                      if ": " in line)
        found[(fields["mailbox"], fields["guid"])] = (hashlib.sha256(text).hexdigest(),
                                                      fields.get("date.saved", ""))
    return found


def latest():
    name = run([BORG, "list", "--last", "1", "--short"]).decode().strip()
    if not name:
        sys.exit("the repository holds no archive")
    return name


def archive_time(name):
    info = json.loads(run([BORG, "info", "--json", f"::{name}"]))
    return info["archives"][0]["start"][:19].replace("T", " ")


def make_scratch(parent):
    """A new private directory for one run (never a fixed, guessable path)."""
    scratch = tempfile.mkdtemp(prefix=".mailops-restore-", dir=parent)
    shutil.chown(scratch, "root", "vmail")     # doveadm reads the restored store as vmail
    os.chmod(scratch, 0o750)
    return scratch


def move_into_place(src, dst):
    """Rename (same filesystem: owners and modes kept as archived); across
    filesystems copy with every file's owner kept, then remove the source."""
    try:
        os.rename(src, dst)
        return
    except OSError as exc:
        if exc.errno != 18:           # EXDEV
            raise
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
    for top, dirs, files in os.walk(src):
        for n in [""] + dirs + files:
            s = os.path.join(top, n) if n else top
            st = os.lstat(s)
            os.lchown(os.path.join(dst, os.path.relpath(s, src)), st.st_uid, st.st_gid)
    shutil.rmtree(src)


def extract(scratch, name, paths):
    run([BORG, "extract", f"::{name}", *[p.lstrip("/") for p in paths]], cwd=scratch)
    # borg makes the parents it did not archive 0700: let vmail through them
    for p in paths:
        parts = p.strip("/").split("/")
        for i in range(1, len(parts)):
            d = os.path.join(scratch, *parts[:i])
            if os.path.isdir(d) and os.stat(d).st_uid == 0:
                os.chmod(d, 0o755)


def compare(user, series, scratch, vhosts, saved_before):
    home = home_of(vhosts, user)
    restored_home = scratch + home
    live = messages(user, series) if os.path.isdir(home) else {}
    restored = messages(user, series, restored_home + "/mdbox") \
        if os.path.isdir(restored_home + "/mdbox") else {}
    return {"user": user, **diff(live, restored, saved_before)}


def diff(live, restored, saved_before):
    """Compare {(folder, guid): (sha256, saved)} maps (pure).  Times are whole seconds:
    a message saved in the second the archive started may have come after borg read its
    folder (under mail it does), so it counts as newer than the backup, not missing."""
    differ = sorted(k for k in live.keys() & restored.keys() if live[k][0] != restored[k][0])
    missing = sorted(k for k in live.keys() - restored.keys() if live[k][1] < saved_before)
    newer = sorted(k for k in live.keys() - restored.keys() if live[k][1] >= saved_before)
    gone = sorted(restored.keys() - live.keys())
    return {"live": len(live), "restored": len(restored), "identical":
            len(live.keys() & restored.keys()) - len(differ),
            "differ": [list(k) for k in differ], "missing_from_backup": [list(k) for k in missing],
            "newer_than_backup": len(newer), "deleted_since_backup": [list(k) for k in gone]}


def drill(req):
    name = req["archive"] or latest()
    started = time.monotonic()
    extract(req["scratch"], name, [req["vhosts"]])
    saved_before = archive_time(name)
    per_user = [compare(u, req["series"], req["scratch"], req["vhosts"], saved_before)
                for u in users()]
    return {"archive": name, "archive_time": saved_before, "users": per_user,
            "seconds": round(time.monotonic() - started, 2)}


def restore(req):
    user = req["user"]
    if user not in users():
        sys.exit(f"{user} is not a mailbox in the users database")
    name = req["archive"] or latest()
    home = home_of(req["vhosts"], user)
    extract(req["scratch"], name, [home])
    restored = req["scratch"] + home
    if not os.path.isdir(restored + "/mdbox"):
        sys.exit(f"archive {name} holds no mailbox for {user}")
    live = messages(user, req["series"]) if os.path.isdir(home + "/mdbox") else {}
    subprocess.run(["doveadm", "kick", user], capture_output=True)
    if not live:
        # the mailbox is gone or empty: put the archived one back as it was
        if os.path.exists(home):
            os.rename(home, f"{home}.before-restore-{int(time.time())}")
        os.makedirs(os.path.dirname(home), exist_ok=True)
        move_into_place(restored, home)
        mode = "replaced"
    else:
        # messages are there: add the archived ones beside them, never over them
        folder = f"Restored/{name}"
        src = (f"mdbox:{restored}/mdbox")
        run(["doveadm", "import", "-u", user, "-s", src, folder, "all"])
        mode = f"imported into {folder}"
    return {"archive": name, "user": user, "mode": mode,
            "messages": len(messages(user, req["series"]))}


def main():
    req = json.load(sys.stdin)
    req["scratch"] = make_scratch(req["scratch_parent"])
    try:
        result = {"drill": drill, "restore": restore}[req["action"]](req)
    finally:
        # no copy of anyone's mail is left behind in the scratch directory
        shutil.rmtree(req["scratch"], ignore_errors=True)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
