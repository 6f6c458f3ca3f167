"""The provisioning steps, in the order the runner takes them.

A step declares resources from the validated parameters and the host's facts;
its notebook (``notebooks/provisioning/<name>.ipynb``) plans, shows and applies them.
A step without ``declare`` only reads (00-connect).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from . import backup, base, dovecot, fail2ban, postfix, rspamd, sieve, tls, usersdb


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    title: str
    declare: Callable | None = None
    checks: bool = False        # a verify step: checks from outside, changes nothing
    dns: bool = False           # the DNS step: records at the zones' primary, not on the host

    @property
    def notebook(self) -> str:
        return f"{self.name}.ipynb"

    def resources(self, p, info) -> list:
        """The step's resources for these parameters: production's, plus what a lab
        host adds (mailops/lab/mode.py)."""
        if self.declare is None:
            return []
        from mailops.lab import mode as labmode
        return [*self.declare(p, info), *labmode.overlay(self.name, p, info)]


STEPS: tuple[Step, ...] = (
    Step("00-connect", "connect and inspect the host"),
    Step("10-base", "hostname, time zone, base packages, resolver, firewall", base.declare),
    Step("20-tls", "RSA and EC certificates for the mail host", tls.declare),
    Step("30-users-db", "users database: domains, mailboxes, aliases, catch-alls",
         usersdb.declare),
    Step("40-dovecot", "dovecot: IMAPS, LMTP, SASL, ManageSieve, quota, sieve", dovecot.declare),
    Step("50-postfix", "postfix: SMTP, submission, virtual domains, LMTP delivery",
         postfix.declare),
    Step("60-rspamd", "rspamd milter with redis, DKIM signing, controller", rspamd.declare),
    Step("65-sieve", "global sieve (X-Spam into Junk), learning from Junk moves", sieve.declare),
    Step("70-fail2ban", "fail2ban: IMAP, SMTP AUTH, rspamd rejects, recidive; nftables bans",
         fail2ban.declare),
    Step("80-backup", "borg backups by borgmatic, encrypted, to a repository host",
         backup.declare),
    Step("88-dns", "the DNS records published at the zones' primary (RFC 2136; dns.update)",
         dns=True),
    Step("90-verify", "the mail server checked from outside", checks=True),
)


def get_step(name: str) -> Step:
    for step in STEPS:
        if name in (step.name, step.name.split("-", 1)[1]):
            return step
    raise KeyError(f"no step {name!r}; steps: {', '.join(s.name for s in STEPS)}")
