"""65-sieve: the global sieve that files `X-Spam: Yes` into Junk, and learning
from the user's own Junk moves (IMAPSieve -> mailops-learn -> rspamd's
controller).  Scripts are installed compiled (sievec); dovecot's settings for
them are part of 40-dovecot's dovecot.conf, in the host's syntax."""
from __future__ import annotations

from mailops.core.layout import (LEARN_DIR, LEARN_LOG, LEARN_PASSWORD, PIPE_DIR, SIEVE_BEFORE,
    sieve_layout)
from mailops.core.render import render
from mailops.core.resources import Directory, File, Resource, SieveScript
from mailops.core.resources.files import SecretFile
from .shared import mailops_logs

def declare(p, info) -> list[Resource]:
    lay = sieve_layout(p)
    out: list[Resource] = []
    if p.sieve.spam_to_junk:
        out.append(SieveScript(f"{SIEVE_BEFORE}/10-spam-to-junk.sieve",
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
                        password_file=LEARN_PASSWORD, log_file=LEARN_LOG, group=group,
                        timeout=lay.timeout), mode="0755"),
            Directory("/etc/mailops"),
            # the controller password, for the helper only (the controller keeps a hash)
            SecretFile(LEARN_PASSWORD, mode="0640", group=group,
                       secret_ref=p.rspamd.controller_password, base_dir=p.base_dir),
            *mailops_logs(),
        ]
    return out
