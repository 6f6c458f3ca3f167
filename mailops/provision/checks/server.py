"""What only the server can tell: learning, fail2ban, the last backup, pending
updates, sshd's password logins."""
from __future__ import annotations

import time

from .result import require


def learning(host) -> str:
    from mailops.provision import learning as learn
    stat = learn.check_credentials(host)          # as the mail user, as dovecot runs it
    counts = learn.counters(host)
    events = learn.events(host)
    failed = [e for e in events if e.outcome == "failed"]
    last = events[-1] if events else None
    require(last is None or last.outcome != "failed",
            f"the last learn failed ({last.time}, {last.kind}, status {last.status}: "
            f"{last.detail}); {len(failed)} of the last {len(events)} failed" if last else "")
    return (f"learned spam {counts['spam']}, ham {counts['ham']} (rspamd: {stat.get('learned')} "
            f"learned in all); last {len(events)} learn calls: {len(failed)} failed")


def fail2ban(session, params) -> str:
    from mailops.provision.steps import fail2ban as f2b
    host = session.host
    want = f2b.jails(params, session.info)
    status = host.run(["fail2ban-client", "status"]).out
    running = [j.strip() for j in status.split("Jail list:", 1)[1].split(",")] \
        if "Jail list:" in status else []
    missing = [j for j in want if j not in running]
    require(not missing, f"jails not running: {', '.join(missing)} "
                         f"(running: {', '.join(running)})")
    # fail2ban writes its database while we read: wait for its lock, never take one
    counts = host.run(["sqlite3", "-readonly", "-cmd", ".timeout 10000", f2b.DB_FILE, "SELECT count(*), count(DISTINCT ip), "
                       "coalesce(min(timeofban), 0) FROM bans; SELECT count(*) FROM bans "
                       "WHERE timeofban + bantime > strftime('%s','now') OR bantime < 0"]).out.split()
    total, ips, first = counts[0].split("|")
    since = time.strftime("%Y-%m-%d", time.gmtime(int(first))) if int(first) else "-"
    return (f"jails running: {', '.join(want)}; banned now: {counts[1]}; "
            f"history: {total} bans of {ips} addresses since {since}")


def judge_backup(run: dict | None, params) -> None:
    """The last backup's record (``backup.parse_state``): it ran, succeeded, is recent."""
    from mailops.core.layout import BACKUP
    require(run is not None, "no backup has run yet")
    require(run["exit"] == 0, f"the last backup failed (exit {run['exit']}, "
                              f"{run['age_hours']} h ago); see {BACKUP.log}")
    require(run["age_hours"] <= params.backup.max_age_hours,
            f"the last backup is {run['age_hours']} h old (limit {params.backup.max_age_hours} h)")


def last_backup(session, params) -> str:
    from mailops.provision import backup
    run = backup.last_run(session)
    judge_backup(run, params)
    archives = backup.archives(session)
    require(archives, "the repository holds no archive")
    last = archives[-1]
    return (f"{last['name']} ({run['age_hours']} h ago, {run['end'] - run['start']} s); "
            f"{len(archives)} archive(s) in the repository")


# unattended upgrades switched on, the package installed, and what apt would
# upgrade now (from the lists the server has; nothing is fetched)
PENDING_UPDATES = r"""auto=$(apt-config dump APT::Periodic::Unattended-Upgrade | sed -n 's/.*"\(.*\)";$/\1/p')
pkg=$(dpkg-query -W -f '${db:Status-Abbrev}' unattended-upgrades 2>/dev/null | cut -c1-2)
echo "auto ${auto:-0} ${pkg:-no}"
apt-get -s -o Debug::NoLocking=1 upgrade 2>/dev/null | grep '^Inst ' || true
"""


def parse_pending(out: str) -> tuple[bool, list[str], list[str]]:
    """PENDING_UPDATES' output -> (unattended on and installed, pending, of them security)."""
    head, *lines = out.splitlines()
    _, auto, pkg = head.split()
    pending = [ln.split()[1] for ln in lines if ln.startswith("Inst ")]
    security = [ln.split()[1] for ln in lines if ln.startswith("Inst ") and "-security" in ln.lower()]
    return auto == "1" and pkg == "ii", pending, security


def updates(session, params) -> str:
    on, pending, security = parse_pending(
        session.host.run(["sh", "-c", PENDING_UPDATES, "pending_updates"], timeout=120).out)
    if params.updates.unattended:
        require(on, "unattended upgrades are not on (APT::Periodic::Unattended-Upgrade, "
                    "package unattended-upgrades)")
    state = "unattended upgrades on" if on else "unattended upgrades off"
    sec = f" ({', '.join(security[:5])}{'...' if len(security) > 5 else ''})" if security else ""
    return f"{state}; {len(pending)} upgrade(s) pending, {len(security)} from security{sec}"


def parse_sshd(out: str) -> dict[str, str]:
    """`sshd -T` -> its effective settings (lower-case keys)."""
    return dict(ln.split(" ", 1) for ln in out.splitlines() if " " in ln)


def sshd(session, params) -> str:
    conf = parse_sshd(session.host.run(["sshd", "-T"]).out)
    passwords = [k for k in ("passwordauthentication", "kbdinteractiveauthentication")
                 if conf.get(k) == "yes"]
    allowed = f"password logins allowed ({', '.join(passwords)} yes)" if passwords \
        else "key-only: password logins refused"
    if params.sshd.key_only:
        require(not passwords, allowed)
    return f"{allowed}; root login {conf.get('permitrootlogin', '?')}"
