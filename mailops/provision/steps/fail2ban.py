"""70-fail2ban: jails against password guessing (dovecot IMAP/ManageSieve,
postfix SASL on 25/465/587), against senders rspamd keeps refusing, and a
recidive jail; bans are nftables rules; ban history in fail2ban's sqlite kept
for the analysis notebooks.  No jail without its log (it would stop fail2ban)."""
from __future__ import annotations

from mailops.core.render import render
from mailops.core.resources import File, Packages, Resource, Service

LOG_FILE = "/var/log/fail2ban.log"
DB_FILE = "/var/lib/fail2ban/fail2ban.sqlite3"
DOVECOT_LOG = "/var/log/dovecot.log"
POSTFIX_LOG = "/var/log/postfix.log"
FILTERS = ("mailops-dovecot", "mailops-rspamd")


def jails(p, info=None) -> list[str]:
    names = ["dovecot", "postfix-sasl", "rspamd", "recidive"]
    if not p.rspamd.enabled:
        names.remove("rspamd")
    if sshd_mode(p, info) != "off":
        names.insert(0, "sshd")
    return names


def sshd_mode(p, info) -> str:
    """off, journal (systemd) or file (/var/log/auth.log)."""
    mode = p.fail2ban.sshd
    systemd = info is not None and info.init == "systemd"
    if mode == "off" or (mode == "auto" and not systemd):
        return "off"
    return "journal" if systemd else "file"


# after a (re)load: the server answers and runs every jail it should
READY = r"""want="$*"
for i in $(seq 1 60); do
  if got=$(fail2ban-client status 2>/dev/null); then
    missing=""
    for j in $want; do
      printf '%s\n' "$got" | grep -qE "Jail list:.*(\s|,)$j(,|\s|$)" || missing="$missing $j"
    done
    [ -z "$missing" ] && exit 0
  fi
  sleep 0.5
done
echo "fail2ban is not running every jail; missing:${missing:- all (no answer)}" >&2
tail -n 5 /var/log/fail2ban.log >&2
exit 1
"""


def declare(p, info) -> list[Resource]:
    f = p.fail2ban
    if not f.enabled:
        return []
    ctx = dict(f=f, log_file=LOG_FILE, dovecot_log=DOVECOT_LOG, postfix_log=POSTFIX_LOG,
               sshd=sshd_mode(p, info), rspamd=p.rspamd.enabled)
    files = [File("/etc/fail2ban/fail2ban.local", render("etc/fail2ban/fail2ban.local.j2", **ctx),
                  notify=("fail2ban",)),
             File("/etc/fail2ban/jail.local", render("etc/fail2ban/jail.local.j2", **ctx),
                  notify=("fail2ban",))]
    for name in FILTERS:
        if name == "mailops-rspamd" and not p.rspamd.enabled:
            continue
        files.append(File(f"/etc/fail2ban/filter.d/{name}.conf",
                          render(f"etc/fail2ban/filter.d/{name}.conf.j2"), notify=("fail2ban",)))
    # the journal backend needs python3-systemd (only recommended by Debian's fail2ban:
    # without it the sshd jail stops fail2ban from starting, and --test does not see it)
    journal = ("python3-systemd",) if ctx["sshd"] == "journal" else ()
    return [
        Packages(("fail2ban", "nftables", "sqlite3", *journal)),
        *files,
        Service("fail2ban", check=("fail2ban-client", "--test"), on_change="reload",
                verify=("sh", "-c", READY, "fail2ban_ready", *jails(p, info))),
    ]

