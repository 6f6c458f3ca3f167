"""A check's result, a report of many, and the one way a check says it failed."""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from mailops.core.plan import StepFailed
from mailops.core.tables import html_table, status


class CheckFailed(Exception):
    """Raised by a check function: the check failed, with this evidence."""


def require(condition: object, evidence: str) -> None:
    """Fail the running check with ``evidence`` unless ``condition`` holds
    (an explicit test: it survives ``python -O``, unlike ``assert``)."""
    if not condition:
        raise CheckFailed(evidence)


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    evidence: str


@dataclasses.dataclass(frozen=True)
class CheckReport:
    target: str
    checks: tuple[Check, ...]
    step: str = "90-verify"

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def raise_for_status(self) -> None:
        if not self.ok:
            raise StepFailed(f"{self.step} failed: " + "; ".join(
                f"{c.name}: {c.evidence}" for c in self.failed))

    def record(self) -> dict:
        return {"step": self.step, "host": self.target,
                "status": "verified" if self.ok else "failed", "changes": 0,
                "targets": [], "checks": [dataclasses.asdict(c) for c in self.checks],
                "error": None if self.ok else f"{len(self.failed)} check(s) failed: "
                + ", ".join(c.name for c in self.failed), "rolled_back": []}

    def __str__(self) -> str:
        return "\n".join([f"{self.step} {self.target}: {'ok' if self.ok else 'FAILED'}"] + [
            f"  {'ok    ' if c.ok else 'FAILED'} {c.name}: {c.evidence}" for c in self.checks])

    def _repr_html_(self) -> str:
        rows = [{"result": status(c.ok), "check": c.name, "evidence": c.evidence}
                for c in self.checks]
        return html_table(rows, title=f"{self.step} {self.target}",
                          note=f": {len(self.checks) - len(self.failed)} of "
                               f"{len(self.checks)} checks ok")


def check(name: str, fn: Callable[[], str]) -> Check:
    """Run one check function: its return value is the evidence of success."""
    try:
        return Check(name, True, fn())
    except CheckFailed as exc:
        return Check(name, False, str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure is evidence
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def run_parallel(named: list[tuple[str, Callable[[], str]]], workers: int = 8) -> list[Check]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda nf: check(*nf), named))
