"""30-users-db: the users database, the single source of truth for domains,
mailboxes, aliases and catch-alls (sqlite, readable by postfix and dovecot only)."""
from __future__ import annotations

from mailops.core.resources import Directory, Packages, Resource
from mailops.core.resources.maildb import (DB_GROUP, DB_PATH, CatchAll, MailAlias, Mailbox,
    MailDomain, UsersDatabase, policy_of)

# python3 runs the database helper; doveadm (dovecot-core) knows the hash schemes;
# postfix owns the group the database is readable by
PACKAGES = ("python3", "sqlite3", "dovecot-core", "postfix", "postfix-sqlite")


def declare(p, info) -> list[Resource]:
    m = p.mail
    policy = policy_of(p)
    res: list[Resource] = [
        Packages(PACKAGES),
        Directory(DB_PATH.rsplit("/", 1)[0], mode="0750", owner="root", group=DB_GROUP),
        UsersDatabase(),
    ]
    res += [MailDomain(d) for d in p.mail_domains]
    res += [Mailbox(mb.address, mb.password, p.base_dir, mb.quota_mb * 1048576, policy)
            for mb in m.mailboxes]
    res += [MailAlias(a.source, tuple(a.destinations)) for a in m.aliases]
    res += [CatchAll(d, dest) for d, dest in sorted(m.catch_all.items())]
    return res
