"""65-sieve: the global sieve that files `X-Spam: Yes` into Junk, and learning
from the user's own Junk moves (IMAPSieve -> mailops-learn -> rspamd's
controller).  Scripts are installed compiled (sievec); dovecot's settings for
them are part of 40-dovecot's dovecot.conf, in the host's syntax."""
from __future__ import annotations

import dataclasses

from ..render import render
from ..resources import Directory, File, Resource, SieveScript
from ..resources.files import SecretFile, ValidatedFile

SIEVE_DIR = "/etc/dovecot/sieve"
BEFORE_DIR = f"{SIEVE_DIR}/before.d"
LEARN_DIR = f"{SIEVE_DIR}/learn"
PIPE_DIR = "/usr/local/lib/mailops/sieve-pipe"
PASSWORD_FILE = "/etc/mailops/learn-password"
LOG_DIR = "/var/log/mailops"
LEARN_LOG = f"{LOG_DIR}/learn.log"


@dataclasses.dataclass(frozen=True)
class SieveLayout:
    """What dovecot.conf needs to know of this step."""
    learn: bool
    timeout: int
    pipe_dir: str = PIPE_DIR
    spam_script: str = f"{LEARN_DIR}/learn-spam.sieve"
    ham_script: str = f"{LEARN_DIR}/learn-ham.sieve"


def mailops_logs() -> list[Resource]:
    """/var/log/mailops and its rotation: 65-sieve (the learn helper, as the mail user)
    and 80-backup both write there."""
    return [Directory(LOG_DIR, mode="0770", owner="root", group="vmail"),
            ValidatedFile("/etc/logrotate.d/mailops-logs",
                          render("etc/logrotate.d/mailops-logs.j2"),
                          validate=("logrotate", "--debug", "{}"))]


def layout(p) -> SieveLayout:
    return SieveLayout(learn=p.sieve.learn and p.rspamd.enabled, timeout=p.sieve.learn_timeout_s)


def declare(p, info) -> list[Resource]:
    lay = layout(p)
    out: list[Resource] = []
    if p.sieve.spam_to_junk:
        out.append(SieveScript(f"{BEFORE_DIR}/10-spam-to-junk.sieve",
                               render("etc/dovecot/sieve/spam-to-junk.sieve.j2")))
    if lay.learn:
        group = "vmail"          # the mail user runs the scripts and the helper
        out += [
            Directory(LEARN_DIR),
            SieveScript(lay.spam_script, render("etc/dovecot/sieve/learn-spam.sieve.j2")),
            SieveScript(lay.ham_script, render("etc/dovecot/sieve/learn-ham.sieve.j2")),
            Directory("/usr/local/lib/mailops"),
            Directory(PIPE_DIR),
            File(f"{PIPE_DIR}/mailops-learn",
                 render("usr/local/lib/mailops/sieve-pipe/mailops-learn.j2",
                        password_file=PASSWORD_FILE, log_file=LEARN_LOG, group=group,
                        timeout=lay.timeout), mode="0755"),
            Directory("/etc/mailops"),
            # the controller password, for the helper only (the controller keeps a hash)
            SecretFile(PASSWORD_FILE, mode="0640", group=group,
                       secret_ref=p.rspamd.controller_password, base_dir=p.base_dir),
            *mailops_logs(),
        ]
    return out
