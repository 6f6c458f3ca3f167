"""What a lifecycle command (``mailops rebuild``, ``mailops upgrade``) did, phase by phase:
printed for the operator, written as the notebook's run record, and raised on when it
failed (the notebook's last cell)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar


@dataclasses.dataclass
class PhasedReport:
    target: str
    phases: list[tuple[str, float, str]] = dataclasses.field(default_factory=list)
    dry_run: bool = False
    error: str | None = None
    last_changes: int | None = None       # the final provision's: 0 when converged
    STEP: ClassVar[str] = ""               # the notebook's name, e.g. 95-rebuild
    COMMAND: ClassVar[str] = ""            # e.g. rebuild

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def seconds(self) -> float:
        return sum(s for _, s, _ in self.phases)

    def details(self) -> dict:
        """What the record holds beside the phases (the command's own)."""
        return {}

    def record(self) -> dict:
        return {"step": self.STEP, "status": ("planned" if self.dry_run else "applied")
                if self.ok else "failed", "changes": 0, "error": self.error,
                "phases": [{"phase": n, "seconds": round(s, 2), "detail": d}
                           for n, s, d in self.phases],
                "last_changes": self.last_changes, "rolled_back": [], "targets": [],
                **self.details()}

    def raise_for_status(self) -> None:
        if not self.ok:
            from mailops.core.plan import StepFailed
            raise StepFailed(f"{self.COMMAND}: {self.error}")

    def render(self, what: str, extra: list[str] = ()) -> str:
        """The printed report: a head line naming ``what``, a line a phase, ``extra``."""
        head = (f"mailops {self.COMMAND} {'(dry run) ' if self.dry_run else ''}of "
                f"{self.target}{what}: {'ok' if self.ok else 'FAILED'}, {self.seconds:.1f}s")
        lines = [head] + [f"  {n:10} {s:7.1f}s  {d}" for n, s, d in self.phases] + list(extra)
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)
