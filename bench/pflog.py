"""Postfix log figures: `mailops logs summary` (its default engine, the compiled one when
built; and the polars and pure-Python stream engines) vs Debian's pflogsumm, side by side
in one run, on the same file (a synthetic log of --lines lines from tests/pflog_corpus.py,
or FILE), each in its own process with its own peak RSS; the grand totals must be equal.

    .venv/bin/python bench/pflog.py [--lines 1000000] [FILE]
"""
from __future__ import annotations

import argparse
import os
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "unit"))


# the line-by-line reference engine (mailops.insight.pflog.Summary), timed the same way
STREAM = ("import sys, json; from mailops.insight import pflog; "
          "print(json.dumps(pflog.summarize(sys.argv[1:]).grand_totals()))")


def timed(argv: list[str]) -> tuple[float, str, int]:
    """Seconds, stdout and this child's own peak RSS in KiB (``wait4``: not the other
    children's; the parent stays small, so a fork's copy of it does not count)."""
    import os
    import tempfile as tf
    with tf.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{argv[:3]} exited {proc.returncode}")
        out.seek(0)
        return seconds, out.read().decode(), usage.ru_maxrss


class _Given:
    """A summary's dict, for test_pflog.ours (which reads .to_dict())."""

    def __init__(self, d):
        self.d = d

    def to_dict(self):
        return self.d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("file", nargs="?")
    args = ap.parse_args()
    from test_pflog import parse_pflogsumm, ours
    with tempfile.TemporaryDirectory() as d:
        log = Path(args.file) if args.file else Path(d) / "postfix.log"
        if not args.file:         # written by a child: this process stays small
            subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "import pflog_corpus; pflog_corpus.write(sys.argv[2], "
                            "int(sys.argv[3]), 'maillog', seed=11, days=28)",
                            str(ROOT / "tests"), str(log), str(args.lines // 4)], check=True)
            n = sum(1 for _ in open(log, "rb"))
        else:
            n = sum(1 for _ in open(log, "rb"))
        # each in its own process, one after the other, lowest peak RSS first
        # (RUSAGE_CHILDREN's peak is the highest of every child so far)
        cli = [sys.executable, "-m", "mailops.cli.main", "logs", "summary", "--json"]
        stream_s, stream_out, stream_rss = timed([sys.executable, "-c", STREAM, str(log)])
        ours_s, ours_out, rss = timed(cli + [str(log)])
        polars_s, polars_out, polars_rss = timed(cli + ["--engine", "polars", str(log)])
        theirs_s, theirs_out, _ = timed(["pflogsumm", "--iso-date-time", str(log)])
        fast = json.loads(ours_out)
        stream = json.loads(stream_out)
        totals = {"grand_totals": stream, "per_day": [], "per_hour": [], "days": 1,
                  "deliveries_by_recipient_domain": {}, "messages_by_sender_domain": {},
                  "top_reject_reasons": [], "warnings_by_program": {}, "sasl_failures_by_ip": {}}
        same = ours(_Given(totals))["totals"] == parse_pflogsumm(theirs_out)["totals"]
        same = same and fast["grand_totals"] == stream == json.loads(polars_out)["grand_totals"]
    if not same:
        raise SystemExit("the grand totals differ from pflogsumm's")
    from mailops.insight import pflogc
    out = {"lines": n, "engine": "compiled" if pflogc.available() else "auto (not compiled)",
           "pflogsumm_s": round(theirs_s, 2), "mailops_s": round(ours_s, 2),
           "mailops_polars_s": round(polars_s, 2), "mailops_stream_s": round(stream_s, 2),
           "speedup": round(theirs_s / ours_s, 2), "polars_speedup": round(theirs_s / polars_s, 2),
           "stream_speedup": round(theirs_s / stream_s, 2),
           "mailops_lines_per_s": round(n / ours_s),
           "pflogsumm_lines_per_s": round(n / theirs_s),
           "mailops_peak_rss_mib": round(rss / 1024),
           "polars_peak_rss_mib": round(polars_rss / 1024),
           "stream_peak_rss_mib": round(stream_rss / 1024), "grand_totals_equal": same}
    print(json.dumps(out, indent=2))
    results = Path(os.environ.get("MAILOPS_BENCH_RESULTS", ROOT / "bench" / "results"))
    results.mkdir(parents=True, exist_ok=True)
    (results / "pflog.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
