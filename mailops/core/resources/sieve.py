"""Global sieve scripts, installed compiled.

Dovecot runs global scripts as the mail user, who cannot write the compiled
binary next to a root-owned script: without a precompiled ``.svbin`` it
compiles on every delivery and logs an error each time.  A :class:`SieveScript`
is a file whose binary is part of its state: it is planned when the source
differs *or* the binary is missing or older than the source, and installed by
compiling a candidate first (``sievec``), so a script that does not compile is
refused with sievec's words and the live script is left as it was.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from .base import Action, Change, FactError
from .files import File, STAT_PATHS, parse_stat_paths

# per path: "fresh" when <name>.svbin exists and is not older than <name>.sieve
SIEVE_FRESH = r"""for p; do
  b=${p%.sieve}.svbin
  if [ -f "$b" ] && ! [ "$p" -nt "$b" ]; then echo fresh; else echo stale; fi
done
"""

# the script on stdin is compiled in a scratch directory beside it first; only
# a script that compiles replaces the live one, which is then compiled in place
# (a binary records its script's path: one compiled elsewhere counts as stale
# and dovecot would recompile it at every use)
SIEVE_INSTALL = r"""set -e
p=$1; mode=$2; owner=$3; group=$4
d=$(dirname -- "$p"); b=${p%.sieve}.svbin
t=$(mktemp -d "$d/.mailops-sieve.XXXXXX")
trap 'rm -rf -- "$t"' EXIT
cat >"$t/script.sieve"
if ! out=$(sievec "$t/script.sieve" "$t/script.svbin" 2>&1); then
  printf '%s\n' "$out" | sed "s#$t/script.sieve#$p#g" >&2
  echo "sievec refused $p; the installed script is unchanged" >&2
  exit 1
fi
chown -- "$owner:$group" "$t/script.sieve"
chmod -- "$mode" "$t/script.sieve"
sync -- "$t/script.sieve"
mv -f -- "$t/script.sieve" "$p"
sievec "$p" "$b"
chown -- "$owner:$group" "$b"
chmod -- "$mode" "$b"
"""


@dataclasses.dataclass(frozen=True)
class SieveScript(File):
    kind: ClassVar[str] = "sieve script"

    def __post_init__(self):
        super().__post_init__()
        if not self.path.endswith(".sieve"):
            raise ValueError(f"a sieve script's name ends in .sieve: {self.path!r}")

    @classmethod
    def fact_commands(cls, items):
        paths = [r.path for r in items]
        return [["sh", "-c", STAT_PATHS, "stat_paths", *paths],
                ["sh", "-c", SIEVE_FRESH, "sieve_fresh", *paths]]

    @classmethod
    def parse_facts(cls, items, results):
        stat, fresh = results
        for res in results:
            if not res.ok:
                raise FactError(f"reading {len(items)} sieve scripts failed: "
                                f"{res.err.strip()[-300:]}")
        facts = parse_stat_paths([r.path for r in items], stat.out)
        words = fresh.out.split()
        if len(words) != len(items):
            raise FactError(f"sieve_fresh answered {len(words)} words for {len(items)} scripts")
        return facts, {r.path: w == "fresh" for r, w in zip(items, words)}

    def compare(self, facts):
        stat, fresh = facts
        changes = super().compare(stat)
        if changes or fresh[self.path]:
            return changes
        return [Change(self, Action.UPDATE, "compiled binary missing or older than the script",
                       "", stat[self.path].content,
                       (f"{stat[self.path].mode:04o}", stat[self.path].owner,
                        stat[self.path].group))]

    def apply(self, host, change):
        host.run(["sh", "-c", SIEVE_INSTALL, "sieve_install", self.path, self.mode, self.owner,
                  self.group], stdin=self.content, timeout=60)

    def restore(self, host, change):
        if change.before is None:
            host.run(["rm", "-f", "--", self.path, self.path[:-len(".sieve")] + ".svbin"])
        else:
            mode, owner, group = change.before_attrs or (self.mode, self.owner, self.group)
            host.run(["sh", "-c", SIEVE_INSTALL, "sieve_install", self.path, mode, owner, group],
                     stdin=change.before, timeout=60)
