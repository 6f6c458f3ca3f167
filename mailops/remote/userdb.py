"""The users database on the server: schema, migrations, reads and writes.

Runs on the target as `python3 -c <this file>` with one JSON request on stdin:
{"db": PATH, "group": GROUP, "op": NAME, "args": {...}}; prints one JSON reply.
Every write is one transaction (BEGIN IMMEDIATE, busy timeout), every value a
bound parameter.  Kept to the standard library: it runs on the server.
"""
import grp
import json
import os
import sqlite3
import sys

SCHEMA_VERSION = 2
MIGRATIONS = {
    1: """
    CREATE TABLE domains (
        name TEXT PRIMARY KEY,
        active INTEGER NOT NULL DEFAULT 1);
    CREATE TABLE mailboxes (
        address TEXT PRIMARY KEY,
        domain TEXT NOT NULL REFERENCES domains(name),
        local_part TEXT NOT NULL,
        password TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 1,
        quota_bytes INTEGER NOT NULL DEFAULT 0,
        updated TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')));
    CREATE TABLE aliases (
        source TEXT NOT NULL,
        destination TEXT NOT NULL,
        PRIMARY KEY (source, destination));
    CREATE TABLE catchall (
        domain TEXT PRIMARY KEY REFERENCES domains(name),
        destination TEXT NOT NULL);
    """,
    # when a mailbox was made (ALTER TABLE cannot take a non-constant default: the
    # helper's inserts set it; older rows take their last update as the best guess)
    2: """
    ALTER TABLE mailboxes ADD COLUMN created TEXT;
    UPDATE mailboxes SET created = updated WHERE created IS NULL;
    """,
}
NOW = "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')"
# the tables and columns apply_rows may touch (nothing else reaches SQL text)
TABLES = {
    "domains": (("name",), ("active",)),
    "mailboxes": (("address",), ("domain", "local_part", "password", "active", "quota_bytes")),
    "aliases": (("source", "destination"), ()),
    "catchall": (("domain",), ("destination",)),
}


def connect(path, group):
    new = not os.path.exists(path)
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 30000")
    db.execute("PRAGMA foreign_keys = ON")
    if new:
        gid = grp.getgrnam(group).gr_gid
        os.chown(path, 0, gid)
        os.chmod(path, 0o640)
    return db


def version(db):
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db):
    db.execute("BEGIN IMMEDIATE")
    try:
        v = version(db)
        for target in range(v + 1, SCHEMA_VERSION + 1):
            # statement by statement: executescript would commit the transaction
            for statement in MIGRATIONS[target].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {target}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return {"from": v, "to": SCHEMA_VERSION}


def _read(db, mailbox_columns):
    rows = lambda q: [list(r) for r in db.execute(q)]  # noqa: E731
    return {
        "version": version(db),
        "domains": rows("SELECT name, active FROM domains ORDER BY name"),
        "mailboxes": rows(f"SELECT {mailbox_columns} FROM mailboxes ORDER BY address"),
        "aliases": rows("SELECT source, destination FROM aliases ORDER BY source, destination"),
        "catchall": rows("SELECT domain, destination FROM catchall ORDER BY domain"),
    }


def dump(db):
    """Everything, hashes too (provisioning compares against it)."""
    if version(db) == 0:
        return {"version": 0}
    return _read(db, "address, password, active, quota_bytes")


def snapshot(db):
    """Everything but the password hashes (listing 10,000 mailboxes ships no hash)."""
    if version(db) < 2:
        return {"version": version(db)}
    return _read(db, "address, active, quota_bytes, created")


class Conflict(Exception):
    pass


def apply_rows(db, rows):
    """Row changes planned from a snapshot, in one transaction: each row must still be
    as the plan saw it (an insert: absent; an update or delete: present, with the
    planned values), or nothing is written."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for r in rows:
            keys, cols = TABLES[r["table"]]
            key = r["key"]
            if sorted(key) != sorted(keys):
                raise Conflict(f"{r['table']}: key must be {keys}")
            where = " AND ".join(f"{k} = ?" for k in keys)
            args = [key[k] for k in keys]
            seen = cols and ", ".join(c for c in cols if c != "password")
            cur = db.execute(f"SELECT {seen or '1'} FROM {r['table']} WHERE {where}",
                             args).fetchone()
            if r["op"] == "insert":
                if cur is not None:
                    raise Conflict(f"{r['table']} {key}: exists already")
                values = {**key, **r["after"]}
                names = [n for n in keys + cols if n in values]
                marks = ["?"] * len(names)
                if r["table"] == "mailboxes":
                    names, marks = names + ["created"], marks + [NOW]
                db.execute(f"INSERT INTO {r['table']} ({', '.join(names)}) VALUES "
                           f"({', '.join(marks)})", [values[n] for n in names if n != "created"])
                continue
            if cur is None:
                raise Conflict(f"{r['table']} {key}: no longer exists")
            before = dict(zip([c for c in cols if c != "password"], cur)) if seen else {}
            for c, v in (r.get("before") or {}).items():
                if c in before and before[c] != v:
                    raise Conflict(f"{r['table']} {key}: {c} is {before[c]!r} now, "
                                   f"planned from {v!r}")
            if r["op"] == "delete":
                db.execute(f"DELETE FROM {r['table']} WHERE {where}", args)
            elif r["op"] == "update":
                sets = [c for c in r["after"] if c in cols]
                extra = ", updated = " + NOW if r["table"] == "mailboxes" else ""
                db.execute(f"UPDATE {r['table']} SET {', '.join(c + ' = ?' for c in sets)}"
                           f"{extra} WHERE {where}", [r["after"][c] for c in sets] + args)
            else:
                raise Conflict(f"unknown row operation {r['op']!r}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return {"rows": len(rows)}


def write(db, statements):
    """Several statements in one transaction; all or nothing."""
    db.execute("BEGIN IMMEDIATE")
    try:
        counts = [db.execute(sql, params).rowcount for sql, params in statements]
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return {"rows": counts}


OPS = {
    "ensure_domain": lambda a: [(
        "INSERT INTO domains (name, active) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET active = excluded.active", [a["name"], a["active"]])],
    "create_mailbox": lambda a: [(
        "INSERT INTO mailboxes (address, domain, local_part, password, active, quota_bytes, "
        "created) VALUES (?, ?, ?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
        [a["address"], a["address"].split("@")[1], a["address"].split("@")[0], a["password"],
         a["active"], a["quota_bytes"]])],
    "update_mailbox": lambda a: [(
        "UPDATE mailboxes SET quota_bytes = ?, "
        "updated = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE address = ?",
        [a["quota_bytes"], a["address"]])],
    "set_password": lambda a: [(
        "UPDATE mailboxes SET password = ?, updated = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') "
        "WHERE address = ?", [a["password"], a["address"]])],
    "set_alias": lambda a: [("DELETE FROM aliases WHERE source = ?", [a["source"]])] + [
        ("INSERT INTO aliases (source, destination) VALUES (?, ?)", [a["source"], d])
        for d in a["destinations"]],
    "delete_alias": lambda a: [("DELETE FROM aliases WHERE source = ?", [a["source"]])],
    "set_catchall": lambda a: [(
        "INSERT INTO catchall (domain, destination) VALUES (?, ?) "
        "ON CONFLICT(domain) DO UPDATE SET destination = excluded.destination",
        [a["domain"], a["destination"]])],
}


def handle(db, op, args):
    if op == "dump":
        return dump(db)
    if op == "snapshot":
        return snapshot(db)
    if op == "migrate":
        return migrate(db)
    if version(db) != SCHEMA_VERSION:
        raise SystemExit(f"users database at schema {version(db)}, expected {SCHEMA_VERSION}: "
                         "run 30-users-db first")
    if op == "apply_rows":
        try:
            return apply_rows(db, args["rows"])
        except Conflict as exc:
            raise SystemExit(f"nothing written: {exc} (changed since the plan was made: "
                             "plan again)") from None
    reply = write(db, OPS[op](args))
    if (op.endswith("mailbox") or op == "set_password") and reply["rows"] != [1]:
        raise SystemExit(f"{op} {args.get('address')}: {reply['rows'][0]} rows changed")
    return reply


def main():
    req = json.load(sys.stdin)
    if req["op"] in ("dump", "snapshot") and not os.path.exists(req["db"]):
        json.dump({"version": 0, "exists": False}, sys.stdout)   # reading never creates
        return
    db = connect(req["db"], req.get("group", "root"))
    json.dump(handle(db, req["op"], req.get("args", {})), sys.stdout)


main()
