"""Password hashes, made on the controller with a deliberate cost.

The plain password never leaves this process except as its hash, sent to the
server on stdin.  ``auto`` picks BLF-CRYPT (bcrypt) when the server's dovecot
lists it, else SHA512-CRYPT with the configured rounds.
"""
from __future__ import annotations

from passlib.hash import bcrypt, sha512_crypt

from .secrets import Secret


def choose_scheme(wanted: str, supported: set[str]) -> str:
    if wanted != "auto":
        if supported and wanted not in supported:
            raise ValueError(f"the server's dovecot does not support {wanted}; "
                             f"it supports: {', '.join(sorted(supported))}")
        return wanted
    return "BLF-CRYPT" if "BLF-CRYPT" in supported else "SHA512-CRYPT"


def parse_schemes(doveadm_pw_l: str) -> set[str]:
    """``doveadm pw -l`` output -> the set of schemes (pure)."""
    return set(doveadm_pw_l.split())


def hash_password(password: Secret, scheme: str, *, sha512_rounds: int = 5000,
                  bcrypt_cost: int = 10) -> str:
    value = password.reveal()
    if not value or len(value) < 8:
        raise ValueError("passwords must have at least 8 characters")
    if scheme == "BLF-CRYPT":
        return "{BLF-CRYPT}" + bcrypt.using(rounds=bcrypt_cost, ident="2y").hash(value)
    if scheme == "SHA512-CRYPT":
        return "{SHA512-CRYPT}" + sha512_crypt.using(rounds=sha512_rounds).hash(value)
    raise ValueError(f"unsupported password scheme {scheme!r}")


def verify_password(password: Secret, stored: str) -> bool:
    scheme, _, h = stored.partition("}")
    handler = {"{BLF-CRYPT": bcrypt, "{SHA512-CRYPT": sha512_crypt}.get(scheme)
    return bool(handler) and handler.verify(password.reveal(), h)
