"""The users database as resources: schema, domains, mailboxes, aliases, catch-alls.

Facts come from one read of the database (the ``userdb`` helper's ``dump``);
every write is one transaction on the server, values bound as parameters and
sent on stdin.  Provisioning only adds and updates: mailboxes, aliases and
domains that are not in the parameters are left alone (the management
notebooks own them), and a mailbox's password is set only when it is created.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

from mailops.core.passwords import choose_scheme, hash_password, parse_schemes
from mailops.remote import source
from mailops.core.secrets import Secret, resolve
from .base import Action, Change, FactError, Resource

DB_PATH = "/var/lib/mailops/users.sqlite"
DB_GROUP = "postfix"       # postfix's proxymap drops supplementary groups: the db is its group's
SCHEMA_VERSION = 2


def userdb(host, op: str, args: dict | None = None, *, db: str = DB_PATH,
           group: str = DB_GROUP) -> dict:
    """One request to the userdb helper on the server (input on stdin)."""
    req = json.dumps({"db": db, "group": group, "op": op, "args": args or {}}).encode()
    res = host.run(["python3", "-c", source("userdb"), "userdb", op], stdin=req, timeout=60)
    return json.loads(res.out)


def dump_command(db: str = DB_PATH) -> list[str]:
    return ["sh", "-c", 'printf \'{"db": "%s", "op": "dump"}\' "$1" | python3 -c "$2" userdb dump',
            "userdb_dump", db, source("userdb")]


def parse_dump(out: str) -> dict:
    """The dump's JSON -> lookup tables (pure)."""
    data = json.loads(out)
    return {
        "version": data["version"],
        "domains": {n: bool(a) for n, a in data.get("domains", [])},
        "mailboxes": {a: {"password": p, "active": bool(act), "quota_bytes": q}
                      for a, p, act, q in data.get("mailboxes", [])},
        "aliases": _group(data.get("aliases", [])),
        "catchall": dict(data.get("catchall", [])),
    }


def _group(pairs) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s, d in pairs:
        out.setdefault(s, set()).add(d)
    return out


class _DBResource(Resource):
    @classmethod
    def fact_commands(cls, items):
        return [dump_command()]

    @classmethod
    def parse_facts(cls, items, results):
        res = results[0]
        if not res.ok:
            # python3 is installed by this step: before that there is nothing to read
            if "python3" in res.err and "not found" in res.err:
                return parse_dump('{"version": 0}')
            raise FactError(f"reading the users database failed: {res.err.strip()[-300:]}")
        return parse_dump(res.out)


@dataclasses.dataclass(frozen=True)
class UsersDatabase(_DBResource):
    path: str = DB_PATH
    kind: ClassVar[str] = "users-db"

    @property
    def key(self):
        return self.path

    def compare(self, facts):
        v = facts["version"]
        if v == SCHEMA_VERSION:
            return []
        if v > SCHEMA_VERSION:
            raise FactError(f"{self.path} has schema {v}, newer than this mailops ({SCHEMA_VERSION})")
        return [Change(self, Action.CREATE if v == 0 else Action.UPDATE,
                       f"schema {v} -> {SCHEMA_VERSION}")]

    def apply(self, host, change):
        userdb(host, "migrate")


@dataclasses.dataclass(frozen=True)
class MailDomain(_DBResource):
    name: str
    kind: ClassVar[str] = "mail-domain"

    @property
    def key(self):
        return self.name

    def compare(self, facts):
        active = facts["domains"].get(self.name)
        if active is None:
            return [Change(self, Action.CREATE, "not in the users database")]
        return [] if active else [Change(self, Action.UPDATE, "inactive -> active")]

    def apply(self, host, change):
        userdb(host, "ensure_domain", {"name": self.name, "active": 1})


@dataclasses.dataclass(frozen=True)
class PasswordPolicy:
    scheme: str = "auto"
    sha512_rounds: int = 5000
    bcrypt_cost: int = 10


@dataclasses.dataclass(frozen=True)
class Mailbox(_DBResource):
    address: str
    password_ref: str = dataclasses.field(repr=False)   # read only when the mailbox is created
    base_dir: Path = dataclasses.field(default=Path("."), repr=False)
    quota_bytes: int = 0
    policy: PasswordPolicy = PasswordPolicy()
    kind: ClassVar[str] = "mailbox"

    @property
    def key(self):
        return self.address

    def compare(self, facts):
        found = facts["mailboxes"].get(self.address)
        if found is None:
            return [Change(self, Action.CREATE, "does not exist (initial password from secrets)")]
        diffs = []
        if found["quota_bytes"] != self.quota_bytes:
            diffs.append(f"quota {found['quota_bytes']} -> {self.quota_bytes} bytes")
        # active is the management commands' (a disabled mailbox stays disabled)
        return [Change(self, Action.UPDATE, "; ".join(diffs))] if diffs else []

    def apply(self, host, change):
        if change.action is Action.CREATE:
            hashed = hash_for_host(host, resolve(self.password_ref, self.base_dir), self.policy)
            userdb(host, "create_mailbox", {"address": self.address, "password": hashed,
                                            "active": 1, "quota_bytes": self.quota_bytes})
        else:
            userdb(host, "update_mailbox", {"address": self.address,
                                            "quota_bytes": self.quota_bytes})


def policy_of(params) -> PasswordPolicy:
    m = params.mail
    return PasswordPolicy(m.password_scheme, m.sha512_rounds, m.bcrypt_cost)


def scheme_for_host(host, policy: PasswordPolicy) -> str:
    """The policy's scheme, or the best the server's dovecot knows (``doveadm pw -l``)."""
    return choose_scheme(policy.scheme, parse_schemes(
        host.run(["doveadm", "pw", "-l"], check=False).out))


def hash_for_host(host, password: Secret, policy: PasswordPolicy) -> str:
    return hash_password(password, scheme_for_host(host, policy),
                         sha512_rounds=policy.sha512_rounds, bcrypt_cost=policy.bcrypt_cost)


@dataclasses.dataclass(frozen=True)
class MailAlias(_DBResource):
    source: str
    destinations: tuple[str, ...]
    kind: ClassVar[str] = "alias"

    @property
    def key(self):
        return self.source

    def compare(self, facts):
        found = facts["aliases"].get(self.source)
        wanted = set(self.destinations)
        if found == wanted:
            return []
        if found is None:
            return [Change(self, Action.CREATE, "-> " + ", ".join(sorted(wanted)))]
        return [Change(self, Action.UPDATE, f"{', '.join(sorted(found))} -> "
                                            f"{', '.join(sorted(wanted))}")]

    def apply(self, host, change):
        userdb(host, "set_alias", {"source": self.source, "destinations": sorted(self.destinations)})


@dataclasses.dataclass(frozen=True)
class CatchAll(_DBResource):
    domain: str
    destination: str
    kind: ClassVar[str] = "catch-all"

    @property
    def key(self):
        return "@" + self.domain

    def compare(self, facts):
        found = facts["catchall"].get(self.domain)
        if found == self.destination:
            return []
        return [Change(self, Action.CREATE if found is None else Action.UPDATE,
                       f"{found or 'none'} -> {self.destination}")]

    def apply(self, host, change):
        userdb(host, "set_catchall", {"domain": self.domain, "destination": self.destination})
