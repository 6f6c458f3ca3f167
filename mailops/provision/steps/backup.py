"""80-backup: encrypted, deduplicated backups with borg, run by borgmatic (its
1.7 sectioned or 1.8+ flat configuration, from the installed version), over SSH
to a repository host whose key is checked.  Sources: mail, the users database,
fail2ban's and redis' state (consistent copies made before each run) and /etc.
Daily by a systemd timer where systemd runs, by cron otherwise."""
from __future__ import annotations

import re
import shlex

from mailops.core.facts import borgmatic_series
from mailops.core.layout import BACKUP, VHOSTS
from mailops.core.render import render
from mailops.core.resources import Directory, File, Packages, Resource
from mailops.core.resources.borg import BorgKeyCopy, BorgRepository
from mailops.core.resources.files import CopiedFile, SecretFile, ValidatedFile
from mailops.core.resources.maildb import DB_PATH
from .shared import Job, mailops_logs, scheduled

PATHS = BACKUP
SOURCES = ("/etc", VHOSTS, "/var/lib/rspamd/dkim", PATHS.dumps)
EXCLUDES = (PATHS.conf_dir,)      # the repository's own key and passphrase stay out of it


def flat(series: str) -> bool:
    major, minor = (int(x) for x in series.split("."))
    return (major, minor) >= (1, 8)


def ssh_command(b) -> str:
    host_port = b.repository.split("@", 1)[1].split("/", 1)[0]
    port = host_port.rsplit(":", 1)[1] if re.search(r":\d+$", host_port) else "22"
    return shlex.join(["ssh", "-i", PATHS.ssh_key, "-o", f"UserKnownHostsFile={PATHS.known_hosts}",
                       "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                       "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=15", "-p", port])


def declare(p, info) -> list[Resource]:
    b = p.backup
    if not b.enabled:
        return []
    series = borgmatic_series(info)
    systemd = info.init == "systemd"
    ctx = dict(b=b, paths=PATHS, sources=SOURCES, excludes=EXCLUDES, ssh_command=ssh_command(b),
               series=series, users_db=DB_PATH)
    validate = (("validate-borgmatic-config", "-c", "{}") if not flat(series)
                else ("borgmatic", "config", "validate", "-c", "{}"))
    out: list[Resource] = [
        Packages(("borgbackup", "borgmatic", "sqlite3", "openssh-client",
                  *(() if systemd else ("cron",)))),
        Directory("/etc/borgmatic", mode="0700"),
        Directory(PATHS.conf_dir, mode="0700"),
        SecretFile(PATHS.passphrase, mode="0600", secret_ref=b.passphrase, base_dir=p.base_dir),
        SecretFile(PATHS.ssh_key, mode="0600", secret_ref=b.ssh_key, base_dir=p.base_dir),
        CopiedFile(PATHS.known_hosts, source=p.path(b.known_hosts)),
        Directory("/usr/local/lib/mailops"),
        File(PATHS.prepare, render("usr/local/lib/mailops/backup-prepare.j2", **ctx), mode="0755"),
        File(PATHS.wrapper, render("usr/local/sbin/mailops-borg.j2", **ctx), mode="0755"),
        File(PATHS.run, render("usr/local/sbin/mailops-backup.j2", **ctx), mode="0755"),
        *mailops_logs(),
        ValidatedFile(PATHS.config, render(f"etc/borgmatic/config-{'flat' if flat(series) else '1.7'}"
                                           ".yaml.j2", **ctx), mode="0600", validate=validate),
        BorgRepository(b.repository, PATHS.wrapper, PATHS.run, PATHS.state, PATHS.log, VHOSTS),
        BorgKeyCopy(p.path(b.key_copy), PATHS.wrapper, b.repository),
    ]
    out += scheduled(Job("backup", "mailops backup (borgmatic)", PATHS.run, b.at, network=True),
                     info)
    return out
