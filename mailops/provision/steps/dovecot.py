"""40-dovecot: IMAPS, LMTP and SASL on TCP, ManageSieve, mdbox for virtual
users, quota, sieve; the syntax of the host's dovecot (2.3 or 2.4), detected."""
from __future__ import annotations

import dataclasses

from mailops.core.facts import dovecot_series
from mailops.core.layout import LOG_DIR, SIEVE_BEFORE, VHOSTS, sieve_layout, tls_paths
from mailops.core.render import render
from mailops.core.resources import Directory, File, Group, Packages, Resource, Service, User
from mailops.core.resources.maildb import DB_PATH
from .checks import dovecot_check
from .shared import Job, mailops_logs, scheduled

# every IMAP/ManageSieve session disconnected (68: there was none)
KICK = "doveadm kick '*' >/dev/null; rc=$?; [ $rc -eq 0 ] || [ $rc -eq 68 ]"
PURGE = "/usr/local/sbin/mailops-purge"
PURGE_LOG = f"{LOG_DIR}/purge.log"
QUOTA_WARNING = "/usr/local/sbin/mailops-quota-warning"
PACKAGES = ("dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "dovecot-sieve",
            "dovecot-managesieved", "dovecot-sqlite")


@dataclasses.dataclass(frozen=True)
class Vmail:
    uid_name: str = "vmail"
    gid_name: str = "vmail"
    home: str = VHOSTS


def smoke_command(p) -> tuple[str, ...]:
    """After a (re)load: a user lookup gives the right home, and LMTP accepts a
    recipient (no message is delivered)."""
    if not p.mail.mailboxes:
        return ()
    address = p.mail.mailboxes[0].address
    local, domain = address.split("@")
    return ("sh", "-c", SMOKE, "dovecot_smoke", address, f"{Vmail().home}/{domain}/{local}")


SMOKE = r"""set -e
home=$(doveadm user -f home "$1")
[ "$home" = "$2" ] || { echo "doveadm user $1: home is '$home', expected '$2'" >&2; exit 1; }
python3 - "$1" <<'PY'
import smtplib, sys
with smtplib.LMTP("127.0.0.1", 24, timeout=10) as c:
    c.ehlo("mailops-smoke")
    c.mail("<>")
    code, msg = c.rcpt(sys.argv[1])
    if code != 250:
        sys.exit(f"LMTP RCPT {sys.argv[1]}: {code} {msg.decode()}")
PY
"""


def declare(p, info) -> list[Resource]:
    series = dovecot_series(info)
    vmail = Vmail()
    # last IMAP login per user in redis, which rspamd's step installs
    ctx = dict(p=p, tls=tls_paths(p), vmail=vmail, db_path=DB_PATH, sieve_before=SIEVE_BEFORE,
               sieve=sieve_layout(p), quota_warning=QUOTA_WARNING, last_login=p.rspamd.enabled)
    files = [File("/etc/dovecot/dovecot.conf",
                  render(f"etc/dovecot/dovecot-{series}.conf.j2", **ctx), notify=("dovecot",))]
    if series == "2.3":
        files.append(File("/etc/dovecot/mailops-sql.conf.ext",
                          render("etc/dovecot/mailops-sql.conf.ext.j2", **ctx),
                          mode="0640", group="dovecot", notify=("dovecot",)))
    check = dovecot_check(series)
    return [
        Packages(PACKAGES),
        Group(vmail.gid_name),
        User(vmail.uid_name, vmail.gid_name, vmail.home),
        Directory(vmail.home, mode="0750", owner=vmail.uid_name, group=vmail.gid_name),
        Directory("/etc/dovecot/sieve"),
        Directory(SIEVE_BEFORE),
        *files,
        # shutdown_clients = no lets deliveries finish across a reload; IMAP sessions are
        # then disconnected, so clients log in again to the new configuration
        Service("dovecot", check=check, on_change="reload", verify=smoke_command(p),
                after_reload=("sh", "-c", KICK, "dovecot_kick")),
        # mdbox frees expunged mail's space only when purged: daily
        *mailops_logs(),
        Directory("/usr/local/sbin"),
        File(PURGE, render("usr/local/sbin/mailops-purge.j2", log=PURGE_LOG), mode="0755"),
        File(QUOTA_WARNING, render("usr/local/sbin/mailops-quota-warning.j2",
                                   vmail=vmail.uid_name, postmaster=p.postmaster),
             mode="0755"),        # run afresh at each warning: no reload
        *scheduled(Job("purge", "mailops mdbox purge (doveadm purge -A)", PURGE,
                       p.mail.purge_at), info),
    ]


