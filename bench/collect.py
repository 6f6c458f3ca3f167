#!/usr/bin/env python3
"""`mailops collect` on the lab server when nothing changed, and after 100 messages.

    .venv/bin/python bench/collect.py [--params parameters/lab.yaml] [--runs 10]

Into a scratch store (bench/results/collect-store): a first collection (everything
the server holds), then --runs collections of an unchanged server (median time,
round trips), then one after 100 messages arrived.  Results: bench/results/collect.json.
"""
import argparse
import json
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"


def main() -> int:
    from mailops.provision import verify
    from mailops.insight.collect import collect
    from mailops.provision.session import open_session
    from mailops.insight.store import Store
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default=str(ROOT / "parameters" / "lab.yaml"))
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    store = Store(OUT / "collect-store")
    shutil.rmtree(store.root, ignore_errors=True)
    with open_session(a.params) as s:
        first = collect(s, store)
        print(f"first: {sum(first.added.values()):,} rows, {first.round_trips} round trips, "
              f"{first.seconds:.2f} s")
        idle = [collect(s, store) for _ in range(a.runs)]
        med = statistics.median(r.seconds for r in idle)
        trips = max(r.round_trips for r in idle)
        print(f"unchanged: median {med * 1000:.0f} ms over {a.runs} runs, {trips} round trip(s)")
        t = verify.target_from(s.params)
        user = s.params.mail.mailboxes[0].address
        with t.smtp(587) as smtp:
            smtp.login(user, t.passwords[user].reveal())
            for i in range(100):
                msg = verify.message(user, user, uuid.uuid4().hex)
                smtp.send_message(msg, user, [user])
        time.sleep(3)
        after = collect(s, store)
        print(f"after 100 messages: {after.added}, {after.seconds * 1000:.0f} ms")
    OUT.mkdir(exist_ok=True)
    (OUT / "collect.json").write_text(json.dumps({
        "first_rows": sum(first.added.values()), "first_seconds": first.seconds,
        "unchanged_median_s": med, "unchanged_round_trips": trips,
        "after_100": after.added, "after_100_s": after.seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
