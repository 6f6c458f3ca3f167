"""The parameter reference, written from the pydantic model so that it cannot drift:
every key of a parameters file with its type, default and description, one section per
nested model.  ``python -m mailops.core.paramref --write`` refreshes ``docs/parameters.md``;
a unit test fails when the committed page differs from what the model says."""
from __future__ import annotations

import argparse
import enum
import ipaddress
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .params import Params

PAGE = Path(__file__).resolve().parents[2] / "docs" / "parameters.md"

# the validators of params.py's named types, by what a reader calls them
_NAMED = {"_fqdn": "domain name", "_address": "mail address", "_port": "port",
          "_secret_ref": "secret reference", "_target": "target URL", "_tz": "time zone"}
_PLAIN = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path",
          ipaddress.IPv4Address: "IPv4 address", ipaddress.IPv6Address: "IPv6 address",
          ipaddress.IPv4Network: "IPv4 network", ipaddress.IPv6Network: "IPv6 network"}


class Section(typing.NamedTuple):
    path: str                       # "mail.mailboxes[]"
    model: type[BaseModel]
    defaults: BaseModel | None      # the parent's default instance, when it has one


def _constraints(metadata: list) -> list[str]:
    out = []
    metadata = [x for m in metadata for x in (m.metadata if isinstance(m, FieldInfo) else [m])]
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            out.append(f"≥ {m.ge}")
        elif isinstance(m, annotated_types.Gt):
            out.append(f"> {m.gt}")
        elif isinstance(m, annotated_types.Le):
            out.append(f"≤ {m.le}")
        elif isinstance(m, annotated_types.MinLen) and m.min_length:
            out.append(f"at least {m.min_length}")
        elif getattr(m, "pattern", None):
            out.append(f"matching `{m.pattern}`")
    return out


def type_text(annotation, metadata: list | None = None, sections: dict | None = None) -> str:
    """A reader's name for a field's type: ``"a" or "b"``, ``list of port``, ``domain name``."""
    metadata = list(metadata or [])
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return type_text(base, metadata + extra, sections)
    named = [_NAMED[m.func.__name__] for m in metadata
             if getattr(getattr(m, "func", None), "__name__", "") in _NAMED]
    limits = _constraints(metadata)
    if named:
        text = named[0]
    elif origin is typing.Literal:
        text = " or ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`"
                           for a in typing.get_args(annotation))
    elif origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        text = " or ".join(type_text(a, None, sections) for a in args)
        if len(args) < len(typing.get_args(annotation)):
            text += " (optional)"
    elif origin is list:
        text = "list of " + type_text(typing.get_args(annotation)[0], None, sections)
    elif origin is dict:
        k, v = typing.get_args(annotation)
        text = f"mapping of {type_text(k, None, sections)} to {type_text(v, None, sections)}"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        text = f"{annotation.__name__} (below)"
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        text = " or ".join(f"`{e.value}`" for e in annotation)
    else:
        text = _PLAIN.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return text + (f", {', '.join(limits)}" if limits else "")


def _models_in(annotation) -> list[tuple[type[BaseModel], str]]:
    """The models a field holds, each with the path suffix it adds (``[]`` for a list)."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    if origin is list:
        return [(m, s + "[]") for m, s in _models_in(typing.get_args(annotation)[0])]
    return []


def _default(field: FieldInfo, name: str, parent: BaseModel | None):
    if parent is not None:
        return True, getattr(parent, name)
    if field.default is not PydanticUndefined:
        return True, field.default
    if field.default_factory is not None:
        return True, field.default_factory()
    return False, None


def default_text(known: bool, value) -> str:
    if not known:
        return "**required**"
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, dict)) and not value:
        return "empty"
    if isinstance(value, list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{value}`"


def sections(root: type[BaseModel] = Params) -> list[Section]:
    """Every model a parameters file holds, depth first: ``dns`` then ``dns.update``."""
    def walk(sec: Section) -> list[Section]:
        out = [sec]
        for name, field in sec.model.model_fields.items():
            _, value = _default(field, name, sec.defaults)
            for model, suffix in _models_in(field.annotation):
                path = f"{sec.path}.{name}{suffix}" if sec.path else f"{name}{suffix}"
                out += walk(Section(path, model, value if isinstance(value, model) else None))
        return out
    return walk(Section("", root, None))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def undocumented(root: type[BaseModel] = Params) -> list[str]:
    """Keys with no description (the test wants none)."""
    return [f"{s.path + '.' if s.path else ''}{name}" for s in sections(root)
            for name, f in s.model.model_fields.items() if not (f.description or "").strip()]


def reference(root: type[BaseModel] = Params) -> str:
    lines = ["# Parameters", "",
             "Every key of a parameters file (`parameters/*.yaml`), written from the model in "
             "`mailops/core/params.py` by `python -m mailops.core.paramref --write`; a unit test "
             "fails when this page and the model differ. Relative paths resolve against the "
             "parameters file's directory; a secret reference is `file:PATH`, `file:PATH#key` "
             "(a key of a 0600 YAML mapping) or `env:NAME`, never the value. "
             "`parameters/example.yaml` is a commented production example, "
             "`parameters/lab.yaml` the lab's.", ""]
    for sec in sections(root):
        title = sec.path or "top level"
        lines += [f"## {title}", ""]
        doc = (sec.model.__doc__ or "").strip()
        if doc and sec.model.__doc__ is not BaseModel.__doc__:
            lines += [" ".join(doc.split()), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, f in sec.model.model_fields.items():
            known, value = _default(f, name, sec.defaults)
            lines.append(f"| `{name}` | {_cell(type_text(f.annotation, f.metadata))} | "
                         f"{_cell(default_text(known, value))} | {_cell(f.description or '')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mailops.core.paramref", description=__doc__)
    ap.add_argument("--write", action="store_true", help=f"write {PAGE}")
    args = ap.parse_args(argv)
    text = reference()
    if args.write:
        PAGE.parent.mkdir(exist_ok=True)
        PAGE.write_text(text)
        print(f"wrote {PAGE}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
