"""Where mailops keeps things on the server: the one place every step, helper
and check takes a shared path from (steps never import each other)."""
from __future__ import annotations

import dataclasses

LOG_DIR = "/var/log/mailops"            # the learn helper's and the backup's logs
TLS_DIR = "/etc/mailops/tls"
VHOSTS = "/var/mail/vhosts"             # mdbox homes: VHOSTS/<domain>/<user>

SIEVE_DIR = "/etc/dovecot/sieve"
SIEVE_BEFORE = f"{SIEVE_DIR}/before.d"  # global scripts run before each user's own
LEARN_DIR = f"{SIEVE_DIR}/learn"
PIPE_DIR = "/usr/local/lib/mailops/sieve-pipe"
LEARN_PASSWORD = "/etc/mailops/learn-password"
LEARN_LOG = f"{LOG_DIR}/learn.log"


def tls_paths(p) -> dict[str, str]:
    """The certificate and key files postfix and dovecot serve."""
    if p.tls.source == "files":
        return {"rsa_cert": p.tls.rsa_cert, "rsa_key": p.tls.rsa_key,
                "ec_cert": p.tls.ec_cert, "ec_key": p.tls.ec_key}
    return {f"{kind}_{part}": f"{TLS_DIR}/{kind}.{ext}" for kind in ("rsa", "ec")
            for part, ext in (("cert", "crt"), ("key", "key"))}


@dataclasses.dataclass(frozen=True)
class SieveLayout:
    """What dovecot.conf needs to know of the sieve step."""
    learn: bool
    timeout: int
    pipe_dir: str = PIPE_DIR
    spam_script: str = f"{LEARN_DIR}/learn-spam.sieve"
    ham_script: str = f"{LEARN_DIR}/learn-ham.sieve"


def sieve_layout(p) -> SieveLayout:
    return SieveLayout(learn=p.sieve.learn and p.rspamd.enabled, timeout=p.sieve.learn_timeout_s)


@dataclasses.dataclass(frozen=True)
class BackupPaths:
    conf_dir: str = "/etc/borgmatic/mailops"
    passphrase: str = "/etc/borgmatic/mailops/passphrase"
    ssh_key: str = "/etc/borgmatic/mailops/ssh_key"
    known_hosts: str = "/etc/borgmatic/mailops/known_hosts"
    config: str = "/etc/borgmatic/config.yaml"
    wrapper: str = "/usr/local/sbin/mailops-borg"
    run: str = "/usr/local/sbin/mailops-backup"
    prepare: str = "/usr/local/lib/mailops/backup-prepare"
    dumps: str = "/var/backups/mailops"
    log: str = f"{LOG_DIR}/backup.log"
    state: str = "/var/lib/mailops/backup-last.json"


BACKUP = BackupPaths()
