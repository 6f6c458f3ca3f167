"""Services: running and enabled, validated and reloaded when their inputs change.

systemctl where systemd is PID 1, the init scripts (``service``) otherwise.
Daemons are started with every standard stream redirected, so a daemon never
holds an SSH channel open.
"""
from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from .base import Action, Change, FactError, Resource

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9@._-]*$")

SERVICE_STATUS = r"""if [ -d /run/systemd/system ]; then init=systemd; else init=sysv; fi
echo "init $init"
for s; do
  if [ $init = systemd ]; then
    a=$(systemctl is-active "$s" 2>/dev/null); e=$(systemctl is-enabled "$s" 2>/dev/null)
    [ -n "$e" ] || e=missing
  elif [ -x "/etc/init.d/$s" ]; then
    if "/etc/init.d/$s" status </dev/null >/dev/null 2>&1; then a=active; else a=inactive; fi
    if ls /etc/rc[2345].d/S*"$s" >/dev/null 2>&1; then e=enabled; else e=disabled; fi
  else a=missing; e=missing; fi
  printf '%s %s %s\n' "$s" "$a" "$e"
done
for f in /var/lib/mailops/pending/*; do [ -e "$f" ] && echo "pending ${f##*/}"; done
exit 0
"""

# services whose new files are written but not yet validated and reloaded: marked
# before the first write, cleared after the reload (or a full rollback), so an
# apply cut off in between is finished by the next plan instead of forgotten
PENDING_DIR = "/var/lib/mailops/pending"
PENDING_MARK = r"""d=$1; shift
mkdir -p -- "$d" && cd -- "$d" && touch -- "$@" && sync -- "$@"
"""
PENDING_CLEAR = r"""d=$1; shift
[ -d "$d" ] || exit 0
cd -- "$d" && rm -f -- "$@"
"""

SERVICE_CTL = r"""action=$1; name=$2
log=$(mktemp) || exit 1
trap 'rm -f "$log"' EXIT
if [ -d /run/systemd/system ]; then
  systemctl "$action" "$name" </dev/null >"$log" 2>&1; rc=$?
elif [ "$action" = enable ]; then
  update-rc.d "$name" enable </dev/null >"$log" 2>&1; rc=$?
else
  service "$name" "$action" </dev/null >"$log" 2>&1; rc=$?
fi
cat "$log" >&2
exit $rc
"""


@dataclasses.dataclass(frozen=True)
class ServiceFact:
    active: bool
    enabled: bool | None          # None: not applicable (no unit or init script)
    init: str
    pending: bool = False         # an earlier apply wrote its files but never reloaded it


def parse_service_status(out: str) -> tuple[str, dict[str, ServiceFact]]:
    """SERVICE_STATUS output -> (init system, name: fact) (pure)."""
    lines = out.splitlines()
    if not lines or not lines[0].startswith("init "):
        raise FactError(f"unexpected service status output: {out[:200]!r}")
    init = lines[0].split()[1]
    facts = {}
    pending = parse_pending(out)
    for line in lines[1:]:
        if line.startswith("pending "):
            continue
        name, active, enabled = line.split()
        facts[name] = ServiceFact(active == "active",
                                  None if enabled == "missing" else enabled in ("enabled", "static"),
                                  init, name in pending)
    return init, facts


def parse_pending(out: str) -> set[str]:
    """The services SERVICE_STATUS found marked pending (pure)."""
    return {ln.split()[1] for ln in out.splitlines() if ln.startswith("pending ")}


def mark_pending(host, names) -> None:
    if names:
        host.run(["sh", "-c", PENDING_MARK, "pending_mark", PENDING_DIR, *sorted(names)])


def clear_pending(host, names) -> None:
    if names:
        host.run(["sh", "-c", PENDING_CLEAR, "pending_clear", PENDING_DIR, *sorted(names)])


@dataclasses.dataclass(frozen=True)
class Service(Resource):
    name: str
    running: bool | None = True       # None: leave as it is, but reload it when its inputs change
    enabled: bool = True
    check: tuple[str, ...] = ()       # validates the config; run before any (re)load
    on_change: str = "reload"         # or "restart"
    probe: tuple[str, ...] = ()       # custom "is it active" command (exit 0: yes)
    start: tuple[str, ...] = ()       # custom start/reload command, with probe
    verify: tuple[str, ...] = ()      # smoke test after a (re)load; failing it rolls back
    after_reload: tuple[str, ...] = ()  # run after each reload or restart (not a first start)
    kind: ClassVar[str] = "service"

    def __post_init__(self):
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"not a service name: {self.name!r}")
        if self.on_change not in ("reload", "restart"):
            raise ValueError(f"on_change must be reload or restart, not {self.on_change!r}")
        if bool(self.probe) != bool(self.start):
            raise ValueError(f"service {self.name}: probe and start go together")

    @property
    def key(self):
        return self.name

    @classmethod
    def fact_commands(cls, items):
        std = [s.name for s in items if not s.probe]
        return [["sh", "-c", SERVICE_STATUS, "service_status", *std],
                *[list(s.probe) for s in items if s.probe]]

    @classmethod
    def parse_facts(cls, items, results):
        init, facts = parse_service_status(results[0].out)
        pending = parse_pending(results[0].out)
        probed = [s for s in items if s.probe]
        for s, res in zip(probed, results[1:]):
            facts[s.name] = ServiceFact(res.ok, None, init, s.name in pending)
        return facts

    def compare(self, facts):
        fact: ServiceFact = facts[self.name]
        changes = []
        if self.running and not fact.active:
            changes.append(Change(self, Action.START,
                                  "not in effect" if self.probe else "not running"))
        if self.enabled and self.running is not None and fact.enabled is False:
            changes.append(Change(self, Action.ENABLE, "not enabled at boot"))
        if fact.pending and fact.active:
            changes.append(Change(self, Action.RELOAD if self.on_change == "reload"
                                  else Action.RESTART,
                                  "an earlier apply wrote its files but was cut off before "
                                  "this check and reload"))
        return changes

    def validate(self, host) -> None:
        if self.check:
            host.run(list(self.check))

    def smoke(self, host) -> None:
        if self.verify:
            host.run(list(self.verify), timeout=60)

    def apply(self, host, change):
        if self.start and change.action is not Action.ENABLE:
            host.run(list(self.start))
            return
        action = {Action.START: "start", Action.ENABLE: "enable",
                  Action.RELOAD: self.on_change, Action.RESTART: "restart"}[change.action]
        host.run(["sh", "-c", SERVICE_CTL, "service_ctl", action, self.name], timeout=300)
        if self.after_reload and change.action in (Action.RELOAD, Action.RESTART):
            host.run(list(self.after_reload), timeout=60)
