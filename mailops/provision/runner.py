"""The runner: ``mailops provision`` takes the provisioning notebooks in order.

Each step is first planned in this process (one connection for the whole run,
one round trip per step).  A step with changes runs its notebook through
papermill, which plans again, shows the diffs and applies them; the executed
copy is kept in ``reports/runs/<UTC timestamp>/`` as the run's record.  A step
with nothing to change needs no kernel: it is recorded in the summary only
(``--notebooks all`` executes every notebook anyway).  The run stops at the
first failing step.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import threading
import time
from pathlib import Path
from typing import Callable

from mailops.core.params import load_params
from mailops.core.plan import Status
from .session import Session
from .steps import STEPS, Step, get_step

PROJECT = Path(__file__).resolve().parents[2]
NOTEBOOKS = PROJECT / "notebooks" / "provisioning"
REPORTS = PROJECT / "reports"


@dataclasses.dataclass(frozen=True)
class StepRecord:
    step: str
    status: str
    changes: int
    notebook: str | None
    seconds: float
    error: str | None = None
    targets: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    params_file: str
    target: str
    apply: bool
    steps: tuple[StepRecord, ...]
    seconds: float
    round_trips: int = 0      # the runner's own; notebooks open connections of their own

    @property
    def ok(self) -> bool:
        return all(s.status != Status.FAILED.value for s in self.steps)

    @property
    def changes(self) -> int:
        return sum(s.changes for s in self.steps)

    def to_json(self) -> dict:
        return {"ok": self.ok, "target": self.target, "params_file": self.params_file,
                "apply": self.apply, "changes": self.changes, "seconds": round(self.seconds, 3),
                "round_trips": self.round_trips,
                "run_dir": str(self.run_dir),
                "steps": [dataclasses.asdict(s) for s in self.steps]}

    def __str__(self) -> str:
        mode = "apply" if self.apply else "dry run"
        lines = [f"mailops provision ({mode}) on {self.target}: "
                 f"{'ok' if self.ok else 'FAILED'}, {self.changes} change(s), {self.seconds:.1f}s"]
        for s in self.steps:
            lines.append(f"  {s.step:14} {s.status:10} {s.changes:3} change(s)  {s.seconds:6.2f}s"
                         + (f"  {s.notebook}" if s.notebook else ""))
            if s.error:
                lines.append(f"      error: {s.error}")
        lines.append(f"reports: {self.run_dir}")
        return "\n".join(lines)


class Rendezvous:
    """Where the hosts of one run wait for each other before their checks: a host's
    verify may send mail to another host of the run (``verify.remote_mailboxes``), so
    it starts when every host has been built or has stopped.  Each host arrives once;
    one that stops early arrives without waiting."""

    def __init__(self, hosts: int, timeout: float = 3600):
        self.pending, self.timeout = hosts, timeout
        self.cond = threading.Condition()

    def arrive(self, wait: bool = True) -> None:
        with self.cond:
            self.pending -= 1
            self.cond.notify_all()
            if wait:
                self.cond.wait_for(lambda: self.pending <= 0, timeout=self.timeout)


class _Ticket:
    """One host's arrival (idempotent)."""

    def __init__(self, rendezvous: Rendezvous | None):
        self.rendezvous, self.done = rendezvous, False

    def arrive(self, wait: bool = True) -> None:
        if self.rendezvous is not None and not self.done:
            self.done = True
            self.rendezvous.arrive(wait)


def for_command(params_file, reports: Path, replacement: Callable | None = None):
    """A lifecycle command's (rebuild, upgrade) parameters and runner: ``params_file`` is
    a path (resolved, loaded) or loaded parameters; ``replacement`` replaces the runner
    (the unit tier's), else every provision runs the notebooks for that file."""
    from mailops.core.params import Params
    if isinstance(params_file, Params):
        params = params_file
    else:
        params_file = Path(params_file).resolve()
        params = load_params(params_file)
    run = replacement or functools.partial(provision, params_file, reports=reports)
    return params, params_file, run


def provision_many(params_files, *, log: Callable[[str], None] = print,
                   **kw) -> list[RunSummary]:
    """Several hosts at once, one thread each (their notebooks run in processes of their
    own): a host whose parameters are invalid, or whose run fails, fails alone; the others
    go on; each host's checks start when every host is built.  Summaries in the order of
    the files."""
    from concurrent.futures import ThreadPoolExecutor
    files = [Path(f).resolve() for f in params_files]
    meet = Rendezvous(len(files)) if len(files) > 1 else None

    def one(f: Path) -> RunSummary:
        tag = f.stem
        ticket = _Ticket(meet)
        try:
            return provision(f, log=lambda m: log(f"[{tag}] {m}"), tag=tag, ticket=ticket, **kw)
        except Exception as exc:  # noqa: BLE001 - this host's failure, reported with it
            return failed_summary(f, f"{type(exc).__name__}: {exc}", kw.get("apply", False),
                                  kw.get("reports", REPORTS))
        finally:
            ticket.arrive(wait=False)
    with ThreadPoolExecutor(max_workers=max(1, len(files))) as pool:
        return list(pool.map(one, files))


def failed_summary(params_file: Path, error: str, apply: bool, reports: Path) -> RunSummary:
    """A run that could not start (its parameters are invalid, its host unreachable)."""
    run_dir = reports / "runs" / f"{_stamp()}-{params_file.stem}"
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(run_dir, str(params_file), "?", apply,
                         (StepRecord("00-connect", Status.FAILED.value, 0, None, 0.0, error),),
                         0.0)
    (run_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    return summary


def provision(params_file: str | Path, *, apply: bool = False, only: list[str] | None = None,
              notebooks: str = "changed", verify: bool = False, reports: Path = REPORTS,
              log: Callable[[str], None] = print, tag: str = "",
              ticket: _Ticket | None = None) -> RunSummary:
    """Run the provisioning steps; parameters are validated before connecting."""
    start = time.monotonic()
    params_file = Path(params_file).resolve()
    params = load_params(params_file)
    steps = [get_step(n) for n in only] if only else list(STEPS)
    run_dir = reports / "runs" / (_stamp() + (f"-{tag}" if tag else ""))
    run_dir.mkdir(parents=True, exist_ok=True)
    records: list[StepRecord] = []
    with Session(params) as session:
        # every step planned from one read of the host; valid until a step changes it
        ahead = _plan_ahead(session, steps) if notebooks == "changed" else {}
        for step in steps:
            log(f"[{step.name}] {step.title} ...")
            if step.dns:
                rec = _run_dns(session, step, params_file, apply, notebooks, run_dir)
            elif step.checks:
                changed = any(r.changes for r in records) and apply
                if not (changed or verify or notebooks == "all"):
                    records.append(StepRecord(step.name, "skipped", 0, None, 0.0,
                                              None, ("nothing changed; --verify runs it",)))
                    log(f"[{step.name}] skipped: nothing changed (--verify runs it anyway)")
                    continue
                if ticket is not None and not ticket.done:
                    log(f"[{step.name}] waiting for the run's other hosts to be built")
                    ticket.arrive()
                rec = _run_notebook(step, params_file, apply, run_dir, time.monotonic())
            else:
                rec = _run_step(session, step, params_file, apply, notebooks, run_dir,
                                ahead.get(step.name))
            if rec.changes and apply:
                ahead = {}
            records.append(rec)
            log(f"[{step.name}] {rec.status}, {rec.changes} change(s), {rec.seconds:.2f}s"
                + (f": {rec.error}" if rec.error else ""))
            if rec.status == Status.FAILED.value:
                break
        trips = session._host.round_trips if session._host is not None else 0
    summary = RunSummary(run_dir, str(params_file), params.target, apply, tuple(records),
                         time.monotonic() - start, trips)
    (run_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    return summary


def _stamp() -> str:
    """A run's directory name: UTC time, sortable."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _plan_ahead(session: Session, steps: list[Step]) -> dict:
    try:
        return session.plan_many([s.name for s in steps if not s.checks])
    except Exception:  # noqa: BLE001 - each step then plans (and reports) on its own
        return {}


def _run_step(session: Session, step: Step, params_file: Path, apply: bool, notebooks: str,
              run_dir: Path, plan=None) -> StepRecord:
    t0 = time.monotonic()
    if notebooks == "changed":
        try:
            plan = plan or session.plan(step.name)
        except Exception as exc:  # noqa: BLE001 - recorded, and the run stops
            return StepRecord(step.name, Status.FAILED.value, 0, None,
                              time.monotonic() - t0, f"{type(exc).__name__}: {exc}")
        if plan.empty:
            return StepRecord(step.name, Status.NO_CHANGES.value, 0, None, time.monotonic() - t0)
    return _run_notebook(step, params_file, apply, run_dir, t0)


def _run_dns(session: Session, step: Step, params_file: Path, apply: bool, notebooks: str,
             run_dir: Path) -> StepRecord:
    """88-dns: without dns.update, skipped (the operator publishes; 90-verify checks);
    with it, planned here and its notebook run only when a record must change."""
    t0 = time.monotonic()
    if session.params.dns.update is None:
        return StepRecord(step.name, "skipped", 0, None, 0.0, None,
                          ("no dns.update: publish by hand (`mailops dns check` shows what)",))
    if notebooks == "changed":
        from . import dnsrecords
        try:
            plan = dnsrecords.publish(session, apply=False)
        except Exception as exc:  # noqa: BLE001 - recorded, and the run stops
            return StepRecord(step.name, Status.FAILED.value, 0, None, time.monotonic() - t0,
                              f"{type(exc).__name__}: {exc}")
        if not plan.changes:
            return StepRecord(step.name, Status.NO_CHANGES.value, 0, None, time.monotonic() - t0)
    return _run_notebook(step, params_file, apply, run_dir, t0)


def _run_notebook(step: Step, params_file: Path, apply: bool, run_dir: Path,
                  t0: float) -> StepRecord:
    out = run_dir / step.notebook
    data = _execute(NOTEBOOKS / step.notebook, out, run_dir / f"{step.name}.json",
                    {"params_file": str(params_file), "dry_run": not apply})
    return StepRecord(step.name, data.get("status", Status.FAILED.value),
                      int(data.get("changes", 0)), out.name, time.monotonic() - t0,
                      data.get("error"), tuple(data.get("targets", ())))


def _execute(notebook: Path, out: Path, rec_file: Path, parameters: dict) -> dict:
    """Run a notebook through papermill; its record (written by its last cell), with
    the failing cell's error when a cell failed."""
    from mailops.core.kernel import execute
    error = None
    try:
        execute(notebook, out, {**parameters, "record_file": str(rec_file)},
                cwd=str(notebook.parent), log_output=False)
    except Exception as exc:  # noqa: BLE001 - papermill wraps the cell's error
        error = _cell_error(exc)
    data = json.loads(rec_file.read_text()) if rec_file.exists() else {}
    if error:
        data.update(status=Status.FAILED.value, error=data.get("error") or error)
    return data


def _cell_error(exc: Exception) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    return f"{ename}: {evalue}".strip()


DRILL_NOTEBOOK = "85-restore-drill.ipynb"


def drill(params_file: str | Path, *, archive: str = "", restore_mailbox: str = "",
          reports: Path = REPORTS, log: Callable[[str], None] = print) -> dict:
    """Run the restore-drill notebook through papermill (for schedules and the
    README's first command); the executed notebook and an HTML copy go to
    reports/drills/<time>/.  Returns the drill's record."""
    params_file = Path(params_file).resolve()
    load_params(params_file)                       # errors before anything connects
    out_dir = reports / "drills" / _stamp()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / DRILL_NOTEBOOK
    record = _execute(NOTEBOOKS / DRILL_NOTEBOOK, out, out_dir / "record.json",
                      {"params_file": str(params_file), "archive": archive,
                       "restore_mailbox": restore_mailbox})
    record.setdefault("status", Status.FAILED.value)
    _to_html(out)
    record["notebook"] = str(out)
    log(f"[85-restore-drill] {record['status']}: archive {record.get('archive', '-')}, "
        f"{record.get('messages', 0)} messages compared, {record.get('differences', '-')} "
        f"difference(s){': ' + record['error'] if record.get('error') else ''}; {out}")
    return record


def _to_html(notebook: Path) -> None:
    import nbconvert
    import nbformat
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    notebook.with_suffix(".html").write_text(body)
