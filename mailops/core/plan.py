"""Plan (read only) and apply (exactly what the plan listed).

``plan`` reads the facts of every resource in one round trip and returns the
changes.  ``apply`` makes them in the declared order, then validates the
configuration of every service whose inputs changed; if any check fails,
every file it wrote is put back as it was and nothing is reloaded.  Services
are started, reloaded or restarted once, at the end.
"""
from __future__ import annotations

import dataclasses
import enum
import html
import time
from collections import defaultdict
from typing import Sequence

from .host import HostError
from .resources import Action, Change, Resource, Service
from mailops.core.resources.base import FactError
from mailops.core.resources.services import clear_pending, mark_pending
from .tables import details, html_table


class Status(str, enum.Enum):
    NO_CHANGES = "no changes"
    PLANNED = "planned"
    APPLIED = "applied"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class ValidationError(HostError):
    """A service's config check failed; the previous files were restored."""


@dataclasses.dataclass(frozen=True)
class Plan:
    step: str
    host: str
    resources: tuple[Resource, ...] = dataclasses.field(repr=False)
    changes: tuple[Change, ...]
    duration: float = 0.0

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def status(self) -> Status:
        return Status.NO_CHANGES if self.empty else Status.PLANNED

    def table(self) -> list[dict]:
        return [{"action": c.action.value, "target": c.target, "reason": c.reason,
                 "diff": c.diff} for c in self.changes]

    def __str__(self) -> str:
        if self.empty:
            return f"{self.step} on {self.host}: no changes ({len(self.resources)} resources)"
        lines = [f"{self.step} on {self.host}: {len(self.changes)} change(s)"]
        for c in self.changes:
            lines.append(f"  {c.action.value:8} {c.target}: {c.reason}")
            lines += [f"      {d}" for d in c.diff.splitlines()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return changes_html(f"{self.step}: plan on {self.host}", self.changes,
                            len(self.resources))


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    step: str
    host: str
    status: Status
    applied: tuple[Change, ...]
    error: str | None = None
    rolled_back: tuple[str, ...] = ()
    duration: float = 0.0
    pending: tuple[Change, ...] = ()      # a dry run's planned changes

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAILED

    def raise_for_status(self) -> None:
        if not self.ok:
            raise StepFailed(f"{self.step} failed on {self.host}: {self.error}")

    def __str__(self) -> str:
        head = f"{self.step} on {self.host}: {self.status}"
        if self.status is Status.PLANNED:
            head += f" (dry run: {len(self.pending)} change(s) not applied)"
        if self.error:
            head += f": {self.error}"
        if self.rolled_back:
            head += f" (restored: {', '.join(self.rolled_back)})"
        return "\n".join([head] + [f"  {c.action.value:8} {c.target}" for c in self.applied])

    def _repr_html_(self) -> str:
        title = f"{self.step}: {self.status} on {self.host}"
        if self.status is Status.PLANNED:
            return (f"<p><b>{html.escape(title)}</b>: dry run, {len(self.pending)} change(s) "
                    "planned and none applied; set <code>dry_run = False</code> to apply</p>")
        extra = ""
        if self.error:
            extra += f"<p style='color:#b00'><b>error:</b> {html.escape(self.error)}</p>"
        if self.rolled_back:
            extra += f"<p>restored: {html.escape(', '.join(self.rolled_back))}</p>"
        return changes_html(title, self.applied, None) + extra


class StepFailed(Exception):
    pass


def read_facts(host, resources: Sequence[Resource]) -> dict[type, object]:
    """Facts for every resource kind, in one round trip.  A command several
    kinds need (the users-database dump, `getent group`) is sent once."""
    by_kind: dict[type, list[Resource]] = defaultdict(list)
    for r in resources:
        by_kind[type(r)].append(r)
    index: dict[tuple[str, ...], int] = {}
    slots: dict[type, list[int]] = {}
    for kind, items in by_kind.items():
        slots[kind] = [index.setdefault(tuple(cmd), len(index))
                       for cmd in kind.fact_commands(items)]
    results = host.run_many([list(cmd) for cmd in index])
    return {kind: kind.parse_facts(items, [results[i] for i in slots[kind]])
            for kind, items in by_kind.items()}


def plan(host, resources: Sequence[Resource], step: str = "step") -> Plan:
    return plan_many(host, {step: resources})[step]


def plan_many(host, steps: dict[str, Sequence[Resource]]) -> dict[str, Plan]:
    """Plans for several steps from one read of the host (one round trip)."""
    start = time.monotonic()
    for resources in steps.values():
        _check_unique(resources)
    every = [r for resources in steps.values() for r in resources]
    facts = read_facts(host, every)
    plans = {}
    for step, resources in steps.items():
        changes: list[Change] = []
        for r in resources:
            changes += r.compare(facts[type(r)])
        changes += _service_reloads(resources, changes, facts.get(Service, {}))
        plans[step] = Plan(step, host.url, tuple(resources), tuple(changes),
                           time.monotonic() - start)
    return plans


def _check_unique(resources: Sequence[Resource]) -> None:
    seen = set()
    for r in resources:
        if (r.kind, r.key) in seen:
            raise ValueError(f"{r.label} is declared twice")
        seen.add((r.kind, r.key))


def _service_reloads(resources, changes, service_facts) -> list[Change]:
    """A running service whose files changed gets one reload (or restart).  A
    service declared with ``running=None`` (another step owns it) is reloaded
    only when it runs."""
    changed: dict[str, list[str]] = defaultdict(list)
    for c in changes:
        for svc in getattr(c.resource, "notify", ()):
            changed[svc].append(c.resource.key)
    # starting anyway, or already reloaded because an earlier apply left it pending
    starting = {c.resource.name for c in changes
                if c.action in (Action.START, Action.RELOAD, Action.RESTART)}
    services = {r.name: r for r in resources if isinstance(r, Service)}
    unknown = set(changed) - set(services)
    if unknown:
        raise ValueError(f"files notify undeclared services: {', '.join(sorted(unknown))}")
    return [Change(services[name], Action.RELOAD if services[name].on_change == "reload"
                   else Action.RESTART, "config changed: " + ", ".join(paths))
            for name, paths in changed.items()
            if name not in starting and (services[name].running or (
                services[name].running is None and service_facts[name].active))]


def apply(host, plan: Plan) -> ApplyResult:
    """Make the plan's changes; never raises for a failure on the host."""
    start = time.monotonic()
    done: list[Change] = []
    svc_changes = [c for c in plan.changes if isinstance(c.resource, Service)]
    # marked before the first write, cleared once what runs is what is on disk again
    reloads = {c.resource.name for c in svc_changes if c.action in (Action.RELOAD, Action.RESTART)}
    try:
        mark_pending(host, reloads)
        for c in plan.changes:
            if not isinstance(c.resource, Service):
                c.resource.apply(host, c)
                done.append(c)
        restored = _validate_or_restore(host, done, svc_changes)
        if restored is not None:
            clear_pending(host, reloads)            # the old files are back, and run
            return ApplyResult(plan.step, host.url, Status.FAILED, tuple(done),
                               restored[0], restored[1], time.monotonic() - start)
        for c in svc_changes:
            c.resource.apply(host, c)
            done.append(c)
        failed = _smoke_or_restore(host, done, svc_changes)
        clear_pending(host, reloads)                # reloaded: the new files, or the old again
        if failed is not None:
            return ApplyResult(plan.step, host.url, Status.FAILED, tuple(done), failed[0],
                               failed[1], time.monotonic() - start)
    except (HostError, FactError, OSError) as exc:
        # a failure halfway: put back the files written so far (best effort)
        try:
            restored = tuple(_restore_files(host, done))
            if not any(isinstance(c.resource, Service) for c in done):
                clear_pending(host, reloads)        # nothing reloaded: disk is what runs
        except (HostError, OSError) as again:
            restored, exc = (), f"{exc}; restoring the previous files failed too: {again}"
        return ApplyResult(plan.step, host.url, Status.FAILED, tuple(done), str(exc),
                           restored, time.monotonic() - start)
    status = Status.APPLIED if done else Status.NO_CHANGES
    return ApplyResult(plan.step, host.url, status, tuple(done), None, (),
                       time.monotonic() - start)


def _validate_or_restore(host, done, svc_changes):
    """Run each affected service's check; on failure restore every written file."""
    to_check = {c.resource.name: c.resource for c in svc_changes if c.resource.check}
    for svc in to_check.values():
        try:
            svc.validate(host)
        except HostError as exc:
            restored = _restore_files(host, done)
            return (f"validation of {svc.name} failed, nothing reloaded: {exc}",
                    tuple(restored))
    return None


def _smoke_or_restore(host, done, svc_changes):
    """After the reloads: each touched service's smoke test.  On a failure the
    previous files come back and the services are reloaded with them."""
    touched = {c.resource.name: c.resource for c in svc_changes
               if c.action is not Action.ENABLE}
    for svc in touched.values():
        try:
            svc.smoke(host)
        except HostError as exc:
            restored = _restore_files(host, done)
            for other in touched.values():
                if other.running is not False:
                    other.apply(host, Change(other, Action.RESTART, "rollback"))
            return (f"{svc.name} failed its check after the change; previous files "
                    f"restored and services reloaded: {exc}", tuple(restored))
    return None


def _restore_files(host, done: list[Change]) -> list[str]:
    restored = []
    for c in reversed(done):
        r = c.resource
        if not hasattr(r, "restore"):
            continue
        r.restore(host, c)
        restored.append(r.path)
    return restored


def changes_html(title: str, changes: Sequence[Change], n_resources: int | None) -> str:
    if not changes:
        n = f" ({n_resources} resources checked)" if n_resources is not None else ""
        return f"<p><b>{html.escape(title)}</b>: no changes{n}</p>"
    rows = [{"action": c.action.value, "target": c.target, "reason": c.reason,
             "diff": details("diff", c.diff)} for c in changes]
    return html_table(rows, title=title, note=f": {len(changes)} change(s)")
