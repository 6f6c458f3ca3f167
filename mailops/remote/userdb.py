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

SCHEMA_VERSION = 1
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


def dump(db):
    v = version(db)
    if v == 0:
        return {"version": 0}
    rows = lambda q: [list(r) for r in db.execute(q)]  # noqa: E731
    return {
        "version": v,
        "domains": rows("SELECT name, active FROM domains ORDER BY name"),
        "mailboxes": rows("SELECT address, password, active, quota_bytes FROM mailboxes "
                          "ORDER BY address"),
        "aliases": rows("SELECT source, destination FROM aliases ORDER BY source, destination"),
        "catchall": rows("SELECT domain, destination FROM catchall ORDER BY domain"),
    }


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
        "INSERT INTO mailboxes (address, domain, local_part, password, active, quota_bytes) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [a["address"], a["address"].split("@")[1], a["address"].split("@")[0], a["password"],
         a["active"], a["quota_bytes"]])],
    "update_mailbox": lambda a: [(
        "UPDATE mailboxes SET active = ?, quota_bytes = ?, "
        "updated = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') WHERE address = ?",
        [a["active"], a["quota_bytes"], a["address"]])],
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


def main():
    req = json.load(sys.stdin)
    if req["op"] == "dump" and not os.path.exists(req["db"]):
        json.dump({"version": 0, "exists": False}, sys.stdout)   # reading never creates
        return
    db = connect(req["db"], req.get("group", "root"))
    op, args = req["op"], req.get("args", {})
    if op == "dump":
        reply = dump(db)
    elif op == "migrate":
        reply = migrate(db)
    else:
        if version(db) != SCHEMA_VERSION:
            raise SystemExit(f"users database at schema {version(db)}, expected {SCHEMA_VERSION}")
        reply = write(db, OPS[op](args))
        if op.endswith("mailbox") or op == "set_password":
            if reply["rows"] != [1]:
                raise SystemExit(f"{op} {args.get('address')}: {reply['rows'][0]} rows changed")
    json.dump(reply, sys.stdout)


main()
