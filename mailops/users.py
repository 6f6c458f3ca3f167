"""Managing mail users on a running server (the management notebooks' API).

Every write goes through the users database helper (one transaction, bound
parameters, input on stdin).  A password change flushes that user's entry in
dovecot's auth cache, so the new password works at once and the old one stops.
"""
from __future__ import annotations

import time

from .params import _address
from .resources.maildb import PasswordPolicy, hash_for_host, userdb
from .secrets import Secret


def policy_of(params) -> PasswordPolicy:
    m = params.mail
    return PasswordPolicy(m.password_scheme, m.sha512_rounds, m.bcrypt_cost)


def set_password(session, address: str, password: Secret) -> float:
    """Set a mailbox's password; returns the seconds until it was live."""
    _address(address)
    start = time.monotonic()
    hashed = hash_for_host(session.host, password, policy_of(session.params))
    userdb(session.host, "set_password", {"address": address, "password": hashed})
    session.host.run(["doveadm", "auth", "cache", "flush", address])
    return time.monotonic() - start


def list_mailboxes(session) -> list[dict]:
    """Address, active and quota of every mailbox (never the hashes)."""
    data = userdb(session.host, "dump")
    return [{"address": a, "active": bool(act), "quota_bytes": q}
            for a, _pw, act, q in data.get("mailboxes", [])]
