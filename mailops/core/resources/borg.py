"""The borg repository as a resource: initialized (repokey-blake2) and holding
at least one archive.  Its facts come from the repository host itself, through
the server's ``mailops-borg`` wrapper (key, known host and passphrase from the
server's files, never argv)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import ClassVar

from .base import Action, Change, FactError, Resource

# ok ARCHIVE | empty | missing | nohelper | error TEXT.  A last run that succeeded
# proves the repository (no connection to the repository host on every plan);
# otherwise borg asks the repository itself.
REPO_STATE = r"""w=$1; state=$2
[ -x "$w" ] || { echo nohelper; exit 0; }
if [ -f "$state" ] && grep -q '"exit": 0}' "$state"; then echo "ok (last run succeeded)"; exit 0; fi
if out=$("$w" list --last 1 --short 2>&1); then
  if [ -n "$out" ]; then echo "ok $out"; else echo empty; fi
elif printf '%s' "$out" | grep -q "does not exist"; then
  echo missing
else
  echo "error $(printf '%s' "$out" | tail -n 3 | tr '\n' ' ')"
fi
"""

# init when the repository does not exist (keep it when it does), then a first backup.
# A repository that exists and holds archives, met by a host that holds no mail, is a
# server's backups met by a new host: a backup now would make an empty archive the
# latest (the one a rebuild takes), so it is refused and `mailops rebuild` named.
REPO_INIT = r"""w=$1; run=$2; log=$3; mail=$4
if ! out=$("$w" init --encryption=repokey-blake2 --make-parent-dirs 2>&1); then
  printf '%s' "$out" | grep -q "already exists" || { printf '%s\n' "$out" >&2; exit 1; }
  if [ -z "$(find "$mail" -type f 2>/dev/null | head -n 1)" ] &&
     last=$("$w" list --last 1 --short 2>/dev/null) && [ -n "$last" ]; then
    echo "the repository holds a server's archives (latest $last) and this host holds no" \
      "mail: a backup now would make an empty archive the latest. Run \`mailops rebuild\`" \
      "to bring the server back from them, or point backup.repository at a new" \
      "repository to start anew; nothing was backed up" >&2
    exit 3
  fi
fi
"$run" || { echo "the first backup failed (exit $?); see $log:" >&2
            tail -n 15 "$log" >&2; exit 1; }
"""


@dataclasses.dataclass(frozen=True)
class BorgRepository(Resource):
    repository: str
    wrapper: str = "/usr/local/sbin/mailops-borg"
    run: str = "/usr/local/sbin/mailops-backup"
    state: str = "/var/lib/mailops/backup-last.json"
    log: str = "/var/log/mailops/backup.log"
    mail: str = "/var/mail/vhosts"        # the mail store: empty on a new host
    kind: ClassVar[str] = "borg repository"

    @property
    def key(self) -> str:
        return self.repository

    @classmethod
    def fact_commands(cls, items):
        return [["sh", "-c", REPO_STATE, "borg_repo_state", r.wrapper, r.state] for r in items]

    @classmethod
    def parse_facts(cls, items, results):
        facts = {}
        for r, res in zip(items, results):
            if not res.ok:
                raise FactError(f"reading {r.label} failed: {res.err.strip()[-300:]}")
            word, _, rest = res.out.strip().partition(" ")
            facts[r.repository] = (word, rest)
        return facts

    def compare(self, facts):
        state, detail = facts[self.repository]
        if state == "ok":
            return []
        reason = {"empty": "no archive yet: a first backup",
                  "missing": "no repository yet: init (repokey-blake2) and a first backup",
                  "nohelper": "not set up yet: init (kept if it exists) and a first backup",
                  }.get(state, f"not readable ({detail.strip()[:200]}): init and a first backup")
        return [Change(self, Action.CREATE, reason)]

    def apply(self, host, change):
        host.run(["sh", "-c", REPO_INIT, "borg_repo_init", self.wrapper, self.run, self.log,
                  self.mail], timeout=1800)


# the repository id borg recorded on the server for this location (borg keeps one
# security directory per repository it has opened: its name is the id, its ``location``
# file the URL); read on the server, no connection to the repository host
REPO_ID = r"""loc=$1
for d in "${BORG_SECURITY_DIR:-${BORG_CONFIG_DIR:-$HOME/.config/borg}/security}"/*/; do
  [ -f "$d/location" ] && [ "$(cat "$d/location")" = "$loc" ] && basename "$d"
done
exit 0
"""


@dataclasses.dataclass(frozen=True)
class BorgKeyCopy(Resource):
    """A copy of the repository key on this machine (``borg key export``, 0600):
    with ``repokey`` the key lives in the repository, and a damaged one loses
    every archive; ``borg key import`` puts the copy back.  Declared after the
    repository.  A copy whose repository id (its first line) is not the id of the
    repository the server uses is the key of another repository (one that was
    initialized anew): exported again.  Planning reads the copy here and one small
    file on the server, never the repository host."""
    path: Path
    wrapper: str = "/usr/local/sbin/mailops-borg"
    repository: str = ""
    kind: ClassVar[str] = "borg key copy"

    @property
    def key(self) -> str:
        return str(self.path)

    @classmethod
    def fact_commands(cls, items):
        return [["sh", "-c", REPO_ID, "borg_repo_id", r.repository] for r in items]

    @classmethod
    def parse_facts(cls, items, results):
        facts = {}
        for r, res in zip(items, results):
            state = read_key_copy(r.path)
            ids = res.out.split() if res.ok else []
            if state == "ok" and r.repository and ids:
                copy_id = r.path.read_bytes()[9:].split(b"\n", 1)[0].decode(errors="replace").strip()
                if copy_id not in ids:
                    state = (f"the copy is the key of repository {copy_id[:12]}…, the server's "
                             f"repository is {ids[0][:12]}…")
            facts[r.key] = state
        return facts

    def compare(self, facts):
        state = facts[self.key]
        if state == "ok":
            return []
        verb = "export the repository key again to" if "the copy is the key" in state \
            else "export the repository key to"
        return [Change(self, Action.CREATE, f"{state}: {verb} {self.path}")]

    def apply(self, host, change):
        key = export_key(host, self.wrapper)
        write_private(self.path, key)


def read_key_copy(path: Path) -> str:
    """'ok', or why the copy is not usable (pure but for reading the file)."""
    try:
        st = path.stat()
        head = path.read_bytes()[:9]
    except OSError:
        return "no copy of the repository key on this machine"
    if st.st_mode & 0o077:
        return f"the key copy is readable by others (mode {st.st_mode & 0o777:o})"
    return "ok" if head == b"BORG_KEY " else "the key copy is not a borg key export"


def export_key(host, wrapper: str) -> bytes:
    """The repository's key as ``borg key export`` writes it (repository id first)."""
    key = host.run([wrapper, "key", "export", "::", "/dev/stdout"], timeout=120).stdout
    if not key.startswith(b"BORG_KEY "):
        raise FactError(f"borg key export gave no key ({len(key)} bytes)")
    return key


def write_private(path: Path, data: bytes) -> None:
    """Written 0600 from the start, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
