"""A session: validated parameters, one connection, the host's facts read once."""
from __future__ import annotations

import json
from pathlib import Path

from mailops.core import plan as planning
from mailops.core.facts import HostInfo, read_host_info
from mailops.core.host import CommandError, Host, connect
from mailops.core.params import Params, load_params
from mailops.core.plan import ApplyResult, Plan, Status
from mailops.remote import source
from .steps import get_step


class Session:
    def __init__(self, params: Params, host: Host | None = None):
        self.params = params
        self._host = host
        self._info: HostInfo | None = None

    @property
    def host(self) -> Host:
        if self._host is None:
            p = self.params
            self._host = connect(p.target,
                                 key_file=p.path(p.ssh.key_file) if p.ssh else None,
                                 known_hosts=p.path(p.ssh.known_hosts) if p.ssh else None)
        return self._host

    @property
    def info(self) -> HostInfo:
        if self._info is None:
            self._info = read_host_info(self.host)
        return self._info

    def resources(self, step: str) -> list:
        s = get_step(step)
        if s.declare is None:
            return []
        self.info.require_supported()
        return s.resources(self.params, self.info)

    def plan(self, step: str) -> Plan:
        """Read the host and list what the step would change; changes nothing."""
        return self.plan_many([step])[get_step(step).name]

    def plan_many(self, steps: list[str]) -> dict[str, Plan]:
        """Plans for several steps from one read of the host."""
        names = [get_step(s).name for s in steps]
        return planning.plan_many(self.host, {n: self.resources(n) for n in names})

    def apply(self, plan: Plan, dry_run: bool = False) -> ApplyResult:
        """Make the plan's changes (or, with ``dry_run``, report them as planned)."""
        if dry_run or plan.empty:
            return ApplyResult(plan.step, plan.host, plan.status, (), pending=plan.changes)
        result = planning.apply(self.host, plan)
        self._info = None      # packages or hostname may have changed
        return result

    def helper(self, name: str, request: dict, *, error: type[Exception],
               timeout: float) -> dict:
        """Run the server-side helper ``name`` (``mailops/remote``) with ``request`` as JSON
        on stdin; its JSON answer.  A failure raises ``error`` with the helper's last line
        of stderr, its own words."""
        try:
            res = self.host.run(["python3", "-c", source(name), name],
                                stdin=json.dumps(request).encode(), timeout=timeout)
        except CommandError as exc:
            err = exc.result.err.strip()
            raise error(err.splitlines()[-1] if err else str(exc)) from None
        return json.loads(res.out)

    def close(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Session {self.params.target}>"


def open_session(params_file: str | Path) -> Session:
    """Validate the parameters file (before connecting) and open a session."""
    return Session(load_params(params_file))


def finish(result, record_file: str | None = None):
    """The notebooks' last cell: write the run record, raise if the step failed.
    ``result`` is an ApplyResult or a verify CheckReport."""
    if record_file:
        data = result.record() if hasattr(result, "record") else record(result)
        Path(record_file).write_text(json.dumps(data, indent=2))
    result.raise_for_status()
    return result


def record(result: ApplyResult) -> dict:
    changes = result.pending if result.status is Status.PLANNED else result.applied
    return {"step": result.step, "host": result.host, "status": result.status.value,
            "changes": len(changes),
            "targets": [f"{c.action.value} {c.target}" for c in changes],
            "error": result.error, "rolled_back": list(result.rolled_back),
            "seconds": round(result.duration, 3)}
