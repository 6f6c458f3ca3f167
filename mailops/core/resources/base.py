"""What every resource kind shares.

A resource kind reads its facts for *all* resources of that kind with a few
commands (sent in one round trip with every other kind's), parses them with a
pure function, compares wanted and found, and applies only what differs.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

if TYPE_CHECKING:
    from mailops.core.host import Host, Result


class Action(str, enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    INSTALL = "install"
    START = "start"
    RELOAD = "reload"
    RESTART = "restart"
    ENABLE = "enable"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Change:
    """One thing apply will do, and why."""

    resource: "Resource"
    action: Action
    reason: str
    diff: str = ""
    # the file's previous content (None: it did not exist), for rollback
    before: bytes | None = dataclasses.field(default=None, repr=False, compare=False)
    # and its mode, owner and group
    before_attrs: tuple[str, str, str] | None = dataclasses.field(default=None, repr=False,
                                                                  compare=False)

    @property
    def target(self) -> str:
        return self.resource.label

    def __repr__(self) -> str:
        return f"Change({self.action.value} {self.target}: {self.reason})"


class Resource:
    """Base of every resource kind; subclasses are frozen dataclasses."""

    kind: ClassVar[str] = "resource"

    @property
    def key(self) -> str:
        raise NotImplementedError

    @property
    def label(self) -> str:
        return f"{self.kind} {self.key}"

    # one list of commands for every resource of this kind
    @classmethod
    def fact_commands(cls, items: Sequence["Resource"]) -> list[list[str]]:
        raise NotImplementedError

    @classmethod
    def parse_facts(cls, items: Sequence["Resource"], results: Sequence["Result"]) -> Any:
        raise NotImplementedError

    def compare(self, facts: Any) -> list[Change]:
        raise NotImplementedError

    def apply(self, host: "Host", change: Change) -> None:
        raise NotImplementedError


class FactError(Exception):
    """A fact command failed in a way that makes the plan unreliable."""
