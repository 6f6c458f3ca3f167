"""Backup time on the lab: a first borg backup of N messages, a second one with
nothing changed (deduplicated), and a third after 1% new mail, side by side.

The messages go to bob@example.test over LMTP (marked X-Mailops-Bench, expunged
afterwards); the archives go to a throwaway repository beside the real one on the
lab's backup host (same key, passphrase, compression and transport as the real
backups; deleted afterwards).  Usage (lab up and provisioned):

    .venv/bin/python bench/backup.py [--messages 2000]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailops.core.params import load_params  # noqa: E402
from mailops.provision.session import Session  # noqa: E402
from mailops.core.layout import BACKUP as PATHS  # noqa: E402

PARAMS = ROOT / "parameters" / "lab.yaml"
USER = "bob@example.test"

DELIVER = r'''
import random, smtplib, sys
first, n = int(sys.argv[2]), int(sys.argv[3])
words = ("the committee will meet on thursday to plan the spring market and every neighbour "
         "who grows vegetables or flowers is welcome to bring a table share seeds").split()
with smtplib.LMTP("127.0.0.1", 24) as c:
    for i in range(first, first + n):
        rnd = random.Random(i)
        body = "\r\n".join(" ".join(rnd.choice(words) for _ in range(12)) for _ in range(50))
        msg = (f"From: alice@lab.test\r\nTo: bob@example.test\r\nSubject: bench {i}\r\n"
               f"X-Mailops-Bench: yes\r\nMessage-ID: <bench-{i}@lab.test>\r\n\r\n{body}\r\n")
        c.sendmail("alice@lab.test", ["bob@example.test"], msg.encode())
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    args = ap.parse_args()
    params = load_params(PARAMS)
    repo = params.backup.repository.rsplit("/", 1)[0] + "/bench-" + \
        params.backup.repository.rsplit("/", 1)[1]
    n, more = args.messages, max(1, args.messages // 100)
    with Session(params) as s:
        h = s.host
        borg = lambda *a, timeout=1800: h.run([PATHS.wrapper, *a], timeout=timeout)  # noqa: E731

        def create(name):
            t0 = time.perf_counter()
            out = borg("create", "--json", "--compression", params.backup.compression,
                       f"{repo}::{name}", "/var/mail/vhosts").out
            took = time.perf_counter() - t0
            stats = json.loads(out)["archive"]["stats"]
            return {"seconds": round(took, 2), "original_mb": round(stats["original_size"] / 1e6, 1),
                    "deduplicated_mb": round(stats["deduplicated_size"] / 1e6, 2)}

        h.run(["python3", "-c", DELIVER, "bench_deliver", "0", str(n)], timeout=1800)
        h.run(["sh", "-c", f"BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=YES {PATHS.wrapper} delete "
                           f"{repo} >/dev/null 2>&1; true"])
        try:
            borg("init", "--encryption=repokey-blake2", repo)
            first = create("first")
            second = create("second")
            h.run(["python3", "-c", DELIVER, "bench_deliver", str(n), str(more)], timeout=600)
            third = create("third")
        finally:
            h.run(["sh", "-c", f"BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=YES {PATHS.wrapper} delete "
                               f"{repo} >/dev/null 2>&1; true"])
            h.run(["doveadm", "expunge", "-u", USER, "mailbox", "*", "header", "X-Mailops-Bench",
                   "yes"], check=False)
    report = {"messages": n, "added": more, "first": first, "second_unchanged": second,
              "third_after_1pct": third,
              "second_vs_first_time": round(second["seconds"] / first["seconds"], 3),
              "third_vs_first_time": round(third["seconds"] / first["seconds"], 3),
              "second_vs_first_stored": round(second["deduplicated_mb"] / first["deduplicated_mb"], 4)}
    print(f"borg backup of /var/mail/vhosts on the lab ({n} messages of ~4 KB, "
          f"{params.backup.compression}, over SSH to the backup lab host)")
    for label, r in (("first", first), ("second, unchanged", second),
                     (f"third, +{more} messages", third)):
        print(f"  {label:22} {r['seconds']:6.2f} s   original {r['original_mb']:6.1f} MB   "
              f"stored (deduplicated) {r['deduplicated_mb']:7.2f} MB")
    print(f"  second/first time {report['second_vs_first_time']}x, stored "
          f"{report['second_vs_first_stored']}x; third/first time {report['third_vs_first_time']}x")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "backup.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
