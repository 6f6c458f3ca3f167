"""The benchmarks that need no lab, run in their quick modes so that they cannot rot
(an import moved, a query changed): each must finish and agree with itself.  The
figures they print are not judged here; docs/benchmarks.md holds the real runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench(name: str, *args: str, out: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / name), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "MAILOPS_BENCH_RESULTS": str(out)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_pflog_bench_quick_mode_agrees_with_pflogsumm(tmp_path):
    bench("pflog.py", "--lines", "4000", out=tmp_path)
    result = json.loads((tmp_path / "pflog.json").read_text())
    assert result["grand_totals_equal"] is True


def test_insight_bench_quick_mode_counts_the_same_rows_both_ways(tmp_path):
    bench("insight.py", "--per-day", "200", "--days", "3", out=tmp_path)
    for kind in json.loads((tmp_path / "insight.json").read_text()):
        assert kind["duckdb"]["rows"] == kind["pandas"]["rows"] == 600, kind
