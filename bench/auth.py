"""IMAP login latency on the lab: dovecot's auth cache warm vs cold.

Cold: the user's cache entry is flushed before each login, so dovecot verifies
the hash (the chosen scheme and cost); warm: the same login again, answered
from the cache.  Times are of the LOGIN command alone, after TLS is up, and of
the whole connect + TLS + LOGIN.  Usage (lab up and provisioned):

    .venv/bin/python bench/auth.py [--logins 30]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailops.core.params import load_params  # noqa: E402
from mailops.core.resources.maildb import userdb  # noqa: E402
from mailops.provision.session import Session  # noqa: E402
from mailops.manage.users import set_password  # noqa: E402
from mailops.provision.verify import target_from  # noqa: E402

PARAMS = ROOT / "parameters" / "lab.yaml"


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def login_once(t, user) -> tuple[float, float]:
    t0 = time.perf_counter()
    m = t.imap_connect()
    t1 = time.perf_counter()
    m.login(user, t.passwords[user].reveal())
    t2 = time.perf_counter()
    m.logout()
    return t2 - t1, t2 - t0


def measure(s, t, user, logins):
    cold, cold_full, warm, warm_full = [], [], [], []
    for _ in range(logins):
        s.host.run(["doveadm", "auth", "cache", "flush", user])
        a, b = login_once(t, user)
        cold.append(a)
        cold_full.append(b)
        a, b = login_once(t, user)          # now cached
        warm.append(a)
        warm_full.append(b)
    return cold, cold_full, warm, warm_full


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--logins", type=int, default=30)
    args = ap.parse_args()
    params = load_params(PARAMS)
    t = target_from(params)
    user = params.mail.mailboxes[0].address
    reports = []
    with Session(params) as s:
        # the same password hashed at the chosen cost, then at other costs
        for label, mail in (("chosen", params.mail),
                            ("BLF-CRYPT cost 10", params.mail.model_copy(update={
                                "password_scheme": "BLF-CRYPT", "bcrypt_cost": 10})),
                            ("SHA512-CRYPT 5000", params.mail.model_copy(update={
                                "password_scheme": "SHA512-CRYPT", "sha512_rounds": 5000}))):
            s.params = params.model_copy(update={"mail": mail})
            set_password(s, user, t.passwords[user])
            stored = next(p for a, p, *_ in userdb(s.host, "dump")["mailboxes"] if a == user)
            scheme = stored.split("}")[0].lstrip("{")
            reports.append(report_of(f"{label}: {scheme}", args.logins,
                                     *measure(s, t, user, args.logins)))
        s.params = params
        set_password(s, user, t.passwords[user])       # back to the chosen cost
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "auth.json").write_text(json.dumps(reports, indent=2))


def report_of(scheme, logins, cold, cold_full, warm, warm_full) -> dict:
    ms = lambda v: round(v * 1000, 1)  # noqa: E731
    report = {"scheme": scheme, "logins": logins,
              "cold_login_ms": {"p50": ms(pct(cold, .5)), "p95": ms(pct(cold, .95))},
              "warm_login_ms": {"p50": ms(pct(warm, .5)), "p95": ms(pct(warm, .95))},
              "cold_connect_tls_login_ms": {"p50": ms(pct(cold_full, .5))},
              "warm_connect_tls_login_ms": {"p50": ms(pct(warm_full, .5))},
              "cold_vs_warm_p50": round(statistics.median(cold) / statistics.median(warm), 1)}
    print(f"IMAP LOGIN on the lab, {scheme}, {logins} logins each")
    print(f"  cold (cache flushed)  p50 {ms(pct(cold, .5)):7.1f} ms  p95 {ms(pct(cold, .95)):7.1f} ms"
          f"   with connect+TLS p50 {ms(pct(cold_full, .5)):.1f} ms")
    print(f"  warm (cached)         p50 {ms(pct(warm, .5)):7.1f} ms  p95 {ms(pct(warm, .95)):7.1f} ms"
          f"   with connect+TLS p50 {ms(pct(warm_full, .5)):.1f} ms")
    print(f"  cold/warm p50: {report['cold_vs_warm_p50']}x (goal: cached login p50 <= 10 ms)")
    return report


if __name__ == "__main__":
    main()
