"""50-postfix: inbound on 25 with STARTTLS, submission on 587 and 465 with
dovecot SASL, virtual domains from the users database, delivery over LMTP."""
from __future__ import annotations

from mailops.core.layout import tls_paths
from mailops.core.render import render
from mailops.core.resources import Directory, File, Packages, Resource, Service
from mailops.core.resources.maildb import DB_PATH
from .checks import POSTFIX_CHECK

PACKAGES = ("postfix", "postfix-sqlite")

MAPS = ("domains", "mailboxes", "aliases", "sender-login")

def declare(p, info) -> list[Resource]:
    ctx = dict(p=p, tls=tls_paths(p), db_path=DB_PATH)
    res: list[Resource] = [Packages(PACKAGES), Directory("/etc/postfix/sqlite")]
    res += [File(f"/etc/postfix/sqlite/{m}.cf", render(f"etc/postfix/sqlite/{m}.cf.j2", **ctx),
                 mode="0640", group="postfix", notify=("postfix",)) for m in MAPS]
    res += [File("/etc/postfix/main.cf", render("etc/postfix/main.cf.j2", **ctx),
                 notify=("postfix",)),
            File("/etc/postfix/master.cf", render("etc/postfix/master.cf.j2", **ctx),
                 notify=("postfix",)),
            Service("postfix", check=POSTFIX_CHECK, on_change="reload")]
    return res
