"""Templates: jinja2 under StrictUndefined, laid out like the remote paths."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import jinja2

TEMPLATES = Path(os.environ.get("MAILOPS_TEMPLATES", Path(__file__).resolve().parents[2] / "templates"))
HEADER = "managed by mailops: edits here are overwritten; change templates/ or parameters/"


@functools.cache
def environment(root: Path = TEMPLATES) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True, autoescape=False)


def render(name: str, root: Path = TEMPLATES, **context) -> str:
    return environment(root).get_template(name).render(header=HEADER, **context)
