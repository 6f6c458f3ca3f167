#!/usr/bin/env python3
"""A year of rspamd history in the store: monthly and yearly tables, side by side.

    .venv/bin/python bench/insight.py [--per-day 30000] [--days 365]

Writes a synthetic store (one parquet part per day, the layout `mailops collect`
writes; `bench/results/insight-store/`, reused when it exists), then times each
table two ways in separate processes, measuring their peak RSS:
  duckdb   mailops.insight.queries's queries (partition pruning, aggregation in DuckDB)
  pandas   the naive way: read the period's parts into one frame, then group
and prints the ratios.  Results: bench/results/insight.json.
"""
import argparse
import os
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("MAILOPS_BENCH_RESULTS", ROOT / "bench" / "results"))

ACTIONS = ["no action", "add header", "reject", "greylist", "soft reject"]
SYMBOLS = ["MIME_GOOD", "BAYES_SPAM", "BAYES_HAM", "R_SPF_ALLOW", "DMARC_POLICY_ALLOW",
           "RCVD_COUNT_ONE", "ARC_NA", "FROM_NO_DN", "MID_RHS_MATCH_FROM", "RBL_SPAMHAUS"]


def build(store: Path, per_day: int, days: int, start: dt.date) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(1)
    for d in range(days):
        day = start + dt.timedelta(days=d)
        base = dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp()
        t = np.sort(base + rng.random(per_day) * 86400)
        score = np.round(rng.gamma(1.2, 2.5, per_day) - 1, 2)
        action = np.where(score >= 15, 2, np.where(score >= 6, 1, np.where(score >= 4, 3, 0)))
        table = pa.table({
            "time": pa.array((t * 1e6).astype("int64"), pa.timestamp("us", tz="UTC")),
            "message_id": pa.array([f"{day:%Y%m%d}.{i}@x" for i in range(per_day)]),
            "action": pa.array(np.array(ACTIONS)[action]),
            "score": score, "required_score": np.full(per_day, 15.0),
            "is_skipped": np.zeros(per_day, bool), "scan_ms": rng.gamma(2, 3, per_day),
            "size": rng.integers(500, 200_000, per_day),
            "ip": pa.array([f"203.0.113.{i % 250}" for i in range(per_day)]),
            "sender_smtp": pa.array([f"s@d{i % 900}.example" for i in range(per_day)]),
            "sender_mime": pa.array([""] * per_day), "rcpt": pa.array(["u@lab.test"] * per_day),
            "user": pa.array(["unknown"] * per_day), "subject": pa.array(["s"] * per_day)})
        part = store / "rspamd" / "host=mx1" / f"day={day}"
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, part / "day.parquet", compression="zstd")
    (store / "state").mkdir(parents=True, exist_ok=True)
    (store / "state" / "mx1.json").write_text(json.dumps({"last_collect": time.time()}))


def child(way: str, store: str, kind: str, on: str) -> None:
    import pandas as pd
    from mailops.insight import queries as mi
    from mailops.insight.store import Store
    s = Store(store)
    p = mi.period_for(kind, on)
    t0 = time.perf_counter()
    if way == "duckdb":
        counts = mi.action_counts(s, "mx1", p)
        by_month = mi.spam_ratio_by_month(s, "mx1", p)
        rows = int(counts["messages"].sum())
        extra = len(by_month)
    else:
        days = [s.day_dir("rspamd", "mx1", p.start + dt.timedelta(days=i)) for i in range(p.days)]
        frame = pd.concat([pd.read_parquet(d) for d in days if d.exists()])
        counts = frame.groupby("action").size()
        frame["month"] = frame["time"].dt.to_period("M")
        spam = frame["action"].isin(["reject", "add header", "rewrite subject"])
        by_month = spam.groupby(frame["month"]).mean()
        rows = int(counts.sum())
        extra = len(by_month)
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"way": way, "kind": kind, "rows": rows, "months": extra,
                      "seconds": round(secs, 3), "peak_rss_mib": round(rss, 1)}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-day", type=int, default=30_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--child", nargs=4)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return 0
    store = OUT / "insight-store"
    start = dt.date(2025, 1, 1)
    marker = store / f".built-{a.per_day}-{a.days}"
    if not marker.exists():
        import shutil
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        build(store, a.per_day, a.days, start)
        marker.touch()
        print(f"built {a.per_day * a.days:,} rows in {time.perf_counter() - t0:.1f} s")
    results = []
    # a day inside the history (mid-June for a year of it; the quick mode has days)
    on = (start + dt.timedelta(days=min(165, a.days // 2))).isoformat()
    for kind in ("monthly", "yearly"):
        pair = {}
        for way in ("duckdb", "pandas"):
            out = subprocess.run([sys.executable, __file__, "--child", way, str(store), kind, on],
                                 capture_output=True, text=True, check=True).stdout
            pair[way] = json.loads(out.strip().splitlines()[-1])
        if pair["duckdb"]["rows"] != pair["pandas"]["rows"]:
            print(f"MISMATCH {kind}: {pair}")
            return 1
        ratio = pair["pandas"]["seconds"] / pair["duckdb"]["seconds"]
        mem = pair["pandas"]["peak_rss_mib"] / pair["duckdb"]["peak_rss_mib"]
        print(f"{kind:8} {pair['duckdb']['rows']:>11,} rows: duckdb {pair['duckdb']['seconds']:6.2f} s "
              f"{pair['duckdb']['peak_rss_mib']:7.0f} MiB | pandas {pair['pandas']['seconds']:6.2f} s "
              f"{pair['pandas']['peak_rss_mib']:7.0f} MiB | {ratio:.1f}x faster, {mem:.1f}x less memory")
        results.append({"kind": kind, **{w: pair[w] for w in pair}, "speedup": round(ratio, 2),
                        "memory_ratio": round(mem, 2)})
    OUT.mkdir(exist_ok=True)
    (OUT / "insight.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
