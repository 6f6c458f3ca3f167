"""Secrets: referenced in parameters, read at run time, never shown.

A :class:`Secret` hides its value from ``repr``/``str`` (so notebook outputs,
logs and tracebacks show ``Secret('***')``); code that needs the value asks for
it with :meth:`Secret.reveal`.  A :class:`SecretRef` names where a secret lives:
``file:PATH`` (the whole file, stripped), ``file:PATH#key`` (a key of a YAML
mapping) or ``env:NAME``.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import yaml

_REF = re.compile(r"^(file:(?P<path>[^#]+)(#(?P<key>[A-Za-z0-9_.-]+))?|env:(?P<env>[A-Za-z_][A-Za-z0-9_]*))$")


class SecretError(ValueError):
    pass


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def check_ref(ref: str) -> str:
    if not _REF.fullmatch(ref):
        # the value is never repeated: a literal pasted here is the secret itself
        raise SecretError("must be a secret reference (file:PATH, file:PATH#key or env:NAME), "
                          "never the secret itself; the value is not shown")
    return ref


def resolve(ref: str, base: Path) -> Secret:
    """Read the secret a reference names; relative paths resolve against ``base``."""
    m = _REF.fullmatch(check_ref(ref))
    if m.group("env"):
        value = os.environ.get(m.group("env"))
        if value is None:
            raise SecretError(f"secret {ref}: environment variable is not set")
        return Secret(value)
    path = (base / m.group("path")).resolve()
    try:
        st = path.stat()
    except OSError as exc:
        raise SecretError(f"secret {ref}: cannot read {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"secret {ref}: {path} is readable by others "
                          f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
    text = path.read_text()
    if not m.group("key"):
        return Secret(text.strip())
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or m.group("key") not in data:
        raise SecretError(f"secret {ref}: key {m.group('key')!r} not found in {path}")
    return Secret(str(data[m.group("key")]))


def mask(text: str, secrets) -> str:
    """Replace every secret value that occurs in ``text`` by ``***``."""
    for s in secrets:
        value = s.reveal() if isinstance(s, Secret) else str(s)
        if value:
            text = text.replace(value, "***")
    return text
