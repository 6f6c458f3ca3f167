"""The mail path under load on the lab, side by side with postfix alone, and the
same path through restarts.

Throughput: ``smtp-source`` (postfix's C load generator, run inside the lab
against the lab's public address, so mail arrives as from outside: not in
mynetworks) sends N messages of 4 KB over C parallel clients, one SMTP
connection per message, to

  (a) postfix alone: a temporary smtpd on port 2525 with no milter, every
      message discarded after the queue (``content_filter=discard:``);
  (b) the full path: port 25, rspamd milter, LMTP into dovecot, global sieve,
      mdbox.

The two alternate for R rounds; each run ends when every message is delivered
(or discarded) and the queue is empty.  Reported: msgs/s per run, medians, the
paired ratio (b)/(a) per round and its median, and server CPU per message per
daemon family (postfix, rspamd, dovecot, redis; processes grouped by ancestry,
reaped children counted through their master's cutime/cstime).

Restarts (``--restart``): 20 client threads on this machine that retry like an
MTA (a 4xx or a refused connection is retried after a second) send unique
messages for 25 s; rspamd is restarted at about 5 s and dovecot at about 15 s.
Reported: accepted, lost (accepted, never delivered), duplicated (delivered
more than once), unscanned (delivered without rspamd's header), deferrals
"delivery temporarily suspended", and the time from the last restart until
every accepted message is in the mailbox and until the queue is empty
(``--mailops-reload``: the same load through two applies of mailops that reload
postfix and dovecot).  Usage (lab up and provisioned):

    .venv/bin/python bench/mailpath.py [--messages 5000] [--clients 20] [--rounds 3] [--restart]
        [--mailops-reload]
"""
from __future__ import annotations

import argparse
import collections
import json
import smtplib
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailops.core.params import load_params  # noqa: E402
from mailops.provision.session import Session  # noqa: E402

PARAMS = ROOT / "parameters" / "lab.yaml"
RCPT = "alice@lab.test"
BENCH_PORT = 2525

# CPU seconds per daemon family, from /proc: processes grouped by their master
CPU = r'''
import json, os
tick = os.sysconf("SC_CLK_TCK")
procs = {}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        continue
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2:].split()
    ppid = int(rest[1])
    ut, st, cut, cst = (int(x) for x in rest[11:15])
    procs[int(pid)] = (comm, ppid, ut + st, cut + cst)
masters = {}
for pid, (comm, ppid, own, kids) in procs.items():
    if comm == "master" or comm == "dovecot" or comm == "redis-server" or \
            (comm.startswith("rspamd") and procs.get(ppid, ("",))[0] != comm):
        fam = {"master": "postfix", "dovecot": "dovecot", "redis-server": "redis"}.get(comm, "rspamd")
        masters[pid] = fam
def family(pid):
    seen = 0
    while pid in procs and seen < 50:
        if pid in masters:
            return masters[pid]
        pid = procs[pid][1]
        seen += 1
    return None
out = {}
for pid, (comm, ppid, own, kids) in procs.items():
    fam = family(pid)
    if fam:
        out[fam] = out.get(fam, 0) + own + (kids if pid in masters else 0)
print(json.dumps({k: v / tick for k, v in out.items()}))
'''

# count the delivered bench messages (all folders) of RCPT with this subject
COUNT = r'''doveadm search -u "$1" mailbox '*' subject "$2" | wc -l'''
QUEUE_EMPTY = r'''[ -z "$(postqueue -j)" ]'''


def cpu(h) -> dict[str, float]:
    return json.loads(h.run(["python3", "-c", CPU, "bench_cpu"]).out)


def wait_until(h, argv, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if h.run(argv, check=False).ok:
            return True
        time.sleep(0.2)
    return False


def delivered(h, subject: str) -> int:
    return int(h.run(["sh", "-c", COUNT, "bench_count", RCPT, subject]).out.strip() or 0)


def setup(h) -> None:
    h.run(["postconf", "-M", f"{BENCH_PORT}/inet={BENCH_PORT} inet n - y - - smtpd"])
    h.run(["postconf", "-P", f"{BENCH_PORT}/inet/content_filter=discard:bench",
           f"{BENCH_PORT}/inet/smtpd_milters=", f"{BENCH_PORT}/inet/syslog_name=postfix/bench"])
    h.run(["postfix", "reload"])
    time.sleep(1)


def teardown(h) -> None:
    h.run(["postconf", "-MX", f"{BENCH_PORT}/inet"], check=False)
    h.run(["postfix", "reload"], check=False)


def one_run(h, address: str, port: int, n: int, clients: int, full: bool) -> dict:
    subject = f"mailops-bench-{uuid.uuid4().hex[:8]}"
    c0, t0 = cpu(h), time.monotonic()
    h.run(["smtp-source", "-s", str(clients), "-m", str(n), "-l", "4096", "-S", subject,
           "-M", "gw.lab.test", "-f", "bench@gw.lab.test", "-t", RCPT, f"{address}:{port}"],
          timeout=1800)
    sent = time.monotonic()
    if full:
        deadline = time.monotonic() + 900
        while delivered(h, subject) < n and time.monotonic() < deadline:
            time.sleep(0.3)
    wait_until(h, ["sh", "-c", QUEUE_EMPTY, "queue_empty"], 900)
    t1, c1 = time.monotonic(), cpu(h)
    got = delivered(h, subject) if full else n
    if full:
        h.run(["doveadm", "expunge", "-u", RCPT, "mailbox", "*", "subject", subject])
        h.run(["doveadm", "purge", "-u", RCPT])
    secs = t1 - t0
    return {"config": "full" if full else "postfix alone", "messages": n, "delivered": got,
            "seconds": round(secs, 2), "send_seconds": round(sent - t0, 2),
            "msgs_per_s": round(n / secs, 1),
            "cpu_ms_per_msg": {k: round(1000 * (c1.get(k, 0) - c0.get(k, 0)) / n, 2)
                               for k in sorted(set(c0) | set(c1))}}


def throughput(h, address: str, n: int, clients: int, rounds: int) -> dict:
    setup(h)
    runs = []
    try:
        one_run(h, address, BENCH_PORT, min(n, 500), clients, False)      # warm-up
        one_run(h, address, 25, min(n, 500), clients, True)
        for r in range(rounds):
            pair = {}
            for full in ((False, True) if r % 2 == 0 else (True, False)):
                res = one_run(h, address, 25 if full else BENCH_PORT, n, clients, full)
                print(json.dumps(res), flush=True)
                pair[res["config"]] = res
            runs.append(pair)
    finally:
        teardown(h)
    alone = [p["postfix alone"]["msgs_per_s"] for p in runs]
    full = [p["full"]["msgs_per_s"] for p in runs]
    ratios = [p["full"]["msgs_per_s"] / p["postfix alone"]["msgs_per_s"] for p in runs]
    return {"rounds": runs, "median_alone": statistics.median(alone),
            "median_full": statistics.median(full),
            "paired_ratios": [round(x, 3) for x in ratios],
            "median_ratio": round(statistics.median(ratios), 3),
            "lost": sum(p["full"]["messages"] - p["full"]["delivered"] for p in runs)}


def mailops_reload(params, bump: int) -> None:
    """An apply of mailops itself that reloads postfix and dovecot (a changed message
    size limit and default quota), as an operator's change would under load."""
    mail = params.mail.model_copy(update={"message_size_limit_mb": params.mail.message_size_limit_mb
                                          + bump, "default_quota_mb": params.mail.default_quota_mb
                                          + bump})
    with Session(params.model_copy(update={"mail": mail})) as s:
        for step in ("40-dovecot", "50-postfix"):
            result = s.apply(s.plan(step))
            if not result.ok:
                raise SystemExit(f"mailops apply under load failed: {result.error}")


def restart_scenario(params, h, seconds: float = 25, clients: int = 20,
                     by_mailops: bool = False) -> dict:
    """MTA-like clients through an rspamd restart (t~5 s) and a dovecot restart (t~15 s),
    or (``by_mailops``) through two applies of mailops that reload postfix and dovecot."""
    address = str(params.addresses[0])
    subject = f"mailops-restart-{uuid.uuid4().hex[:8]}"
    accepted: list[str] = []
    retries = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client():
        while time.monotonic() < stop:
            token = uuid.uuid4().hex
            msg = (f"From: bench@gw.lab.test\r\nTo: {RCPT}\r\nSubject: {subject}\r\n"
                   f"Message-ID: <{token}@gw.lab.test>\r\n\r\n" + "A line of text.\r\n" * 200)
            give_up = time.monotonic() + 120
            while time.monotonic() < give_up:
                try:
                    with smtplib.SMTP(address, 25, timeout=30, local_hostname="gw.lab.test") as s:
                        s.sendmail("bench@gw.lab.test", [RCPT], msg)
                    with lock:
                        accepted.append(token)
                    break
                except (smtplib.SMTPException, OSError):
                    with lock:
                        retries[0] += 1
                    time.sleep(1)

    log_before = int(h.run(["sh", "-c", "wc -l < /var/log/postfix.log"]).out)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(5)
    if by_mailops:
        mailops_reload(params, 1)
    else:
        h.run(["sh", "-c", "service rspamd restart </dev/null >/dev/null 2>&1"], timeout=120)
    time.sleep(max(0.0, 15 - (time.monotonic() - t0)))
    if by_mailops:
        mailops_reload(params, 0)           # back to the parameters' own values
    else:
        h.run(["sh", "-c", "service dovecot restart </dev/null >/dev/null 2>&1"], timeout=120)
    last_restart = time.monotonic()
    for t in threads:
        t.join()
    clients_done = time.monotonic() - last_restart
    # every accepted message in the mailbox (a duplicate could count for a lost one here;
    # the Message-ID check below settles both), then the queue empty: they differ by the
    # queue files a delivery agent still held at a reload, which qmgr keeps 60 s
    deadline = time.monotonic() + 900
    while delivered(h, subject) < len(accepted) and time.monotonic() < deadline:
        time.sleep(0.5)
    delivered_after = time.monotonic() - last_restart
    # what the queue still holds then: its files, and the recipients they still owe
    left = [json.loads(line) for line in h.run(["postqueue", "-j"]).out.splitlines() if line]
    left_queues = collections.Counter(m["queue_name"] for m in left)
    owed = sum(len(m.get("recipients", [])) for m in left)
    wait_until(h, ["sh", "-c", QUEUE_EMPTY, "queue_empty"], 900)
    empty_after = time.monotonic() - last_restart
    ids = h.run(["doveadm", "fetch", "-u", RCPT, "hdr.message-id hdr.x-spamd-bar", "mailbox",
                 "*", "subject", subject], timeout=300).out
    seen: dict[str, int] = {}
    unscanned = 0
    for block in ids.split("\f"):
        mid = next((ln.split("<", 1)[1].split("@")[0] for ln in block.splitlines()
                    if ln.lower().startswith("hdr.message-id:") and "<" in ln), None)
        if mid:
            seen[mid] = seen.get(mid, 0) + 1
            if "hdr.x-spamd-bar:" not in block.lower() or \
                    not block.lower().split("hdr.x-spamd-bar:", 1)[1].strip():
                unscanned += 1
    suspended = int(h.run(["sh", "-c", f"tail -n +{log_before + 1} /var/log/postfix.log | "
                           "grep -c 'delivery temporarily suspended' || true"]).out.strip() or 0)
    h.run(["doveadm", "expunge", "-u", RCPT, "mailbox", "*", "subject", subject])
    h.run(["doveadm", "purge", "-u", RCPT])
    return {"accepted": len(accepted), "client_retries": retries[0],
            "delivered": sum(seen.values()),
            "lost": len(set(accepted) - set(seen)),
            "duplicated": sum(c - 1 for c in seen.values() if c > 1),
            "unscanned": unscanned, "suspended_deferrals": suspended,
            "clients_done_s_after_last_restart": round(clients_done, 1),
            "delivered_s_after_last_restart": round(delivered_after, 1),
            "queued_when_all_delivered": {"files": len(left), "by_queue": dict(left_queues),
                                          "recipients_owed": owed},
            "queue_empty_s_after_last_restart": round(empty_after, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--restart", action="store_true", help="also the restart scenario")
    ap.add_argument("--only-restart", action="store_true")
    ap.add_argument("--only-mailops-reload", action="store_true")
    ap.add_argument("--mailops-reload", action="store_true",
                    help="also the scenario with mailops' own applies reloading under load")
    args = ap.parse_args()
    params = load_params(PARAMS)
    out: dict = {}
    with Session(params) as s:
        h = s.host
        if not (args.only_restart or args.only_mailops_reload):
            out["throughput"] = throughput(h, str(params.addresses[0]), args.messages,
                                           args.clients, args.rounds)
            t = out["throughput"]
            print(f"postfix alone {t['median_alone']} msgs/s, full path {t['median_full']} "
                  f"msgs/s, paired ratio median {t['median_ratio']} {t['paired_ratios']}, "
                  f"lost {t['lost']}")
        if (args.restart or args.only_restart) and not args.only_mailops_reload:
            out["restart"] = restart_scenario(params, h)
            print(json.dumps(out["restart"]))
        if args.mailops_reload or args.only_mailops_reload:
            out["mailops_reload"] = restart_scenario(params, h, by_mailops=True)
            print(json.dumps(out["mailops_reload"]))
    res = ROOT / "bench" / "results"
    res.mkdir(exist_ok=True)
    # a partial run (--only-...) replaces only its own scenarios' figures
    path = res / "mailpath.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**kept, **out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
