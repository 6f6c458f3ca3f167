"""Upgrade a running server to the next Debian release in place (12 → 13, dovecot 2.3 → 2.4).

Before anything moves: verify must be green, a fresh backup is taken and the restore
drill must pass against it.  The plan reads the host only: the packages that change (a
simulated full-upgrade against the next release's sources, in a scratch directory) and
every configuration file the steps will write for the new release (a unified diff, e.g.
dovecot.conf in 2.4 syntax); ``dry_run`` stops there.

The upgrade itself: postfix stops and a stand-in answers SMTP on 25, 587 and 465 with
``421 4.3.2`` (senders keep the mail and retry; submission clients are told to try
again), then dovecot, rspamd, fail2ban and redis stop.  dovecot's configuration for the
new release is written before its package moves, and no daemon starts while packages
move (policy-rc.d), so none runs on a configuration of the wrong version.  The apt sources
name the new release and the packages are upgraded on the host in a detached job (a cut
SSH connection does not stop it).  Then every step is provisioned for the new release
(each config checked before it is used, services started), the sieve scripts are
compiled anew, the stand-in stops, and a second provision with verify must be green.

A failure stops with what was done, what was not, and the command to run next.  When the
package upgrade fails before any package changed, everything is put back (sources,
dovecot's files) and the server serves again on the old release; after a package changed
there is no way back, and the stand-in keeps answering 421 until the next run finishes.
Progress is recorded on the host (``/var/lib/mailops/upgrade.json``): running the
command again finds it and goes on."""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import re
import time
from pathlib import Path
from typing import Callable, ClassVar

from mailops.core import plan as planning
from mailops.core.host import CommandError, Host
from mailops.core.layout import SIEVE_DIR, VHOSTS, tls_paths
from mailops.core.params import Params
from mailops.core.resources import File
from . import backup as backups
from . import runner
from .phased import PhasedReport
from .session import Session
from .steps import STEPS, get_step

MARKER = "/var/lib/mailops/upgrade.json"
WORK = "/var/lib/mailops/upgrade"            # originals, the apt job's files
DEFER_PID = "/run/mailops-upgrade-defer.pid"
DEFER_LOG = "/var/log/mailops/upgrade-defer.log"
APT_LOG = "/var/log/mailops/upgrade-apt.log"
# the releases an upgrade goes between, and the version each reports
NEXT = {"bookworm": "trixie"}
VERSION = {"bookworm": "12", "trixie": "13"}
# stopped for the window, in this order (postfix first: the stand-in takes its ports)
DAEMONS = ("postfix", "dovecot", "rspamd", "fail2ban", "redis-server")
PACKAGE_OF = {"postfix": "postfix", "dovecot": "dovecot-core", "rspamd": "rspamd",
              "fail2ban": "fail2ban", "redis-server": "redis-server"}
# still running through the window, restarted on their new binaries afterwards (sshd is
# left to the reboot the release notes ask for: restarting it is not this tool's to do)
RESTART_AFTER = ("unbound", "cron")
PREWRITE_STEP = "40-dovecot"                 # its files are written before packages move
POSTFIX_STEP = "50-postfix"                  # the stand-in stops just before it


class UpgradeError(Exception):
    """An upgrade refused or stopped: what was done, what was not, what to run next."""


@dataclasses.dataclass
class UpgradeReport(PhasedReport):
    from_release: str = ""
    to_release: str = ""
    packages: list[dict] = dataclasses.field(default_factory=list)
    config_diffs: dict = dataclasses.field(default_factory=dict)
    window: dict = dataclasses.field(default_factory=dict)
    STEP: ClassVar[str] = "96-upgrade"
    COMMAND: ClassVar[str] = "upgrade"

    def details(self) -> dict:
        return {"from": self.from_release, "to": self.to_release,
                "packages": len(self.packages), "config_files": sorted(self.config_diffs),
                "window": self.window}

    def __str__(self) -> str:
        extra = [f"  window: {self.window.get('seconds', 0):.1f}s of 421 (stand-in), "
                 f"{self.window.get('answered', 0)} connection(s) told to retry"] \
            if self.window else []
        return self.render(f" {self.from_release or '?'} -> {self.to_release or '?'}", extra)


# ---- what the host is, and what would change (reads only) ----------------------------

SIMULATE = r"""set -e
from=$1; to=$2
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
mkdir -p "$d/lists/partial" "$d/parts"
[ -f /etc/apt/sources.list ] && sed -E "s/\b$from\b/$to/g" /etc/apt/sources.list > "$d/sources.list"
touch "$d/sources.list"
for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && sed -E "s/\b$from\b/$to/g" "$f" > "$d/parts/${f##*/}"
done
set -- -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts="$d/parts" \
  -o Dir::State::Lists="$d/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
apt-get -q "$@" update >"$d/update.log" 2>&1 || { tail -n 20 "$d/update.log" >&2; exit 3; }
apt-get -s -q "$@" full-upgrade
"""

_INST = re.compile(r"^Inst (\S+) (?:\[(\S+)\] )?\((\S+) ")
_REMV = re.compile(r"^Remv (\S+)(?: \[(\S+)\])?")


def parse_simulation(out: str) -> list[dict]:
    """``apt-get -s full-upgrade``'s output -> [{package, from, to}] (pure); a new package
    has from None, a removed one to None."""
    rows = []
    for line in out.splitlines():
        if m := _INST.match(line):
            rows.append({"package": m[1].split(":")[0], "from": m[2], "to": m[3]})
        elif m := _REMV.match(line):
            rows.append({"package": m[1].split(":")[0], "from": m[2], "to": None})
    return rows


def simulate(session: Session, info, to: str) -> list[dict]:
    """The packages a full-upgrade to ``to`` changes (reads only: a scratch lists dir)."""
    try:
        sim = session.host.run(["sh", "-c", SIMULATE, "simulate", info.codename, to],
                               timeout=900)
    except CommandError as exc:
        raise UpgradeError(f"the {to} package lists could not be read: "
                           f"{exc.result.err.strip()[-400:]}; nothing was changed") from None
    return parse_simulation(sim.out)


def failure_lines(log_tail: str, n: int = 4) -> list[str]:
    """The lines of the apt job's log that say what failed (pure): apt's ``E:`` and
    dpkg's ``error`` lines, else the last lines."""
    lines = [l.strip() for l in log_tail.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("E:") or "error" in l.lower()]
    return (errors or lines)[-n:]


def future_info(info, to: str, changes: list[dict]):
    """The host's facts as they will be on the new release (for the steps' plans)."""
    packages = dict(info.packages)
    for c in changes:
        if c["to"] is None:
            packages.pop(c["package"], None)
        else:
            packages[c["package"]] = c["to"]
    return dataclasses.replace(info, os_version=VERSION[to], codename=to,
                               pretty_name=f"Debian GNU/Linux {VERSION[to]} ({to})",
                               packages=packages)


def read_marker(host: Host) -> dict | None:
    res = host.run(["sh", "-c", '[ ! -f "$1" ] || cat "$1"', "marker", MARKER])
    if not res.out.strip():
        return None
    try:
        return json.loads(res.out)
    except ValueError:
        return {"phase": "unreadable"}


def refusal(info, to: str, marker: dict | None) -> str | None:
    """Why this host cannot be upgraded to ``to`` (None: it can), from its facts (pure)."""
    if marker and marker.get("phase") not in ("done", "rolled-back", "unreadable"):
        return None                                # an upgrade under way: finish it
    if info.os_id != "debian":
        return (f"{info.pretty_name} is not Debian: mailops upgrade moves Debian 12 to 13 "
                "only (on Ubuntu use do-release-upgrade, then `mailops provision`); nothing "
                "was changed")
    if info.codename == to:
        return (f"{info.pretty_name} is already {to}: nothing to upgrade "
                "(`mailops provision` keeps it converged); nothing was changed")
    if NEXT.get(info.codename) != to:
        return (f"{info.pretty_name} ({info.codename or 'no codename'}) cannot go to {to} "
                f"in one step: mailops upgrades "
                + ", ".join(f"{a} to {b}" for a, b in NEXT.items()) + "; nothing was changed")
    return None


def _helper(session: Session, request: dict, timeout: float = 300) -> dict:
    return session.helper("upgrade", request, error=UpgradeError, timeout=timeout)


def _service(session: Session, action: str, name: str) -> None:
    from mailops.core.resources.services import SERVICE_CTL
    session.host.run(["sh", "-c", SERVICE_CTL, "service_ctl", action, name], timeout=300)


def config_plans(session: Session, info) -> dict:
    """Every step's plan against the host as it is, with the facts it will have: the
    files the new release gets, as diffs (reads only)."""
    names = [s.name for s in STEPS if s.declare is not None and not s.checks]
    resources = {n: get_step(n).resources(session.params, info) for n in names}
    return planning.plan_many(session.host, resources)


def file_diffs(plans: dict) -> dict[str, str]:
    return {c.resource.path: c.diff for plan in plans.values() for c in plan.changes
            if isinstance(c.resource, File) and c.diff}


# ---- the upgrade ---------------------------------------------------------------------

APT_SCRIPT = r"""set -e
export DEBIAN_FRONTEND=noninteractive APT_LISTCHANGES_FRONTEND=none NEEDRESTART_SUSPEND=1
echo "== $(date -u +%FT%TZ) mailops upgrade: packages"
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# mailops upgrade: no service starts while packages move but these\ncase "$1" in %s) exit 0;; esac\nexit 101\n' \
    "${ALLOW:-none}" >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made=1
fi
trap '[ -z "$made" ] || rm -f /usr/sbin/policy-rc.d' EXIT
o="-o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef"
dpkg --configure -a --force-confold --force-confdef
apt-get -q update
apt-get -q -y $o upgrade --without-new-pkgs
apt-get -q -y $o full-upgrade
echo "== $(date -u +%FT%TZ) done"
"""


def apt_script(params) -> str:
    """The package job: every service start denied while packages move, but ssh's on a
    real server (see :func:`mailops.lab.mode.upgrade_restartable`)."""
    from mailops.lab import mode as labmode
    allow = "|".join(labmode.upgrade_restartable(params)) or "none"
    return f"ALLOW='{allow}'\n" + APT_SCRIPT


def _apt_req(action: str, params) -> dict:
    return {"action": action, "log": APT_LOG, "rc": f"{WORK}/apt.rc",
            "pidfile": f"{WORK}/apt.pid", "script_path": f"{WORK}/apt.sh",
            "script": apt_script(params)}


def _defer_req(session: Session, action: str) -> dict:
    p = session.params
    tls = tls_paths(p)
    return {"action": action, "pidfile": DEFER_PID, "log": DEFER_LOG, "ports": [25, 587],
            "tls_port": 465, "hostname": p.hostname,
            "certs": [[tls["rsa_cert"], tls["rsa_key"]], [tls["ec_cert"], tls["ec_key"]]]}


def upgrade(params_file: str | Path | Params, *, to: str = "trixie", dry_run: bool = False,
            log: Callable[[str], None] = print, reports: Path = runner.REPORTS,
            host: Host | None = None, provision: Callable[..., runner.RunSummary] | None = None,
            verify: Callable | None = None, poll_s: float = 5.0,
            apt_timeout_s: float = 5400) -> UpgradeReport:
    """Upgrade the server the parameters describe to Debian ``to`` in place.  ``host``,
    ``provision`` and ``verify`` replace the connection, the runner and the checks (the
    unit tier's fake host)."""
    params, params_file, provision = runner.for_command(params_file, reports, provision)
    if verify is None:
        from .verify import run_checks
        verify = functools.partial(run_checks, params)
    report = UpgradeReport(params.target, to_release=to, dry_run=dry_run)
    again = f"mailops upgrade --params {params_file} --to {to}"

    def phase(name: str, started: float, detail: str) -> None:
        report.phases.append((name, time.monotonic() - started, detail))
        log(f"[upgrade] {name}: {detail}")

    def mark(session: Session, phase_name: str, **extra) -> None:
        marker_state.update({"to": to, "from": report.from_release, "phase": phase_name,
                             "at": dt.datetime.now(dt.timezone.utc).isoformat(
                                 timespec="seconds"), **extra})
        session.host.run(["mkdir", "-p", "-m", "0700", WORK])
        session.host.write_file(MARKER, json.dumps(marker_state).encode() + b"\n", mode="0600")

    marker_state: dict = {}
    with Session(params, host) as session:
        t = time.monotonic()
        info = session.info
        marker = read_marker(session.host)
        why = refusal(info, to, marker)
        if why:
            raise UpgradeError(why)
        resuming = bool(marker) and marker.get("phase") not in ("done", "rolled-back",
                                                                "unreadable")
        if resuming:
            marker_state.update(marker)
            report.from_release = marker.get("from", "")
            phase("survey", t, f"an upgrade to {to} stopped at {marker['phase']} "
                               f"({marker.get('at', '?')}): "
                  + ("a run without --dry-run goes on from there" if dry_run
                     else "going on from there"))
            if dry_run:
                return report
        else:
            report.from_release = info.codename
            phase("survey", t, f"{info.pretty_name}, {len(info.packages)} packages")

            t = time.monotonic()
            report.packages = simulate(session, info, to)
            ahead = future_info(info, to, report.packages)
            report.config_diffs = file_diffs(config_plans(session, ahead))
            phase("plan", t, f"{len(report.packages)} package(s) change, "
                             f"{len(report.config_diffs)} config file(s) rewritten: "
                  + ", ".join(sorted(report.config_diffs)[:12]))
            for path, diff in sorted(report.config_diffs.items()):
                log(diff)
            if dry_run:
                return report

            t = time.monotonic()
            checks = verify()
            if not checks.ok:
                failed = [c.name for c in checks.checks if not c.ok]
                raise UpgradeError(f"verify is not green ({len(failed)} check(s) failed: "
                                   f"{', '.join(failed[:6])}): fix that first; nothing was "
                                   "changed")
            phase("verify", t, f"green, {len(checks.checks)} checks")
            if params.backup.enabled:
                t = time.monotonic()
                try:
                    session.host.run(["/usr/local/sbin/mailops-backup"], timeout=3600)
                except CommandError as exc:
                    raise UpgradeError(f"the backup before the upgrade failed: "
                                       f"{exc.result.err.strip()[-400:]}; nothing was "
                                       "changed") from None
                drill = backups.drill(session)
                if not drill.ok:
                    raise UpgradeError(f"the restore drill against the fresh backup failed "
                                       f"({drill.differences} difference(s), key copy "
                                       f"{drill.key_copy}): nothing was changed")
                phase("backup", t, f"archive {drill.archive}, drill: {drill.messages} "
                                   "messages identical")
            mark(session, "prepared", packages_before=info.packages)

        done = marker_state.get("phase", "prepared")
        order = ["prepared", "stopped", "sources", "packages", "provisioned", "done"]
        at = order.index(done) if done in order else 0
        if done in ("packages-failed",):
            at = order.index("sources")
        if done in ("provision-failed",):
            at = order.index("packages")

        if at < order.index("stopped"):
            t = time.monotonic()
            if resuming:                      # stopped before the window: planned again
                report.packages = simulate(session, info, to)
                ahead = future_info(info, to, report.packages)
            stop_for_window(session, ahead, report)
            mark(session, "stopped")
            phase("stop", t, "postfix stopped, the stand-in answers 421 on 25, 587 and "
                             "465; dovecot, rspamd, fail2ban and redis stopped; dovecot's "
                  f"{to} configuration written")
        else:
            _helper(session, _defer_req(session, "defer-start"))   # answering again
        if at < order.index("sources"):
            t = time.monotonic()
            changed = _helper(session, {"action": "sources", "from": report.from_release,
                                        "to": to, "keep_dir": WORK})["changed"]
            mark(session, "sources")
            phase("sources", t, f"{', '.join(changed) or 'already'} naming {to}")
        if at < order.index("packages"):
            t = time.monotonic()
            st = run_packages(session, poll_s, apt_timeout_s, log)
            if st["rc"] != 0:
                before = marker_state.get("packages_before") or {}
                from mailops.core.resources.system import DPKG_QUERY, parse_dpkg
                now = session.host.run(DPKG_QUERY).out
                moved = before and parse_dpkg(now) != before
                tail = failure_lines(st["tail"])
                if not moved and before:
                    roll_back(session, report)
                    mark(session, "rolled-back")
                    summary = provision(apply=True, verify=False, log=lambda m: log(f"  {m}"),
                                        tag="upgrade-rollback",
                                        only=[s.name for s in STEPS if not s.checks])
                    report.error = (f"the package upgrade failed before any package changed "
                                    f"({' / '.join(tail)}): everything was put back, the "
                                    f"server is on {report.from_release} and serving"
                                    + ("" if summary.ok else " — but its provision failed: "
                                       "run `mailops provision --apply`")
                                    + f". Fix the cause and run `{again}` again")
                    phase("packages", t, "failed; rolled back")
                    return report
                mark(session, "packages-failed")
                report.error = (f"the package upgrade failed ({' / '.join(tail)}; the whole "
                                f"output is {APT_LOG} on the host). Some packages moved, so "
                                f"there is no way back: no mail daemon runs and the stand-in "
                                f"answers 421, so senders keep their mail. Fix the cause (e.g. "
                                f"`dpkg --configure -a` on the host) and run `{again}` again")
                phase("packages", t, "failed")
                return report
            # compiled sieve binaries are release-specific: compiled anew (globals by
            # 65-sieve, each user's at its next delivery); all this again on a run that
            # resumes before the marker says packages (the job's exit code 0 is kept)
            session.host.run(["sh", "-c", 'find "$1" "$2" -name "*.svbin" -delete',
                              "svbin", SIEVE_DIR, VHOSTS], timeout=600)
            from mailops.lab import mode as labmode
            for argv in labmode.upgrade_after_packages(session.params):
                session.host.run(argv)
            for name in RESTART_AFTER:
                if name in session.info.packages or name == "unbound":
                    try:
                        _service(session, "restart", name)
                    except CommandError:
                        pass                  # reported by the provision that follows
            session._info = None
            mark(session, "packages")
            phase("packages", t, f"upgraded to {to}")

        if at < order.index("provisioned"):
            t = time.monotonic()
            steps = [s.name for s in STEPS if not s.checks]
            split = steps.index(POSTFIX_STEP)
            run = functools.partial(provision, apply=True, verify=False,
                                    log=lambda m: log(f"  {m}"), tag="upgrade-provision")
            # the steps before postfix's while the stand-in still answers; it gives the
            # ports back just before postfix starts on them (no refused connections)
            summaries = [run(only=steps[:split])]
            if summaries[-1].ok:
                stopped = _helper(session, _defer_req(session, "defer-stop"))
                report.window = window(stopped)
                summaries.append(run(only=steps[split:]))
            failed = next((s for x in summaries for s in x.steps if s.status == "failed"), None)
            if failed is not None:
                _stop_daemons(session)
                _helper(session, _defer_req(session, "defer-start"))
                mark(session, "provision-failed")
                report.error = (f"on {to} now, {failed.step} failed: {failed.error}. The "
                                f"mail daemons are stopped and the stand-in answers 421 again, "
                                f"so senders keep their mail. Fix the cause and run `{again}` "
                                f"again")
                phase("provision", t, f"failed at {failed.step}")
                return report
            mark(session, "provisioned", window=report.window)
            # mail deferred while the daemons were down (a delivery that met a stopped
            # dovecot, outbound mail) is retried now, not at postfix's next queue run
            session.host.run(["postqueue", "-f"], check=False)
            phase("provision", t, f"{sum(x.changes for x in summaries)} change(s) for {to}, "
                                  + ", ".join(x.run_dir.name for x in summaries))

    t = time.monotonic()
    summary = provision(apply=True, verify=True, log=lambda m: log(f"  {m}"),
                        tag="upgrade-verify")
    report.last_changes = summary.changes
    report.window = report.window or marker_state.get("window", {})
    if not summary.ok:
        failed = next(s for s in summary.steps if s.status == "failed")
        report.error = (f"on {to} and serving, but {failed.step} failed: {failed.error}. "
                        f"Fix the cause and run `mailops provision --apply --verify`")
        phase("verify", t, f"failed at {failed.step}")
        return report
    phase("verify", t, f"green, {summary.changes} change(s) left, {summary.run_dir.name}")
    with Session(params, host) as session:
        marker_state.update(phase="done")
        session.host.write_file(MARKER, json.dumps(marker_state).encode() + b"\n", mode="0600")
    return report


def window(stopped: dict) -> dict:
    """The stand-in's window from what it logged: the connections it answered, the first
    and the last, and the seconds between them (pure)."""
    out = {"answered": stopped.get("answered", 0), "first_421": stopped.get("first"),
           "last_421": stopped.get("last")}
    if stopped.get("first") and stopped.get("last"):
        out["seconds"] = round(stopped["last"] - stopped["first"], 1)
    return out


def _stop_daemons(session: Session) -> None:
    for name in DAEMONS:
        if PACKAGE_OF[name] in session.info.packages:
            try:
                _service(session, "stop", name)
            except CommandError:
                pass                      # not running: stopped is what is wanted


def stop_for_window(session: Session, ahead, report: UpgradeReport) -> None:
    """postfix stopped and the stand-in on its ports at once; the other daemons
    stopped; dovecot's files for the new release written (originals kept)."""
    if "postfix" in session.info.packages:
        _service(session, "stop", "postfix")
    _helper(session, {**_defer_req(session, "defer-start"), "fresh": True})
    _stop_daemons(session)
    if ahead is None:
        return
    # written only: the old release's dovecot cannot check or load them, and it is
    # stopped; the provision after the packages checks them with the new one
    files = [dataclasses.replace(r, notify=()) for r in
             get_step(PREWRITE_STEP).resources(session.params, ahead) if isinstance(r, File)]
    session.host.run(["sh", "-c", 'w=$1; shift; for f; do [ ! -e "$f" ] || '
                      '[ -e "$w/keep$(echo "$f" | tr / %)" ] || cp -a "$f" '
                      '"$w/keep$(echo "$f" | tr / %)"; done', "keep", WORK,
                      *[f.path for f in files]])
    plan = planning.plan(session.host, files, PREWRITE_STEP)
    result = planning.apply(session.host, plan)
    if result.error:
        raise UpgradeError(f"writing dovecot's {report.to_release} configuration failed: "
                           f"{result.error}")


def roll_back(session: Session, report: UpgradeReport) -> None:
    """Back to the old release's files: sources and dovecot's configuration; the
    stand-in stopped (the provision that follows starts the daemons)."""
    _helper(session, {"action": "sources-restore", "keep_dir": WORK})
    session.host.run(["sh", "-c", 'w=$1; for k in "$w"/keep%*; do [ -e "$k" ] || continue; '
                      'f=$(basename "$k" | sed "s/^keep//" | tr % /); cp -a "$k" "$f"; rm -f "$k"; done',
                      "restore", WORK])
    session.host.run(["apt-get", "-q", "update"], timeout=900, check=False)
    _helper(session, _defer_req(session, "defer-stop"))


def run_packages(session: Session, poll_s: float, timeout_s: float, log) -> dict:
    """The detached package job started (or found running) and waited for."""
    st = _helper(session, _apt_req("apt-status", session.params))
    if st["rc"] == 0:
        return st                             # finished before a cut connection saw it
    if not st["running"]:                     # never started, or failed before: (again)
        _helper(session, _apt_req("apt-start", session.params))
    else:
        log("[upgrade] packages: the upgrade's apt job is still running; waiting for it")
    deadline = time.monotonic() + timeout_s
    while True:
        st = _helper(session, _apt_req("apt-status", session.params))
        if st["rc"] is not None:              # the exit code is written once the job ended
            return st
        if time.monotonic() > deadline:
            raise UpgradeError(f"the package upgrade still runs after {timeout_s:.0f} s "
                               f"({APT_LOG} on the host); run the command again to wait on")
        time.sleep(poll_s)
