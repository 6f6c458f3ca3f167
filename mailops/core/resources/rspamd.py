"""rspamd's secrets on the server: the controller password (hashed) and DKIM keys.

Both are made once and kept: a changed controller secret is applied by
``mailops.manage.users``-style management, like a mailbox password; a DKIM key is
rotated on purpose, never by a re-run.
"""
from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import ClassVar

from mailops.remote import source
from mailops.core.secrets import resolve
from .base import Action, Change
from .files import _PathResource

PASSWORD_FILE = "/etc/rspamd/mailops/controller-password.inc"
DKIM_DIR = "/var/lib/rspamd/dkim"


@dataclasses.dataclass(frozen=True)
class ControllerPassword(_PathResource):
    password_ref: str = dataclasses.field(repr=False)
    base_dir: Path = dataclasses.field(default=Path("."), repr=False)
    path: str = PASSWORD_FILE
    kind: ClassVar[str] = "rspamd-password"
    notify: tuple[str, ...] = ("rspamd",)

    def compare(self, facts):
        fact = facts[self.path]
        if fact.kind == "file" and fact.content.startswith(b"password = \"$") \
                and (fact.mode, fact.group) == (0o640, "_rspamd"):
            return []
        return [Change(self, Action.CREATE, "no hashed controller password yet")]

    def apply(self, host, change):
        secret = resolve(self.password_ref, self.base_dir)
        hashed = host.run(["python3", "-c", source("rspamd_pw"), "rspamd_pw"],
                          stdin=secret.reveal().encode() + b"\n").out.strip()
        host.write_file(self.path, f'password = "{hashed}";\n'.encode(), mode="0640",
                        owner="root", group="_rspamd")


@dataclasses.dataclass(frozen=True)
class DkimKey(_PathResource):
    domain: str
    selector: str
    kind: ClassVar[str] = "dkim-key"
    notify: tuple[str, ...] = ("rspamd",)

    @property
    def path(self) -> str:
        return f"{DKIM_DIR}/{self.domain}.{self.selector}.key"

    def compare(self, facts):
        fact = facts[self.path]
        if fact.kind == "file":
            return []
        return [Change(self, Action.CREATE, f"no key for {self.selector}._domainkey.{self.domain}; "
                                            "the DNS record is shown after apply")]

    def apply(self, host, change):
        host.run(["rspamadm", "dkim_keygen", "-b", "2048", "-d", self.domain, "-s",
                  self.selector, "-k", self.path], timeout=60)
        host.run(["chown", "root:_rspamd", self.path])
        host.run(["chmod", "0640", self.path])


def dkim_record(host, domain: str, selector: str) -> str:
    """The TXT record to publish at <selector>._domainkey.<domain>."""
    pub = host.run(["openssl", "pkey", "-in", f"{DKIM_DIR}/{domain}.{selector}.key",
                    "-pubout", "-outform", "DER"]).stdout
    return f"v=DKIM1; k=rsa; p={base64.b64encode(pub).decode()}"
