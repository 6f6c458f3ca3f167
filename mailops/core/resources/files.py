"""Files, directories and symlinks: one stat-and-read command for all of them."""
from __future__ import annotations

import base64
import dataclasses
import difflib
import hashlib
import re
from pathlib import Path
from typing import ClassVar, Sequence

from .base import Action, Change, FactError, Resource

_PATH = re.compile(r"^/[^\n\t\0]*$")
_MODE = re.compile(r"^0?[0-7]{3,4}$")

# One record per path, in order: a header line, and for a regular file its
# content in base64 on the next line.
STAT_PATHS = r"""for p; do
  if [ -L "$p" ]; then printf 'L %s\n' "$(readlink -- "$p")"
  elif [ -d "$p" ]; then printf 'D %s\n' "$(stat -c '%a %U %G' -- "$p")"
  elif [ -f "$p" ]; then printf 'F %s\n' "$(stat -c '%a %U %G %s' -- "$p")"; base64 -w0 -- "$p"; echo
  elif [ -e "$p" ]; then echo O
  else echo N; fi
done
"""


@dataclasses.dataclass(frozen=True)
class PathFact:
    kind: str                    # file, dir, link, other, missing
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    content: bytes | None = dataclasses.field(default=None, repr=False)
    target: str | None = None    # symlink target


def parse_stat_paths(paths: Sequence[str], out: str) -> dict[str, PathFact]:
    """Pure parser of STAT_PATHS' output."""
    lines = out.split("\n")
    facts: dict[str, PathFact] = {}
    i = 0
    for p in paths:
        if i >= len(lines):
            raise FactError(f"stat output ended before {p}")
        tag, _, rest = lines[i].partition(" ")
        i += 1
        if tag == "N":
            facts[p] = PathFact("missing")
        elif tag == "O":
            facts[p] = PathFact("other")
        elif tag == "L":
            facts[p] = PathFact("link", target=rest)
        elif tag == "D":
            mode, owner, group = rest.split(" ")
            facts[p] = PathFact("dir", int(mode, 8), owner, group)
        elif tag == "F":
            mode, owner, group, _size = rest.split(" ")
            facts[p] = PathFact("file", int(mode, 8), owner, group,
                                base64.b64decode(lines[i]))
            i += 1
        else:
            raise FactError(f"unexpected stat record {lines[i - 1]!r} for {p}")
    return facts


def _check_path(path: str) -> None:
    if not _PATH.fullmatch(path) or "/../" in path + "/":
        raise ValueError(f"path must be absolute and plain: {path!r}")


def _check_mode(mode: str) -> None:
    if not _MODE.fullmatch(mode):
        raise ValueError(f"mode must be octal like 0644: {mode!r}")


def unified_diff(path: str, before: bytes | None, after: bytes) -> str:
    try:
        old = (before or b"").decode()
        new = after.decode()
    except UnicodeDecodeError:
        return (f"binary content differs: sha256 "
                f"{hashlib.sha256(before or b'').hexdigest()[:12]} -> "
                f"{hashlib.sha256(after).hexdigest()[:12]}")
    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=path if before is not None else "/dev/null", tofile=path))


class _PathResource(Resource):
    """Shared by File, Directory and Link: one stat command for all paths."""

    path: str

    @property
    def key(self) -> str:
        return self.path

    @classmethod
    def fact_commands(cls, items):
        return [["sh", "-c", STAT_PATHS, "stat_paths", *[r.path for r in items]]]

    @classmethod
    def parse_facts(cls, items, results):
        res = results[0]
        if not res.ok:
            raise FactError(f"reading {len(items)} paths failed: {res.err.strip()[-300:]}")
        return parse_stat_paths([r.path for r in items], res.out)

    def _attr_changes(self, fact: PathFact) -> list[str]:
        diffs = []
        if fact.mode != int(self.mode, 8):
            diffs.append(f"mode {fact.mode:o} -> {int(self.mode, 8):o}")
        if (fact.owner, fact.group) != (self.owner, self.group):
            diffs.append(f"owner {fact.owner}:{fact.group} -> {self.owner}:{self.group}")
        return diffs


@dataclasses.dataclass(frozen=True)
class File(_PathResource):
    path: str
    content: bytes = dataclasses.field(repr=False)
    mode: str | None = None              # default: 0600 for a secret, else 0644
    owner: str = "root"
    group: str = "root"
    secret: bool = False                 # diff and content never shown
    notify: tuple[str, ...] = ()         # services to validate and reload when changed
    kind: ClassVar[str] = "file"

    def __post_init__(self):
        _check_path(self.path)
        if self.mode is None:
            object.__setattr__(self, "mode", "0600" if self.secret else "0644")
        _check_mode(self.mode)
        if isinstance(self.content, str):
            object.__setattr__(self, "content", self.content.encode())

    def compare(self, facts):
        fact: PathFact = facts[self.path]
        if fact.kind not in ("file", "missing"):
            raise FactError(f"{self.path} exists and is not a regular file ({fact.kind})")
        if fact.kind == "missing":
            return [Change(self, Action.CREATE, "does not exist", self._diff(None), None)]
        reasons = []
        if fact.content != self.content:
            reasons.append("content differs")
        reasons += self._attr_changes(fact)
        if not reasons:
            return []
        diff = self._diff(fact.content) if fact.content != self.content else ""
        return [Change(self, Action.UPDATE, "; ".join(reasons), diff, fact.content,
                       (f"{fact.mode:04o}", fact.owner, fact.group))]

    def _diff(self, before: bytes | None) -> str:
        if self.secret:
            return f"(secret content of {self.path} {'changes' if before else 'is created'}; not shown)"
        return unified_diff(self.path, before, self.content)

    def apply(self, host, change):
        host.write_file(self.path, self.content, mode=self.mode, owner=self.owner,
                        group=self.group)

    def restore(self, host, change):
        """Put the file back as ``change`` found it (rollback)."""
        if change.before is None:
            host.run(["rm", "-f", "--", self.path])
        else:
            mode, owner, group = change.before_attrs or (self.mode, self.owner, self.group)
            host.write_file(self.path, change.before, mode=mode, owner=owner, group=group)


@dataclasses.dataclass(frozen=True)
class Directory(_PathResource):
    path: str
    mode: str = "0755"
    owner: str = "root"
    group: str = "root"
    kind: ClassVar[str] = "directory"

    def __post_init__(self):
        _check_path(self.path)
        _check_mode(self.mode)

    def compare(self, facts):
        fact: PathFact = facts[self.path]
        if fact.kind == "missing":
            return [Change(self, Action.CREATE, "does not exist")]
        if fact.kind != "dir":
            raise FactError(f"{self.path} exists and is not a directory ({fact.kind})")
        reasons = self._attr_changes(fact)
        return [Change(self, Action.UPDATE, "; ".join(reasons))] if reasons else []

    def apply(self, host, change):
        host.run(["install", "-d", "-m", self.mode, "-o", self.owner, "-g", self.group,
                  self.path])
        # install -d leaves an existing directory's mode alone, and GNU chmod keeps a
        # directory's setgid bit (inherited under /var/mail) unless given 5 digits
        host.run(["chmod", "0" + self.mode.rjust(4, "0"), self.path])


@dataclasses.dataclass(frozen=True)
class Link(_PathResource):
    path: str
    target: str
    kind: ClassVar[str] = "link"

    def __post_init__(self):
        _check_path(self.path)

    def compare(self, facts):
        fact: PathFact = facts[self.path]
        if fact.kind == "link" and fact.target == self.target:
            return []
        if fact.kind not in ("link", "missing", "file"):
            raise FactError(f"{self.path} exists and is a {fact.kind}, not a link")
        reason = "does not exist" if fact.kind == "missing" else (
            f"points to {fact.target}" if fact.kind == "link" else "is a regular file")
        return [Change(self, Action.CREATE if fact.kind == "missing" else Action.UPDATE,
                       f"{reason}; wanted -> {self.target}")]

    def apply(self, host, change):
        tmp = f"{self.path}.mailops-new"
        host.run(["ln", "-sfn", self.target, tmp])
        host.run(["mv", "-fT", tmp, self.path])


class _LateFile(File):
    """A file whose content is read when planned, not when declared."""

    def _data(self) -> bytes:
        raise NotImplementedError

    def _wanted(self) -> File:
        return File(self.path, self._data(), self.mode, self.owner, self.group,
                    secret=self.secret, notify=self.notify)

    def compare(self, facts):
        return [dataclasses.replace(c, resource=self) for c in self._wanted().compare(facts)]

    def apply(self, host, change):
        self._wanted().apply(host, change)


@dataclasses.dataclass(frozen=True)
class SecretFile(_LateFile):
    """A file holding a secret from the secrets file (declaring needs no
    secrets; planning reads it), never shown in a diff."""
    content: bytes = dataclasses.field(default=b"", repr=False)
    secret_ref: str = dataclasses.field(default="", repr=False)
    base_dir: Path = dataclasses.field(default=Path("."), repr=False)
    secret: bool = True
    # the file's text around the secret ("{secret}"); empty: the secret alone
    template: str = dataclasses.field(default="", repr=False)
    kind: ClassVar[str] = "secret file"

    def _data(self) -> bytes:
        from mailops.core.secrets import resolve
        value = resolve(self.secret_ref, self.base_dir).reveal().strip("\n")
        if self.template:
            return self.template.replace("{secret}", value).encode()
        return value.encode() + b"\n"


@dataclasses.dataclass(frozen=True)
class CopiedFile(_LateFile):
    """A file copied from the controller (read when planned)."""
    content: bytes = dataclasses.field(default=b"", repr=False)
    source: Path = Path("/nonexistent")
    kind: ClassVar[str] = "file"

    def _data(self) -> bytes:
        try:
            return Path(self.source).read_bytes()
        except OSError as exc:
            raise FactError(f"{self.path}: cannot read {self.source} on this machine: "
                            f"{exc.strerror}") from None


# the new content on stdin is written beside the file and checked by the
# validator (its argv follows "--", with {} for the candidate's path); only a
# candidate that passes replaces the file
VALIDATED_WRITE = r"""set -e
p=$1; mode=$2; owner=$3; group=$4; shift 5
b=$(basename -- "$p")
case "$b" in *.*) ext=".${b##*.}" ;; *) ext="" ;; esac     # validators may go by the extension
t=$(mktemp "$(dirname -- "$p")/.mailops.XXXXXX$ext")
trap 'rm -f -- "$t"' EXIT
cat >"$t"
chown -- "$owner:$group" "$t"
chmod -- "$mode" "$t"
i=0
for a; do
  [ "$a" = "{}" ] && a=$t
  set -- "$@" "$a"; i=$((i + 1))
done
shift $i
if ! out=$("$@" 2>&1); then
  printf '%s\n' "$out" | sed "s#$t#$p#g" >&2
  echo "$1 refused the new $p; the installed file is unchanged" >&2
  exit 1
fi
sync -- "$t"
mv -f -- "$t" "$p"
trap - EXIT
"""


@dataclasses.dataclass(frozen=True)
class ValidatedFile(File):
    """A file checked by a command before it replaces the live one (for files
    no service reload validates, e.g. borgmatic's configuration)."""
    validate: tuple[str, ...] = ()        # argv; "{}" stands for the candidate file

    def __post_init__(self):
        super().__post_init__()
        if "{}" not in self.validate:
            raise ValueError(f"{self.path}: the validator must name the file as {{}}")

    def apply(self, host, change):
        host.run(["sh", "-c", VALIDATED_WRITE, "validated_write", self.path, self.mode,
                  self.owner, self.group, "--", *self.validate], stdin=self.content, timeout=120)
