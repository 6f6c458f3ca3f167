"""Spam and ham learning as the server sees it: rspamd's learned counters, the
learn helper's log, and an end-to-end check of the helper's credentials.

A failed learn does not fail the user's IMAP MOVE (dovecot only logs it), so
these are where a broken learning path shows.
"""
from __future__ import annotations

import dataclasses
import json
import re

from mailops.core.layout import LEARN_LOG, PIPE_DIR

# rspamd's Bayes statistics in redis: the RS hash counts learns per class
COUNTERS = ["redis-cli", "--raw", "HMGET", "RS", "learns_spam", "learns_ham"]
HELPER = f"{PIPE_DIR}/mailops-learn"
_LINE = re.compile(r"^(?P<time>\S+) (?P<kind>spam|ham) user=(?P<user>\S+) status=(?P<status>\S+) "
                   r"outcome=(?P<outcome>[a-z-]+)(?: detail=(?P<detail>.*))?$")


@dataclasses.dataclass(frozen=True)
class LearnEvent:
    time: str
    kind: str
    user: str
    status: str
    outcome: str      # learned, already-learned, skipped, failed
    detail: str = ""


def parse_counters(out: str) -> dict[str, int]:
    values = out.split("\n")[:2]
    if len(values) != 2:
        raise ValueError(f"redis HMGET answered {out!r}")
    return {kind: int(v) if v.strip().isdigit() else 0 for kind, v in zip(("spam", "ham"), values)}


def parse_log(text: str) -> list[LearnEvent]:
    events = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            d = m.groupdict()
            events.append(LearnEvent(d["time"], d["kind"], d["user"], d["status"], d["outcome"],
                                     (d["detail"] or "").strip("'\"")))
    return events


def counters(host) -> dict[str, int]:
    """How many messages rspamd has learned as spam and as ham."""
    return parse_counters(host.run(COUNTERS).out)


def events(host, last: int = 200) -> list[LearnEvent]:
    res = host.run(["tail", "-n", str(last), LEARN_LOG], check=False)
    return parse_log(res.out) if res.ok else []


def check_credentials(host) -> dict:
    """Run the helper as the mail user against the controller's /stat: proves the
    user can read the password, the controller accepts it, and answers."""
    res = host.run(["runuser", "-u", "vmail", "--", HELPER, "check"], timeout=30)
    return json.loads(res.out)


@dataclasses.dataclass(frozen=True)
class LearnSummary:
    counts: dict[str, int] | None
    events: tuple[LearnEvent, ...]
    note: str = ""

    def __str__(self) -> str:
        if self.counts is None:
            return f"learning: {self.note}"
        failed = sum(e.outcome == "failed" for e in self.events)
        return (f"learned spam {self.counts['spam']}, ham {self.counts['ham']}; last "
                f"{len(self.events)} learn calls, {failed} failed")

    def _repr_html_(self) -> str:
        from mailops.core.tables import html_table
        rows = [{"time": e.time, "learned as": e.kind, "user": e.user, "outcome": e.outcome,
                 "detail": e.detail} for e in self.events[-10:]]
        return html_table(rows, ["time", "learned as", "user", "outcome", "detail"],
                          title=str(self))


def summary(host, last: int = 200) -> LearnSummary:
    """For the 65-sieve notebook: the counters and the last learn calls; on a host
    where learning is not set up yet, says so instead of failing."""
    res = host.run(COUNTERS, check=False)
    if not res.ok:
        return LearnSummary(None, (), "not set up yet (no redis answering)")
    return LearnSummary(parse_counters(res.out), tuple(events(host, last)))
