"""mailops: build, run and watch a production mail server from notebooks.

The names below load on first use (PEP 562), so a command that needs none of them
(``mailops logs summary``) starts without pydantic, paramiko or jinja2."""
from __future__ import annotations

import importlib

_WHERE = {"ParamsError": "core.params", "load_params": "core.params",
          "ApplyResult": "core.plan", "Plan": "core.plan", "Status": "core.plan",
          "StepFailed": "core.plan",
          "Session": "provision.session", "finish": "provision.session",
          "open_session": "provision.session"}
__all__ = sorted(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
