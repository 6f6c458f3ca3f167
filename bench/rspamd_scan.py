"""rspamd scan time per message on the lab, resolving through the lab host's own
unbound (no fuzzy_check, no network beyond the lab).

N distinct plain-text messages (natural sentences, a few links to lab domains)
are posted to rspamd's normal worker (/checkv2) from the server itself, one at a
time; the time of each request is taken on the server, so SSH is not in it.  Two
passes side by side: the first meets cold DNS and caches, the second the same
messages again.  Usage (lab up and provisioned):

    .venv/bin/python bench/rspamd_scan.py [--messages 300]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailops.core.params import load_params  # noqa: E402
from mailops.provision.session import Session  # noqa: E402

PARAMS = ROOT / "parameters" / "lab.yaml"

SCAN = r'''
import json, random, statistics, sys, time, urllib.request
n = int(sys.argv[2])   # argv[1] is the helper's name
words = ("the committee will meet on thursday to plan the spring market and every neighbour "
         "who grows vegetables or flowers is welcome to bring a table share seeds and talk "
         "about the new water tank near the old library").split()
def message(i):
    rnd = random.Random(i)
    body = "\n".join(" ".join(rnd.choice(words) for _ in range(14)).capitalize() + "."
                     for _ in range(8))
    return (f"From: alice@lab.test\r\nTo: bob@example.test\r\nSubject: note {i}\r\n"
            f"Message-ID: <bench-{i}@lab.test>\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
            f"See https://www.lab.test/notes/{i} and http://example.test/market\r\n").encode()
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def scan(msg):
    req = urllib.request.Request("http://127.0.0.1:11333/checkv2", data=msg, method="POST",
                                 headers={"IP": "198.51.100.1", "From": "alice@lab.test",
                                          "Rcpt": "bob@example.test", "Helo": "gw.lab.test"})
    t0 = time.perf_counter()
    with opener.open(req, timeout=30) as r:
        reply = json.load(r)
    return time.perf_counter() - t0, reply.get("time_real", 0), reply["action"]
msgs = [message(i) for i in range(n)]
out = {}
for p in ("first", "second"):
    res = [scan(m) for m in msgs]
    out[p] = {"wall": [r[0] for r in res], "rspamd": [r[1] for r in res],
              "actions": sorted(set(r[2] for r in res))}
json.dump(out, sys.stdout)
'''


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    args = ap.parse_args()
    params = load_params(PARAMS)
    with Session(params) as s:
        raw = json.loads(s.host.run(["python3", "-c", SCAN, "bench_scan", str(args.messages)],
                                    timeout=1800).out)
    ms = lambda v: round(v * 1000, 1)  # noqa: E731
    report = {"messages": args.messages}
    print(f"rspamd scan on the lab ({args.messages} distinct messages, local unbound, "
          "request timed on the server)")
    for p in ("first", "second"):
        w = raw[p]["wall"]
        report[p] = {"p50_ms": ms(pct(w, .5)), "p95_ms": ms(pct(w, .95)),
                     "rspamd_time_real_p50_ms": ms(pct(raw[p]["rspamd"], .5)),
                     "actions": raw[p]["actions"]}
        print(f"  {p:6} pass: p50 {ms(pct(w, .5)):6.1f} ms  p95 {ms(pct(w, .95)):6.1f} ms"
              f"  (rspamd's own time_real p50 {ms(pct(raw[p]['rspamd'], .5)):.1f} ms;"
              f" actions {', '.join(raw[p]['actions'])})")
    report["first_vs_second_p50"] = round(pct(raw["first"]["wall"], .5)
                                          / pct(raw["second"]["wall"], .5), 2)
    report["p95_vs_p50_first"] = round(pct(raw["first"]["wall"], .95)
                                       / pct(raw["first"]["wall"], .5), 2)
    print(f"  first/second pass p50: {report['first_vs_second_p50']}x;"
          f" p95/p50 (first pass): {report['p95_vs_p50_first']}x")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rspamd_scan.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
