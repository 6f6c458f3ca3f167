"""Helper programs that run on the target (stdlib only), sent as text.

They are read from this package and passed to the target's ``python3 -c``;
their input comes as JSON on stdin, so no value ever reaches argv.
"""
from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def source(name: str) -> str:
    return (Path(__file__).parent / f"{name}.py").read_text()

