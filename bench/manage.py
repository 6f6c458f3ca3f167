"""Management at scale on the lab, measured side by side in one run.

1. Adding mailboxes: N in one call (one snapshot, passwords hashed on all cores,
   one transaction) vs one call per mailbox (a new connection, a snapshot, a
   hash and a transaction each, as `mailops user add` run once per address).
   The per-mailbox way is timed on a sample and its per-mailbox cost compared.
2. Listing: every mailbox with dovecot's quota figures, size on disk and last
   login, for a domain of --list mailboxes (rows added with one shared hash: the
   listing is measured, not the hashing).
Everything made here lives in a bench domain that is removed afterwards.

    .venv/bin/python bench/manage.py [--add 1000] [--single 20] [--list 10000]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailops.manage import accounts as manage, users  # noqa: E402
from mailops.core.layout import VHOSTS  # noqa: E402
from mailops.core.params import load_params  # noqa: E402
from mailops.core.secrets import Secret  # noqa: E402
from mailops.provision.session import Session  # noqa: E402

PARAMS = ROOT / "parameters" / "lab.yaml"
DOMAIN = "bench-manage.test"


def clean(params) -> None:
    with Session(params) as s:
        st = users.state(s)
        rows = tuple(manage.Row("mailboxes", "delete", {"address": a}) for a in st.mailboxes
                     if a.endswith("@" + DOMAIN))
        if DOMAIN in st.domains:
            rows += (manage.Row("domains", "delete", {"name": DOMAIN}),)
        if rows:
            users.apply(s, manage.Plan("bench clean-up", rows))
        s.host.run(["rm", "-rf", f"{VHOSTS}/{DOMAIN}"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--add", type=int, default=1000)
    ap.add_argument("--single", type=int, default=20)
    ap.add_argument("--list", type=int, default=10000)
    args = ap.parse_args()
    params = load_params(PARAMS)
    manage.PASSWORD_DIR = Path("/tmp/mailops-bench-passwords")
    clean(params)
    out: dict = {}
    with Session(params) as s:
        users.apply(s, users.plan_add_domain(s, DOMAIN))

    # 1a: one call for N
    t0 = time.perf_counter()
    with Session(params) as s:
        s.host.round_trips = 0
        users.apply(s, users.plan_add_mailboxes(s, [f"bulk{i}@{DOMAIN}" for i in range(args.add)]))
        bulk_trips = s.host.round_trips
    bulk = time.perf_counter() - t0
    # 1b: one call each
    trips = 0
    t0 = time.perf_counter()
    for i in range(args.single):
        with Session(params) as s:
            users.apply(s, users.plan_add_mailbox(s, f"single{i}@{DOMAIN}", None))
            trips += s.host.round_trips
    single = time.perf_counter() - t0
    out["add"] = {"bulk_mailboxes": args.add, "bulk_s": round(bulk, 2),
                  "bulk_ms_per_mailbox": round(1000 * bulk / args.add, 1),
                  "bulk_round_trips": bulk_trips,
                  "single_sample": args.single, "single_s": round(single, 2),
                  "single_ms_per_mailbox": round(1000 * single / args.single, 1),
                  "single_round_trips_per_mailbox": round(trips / args.single, 1),
                  "speedup": round((single / args.single) / (bulk / args.add), 1)}
    print(json.dumps(out["add"]))

    # 2: list a domain of --list mailboxes
    hashed = Secret("{SHA512-CRYPT}$6$rounds=5000$benchbenchbench$" + "x" * 86)
    with Session(params) as s:
        have = sum(a.endswith("@" + DOMAIN) for a in users.state(s).mailboxes)
        more = [(f"list{i}@{DOMAIN}", hashed, None) for i in range(max(0, args.list - have))]
        users.apply(s, manage.plan_add_mailboxes(users.state(s), more))
        for attempt in ("first (dovecot opens each mailbox once)", "again"):
            t0 = time.perf_counter()
            s.host.round_trips = 0
            df = users.mailboxes(s, DOMAIN)
            took = time.perf_counter() - t0
            out.setdefault("list", []).append({"run": attempt, "mailboxes": len(df),
                                               "seconds": round(took, 2),
                                               "round_trips": s.host.round_trips})
            print(json.dumps(out["list"][-1]))
    clean(params)
    res = ROOT / "bench" / "results" / "manage.json"
    res.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {res.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
