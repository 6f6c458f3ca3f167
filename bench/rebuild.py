"""A lost server rebuilt from its backup, against building the same server from nothing,
side by side on the lab: both start from an empty root file system at the mail host's
address and end with verify green.

(b) `mailops provision --apply` on the empty host (what a rebuild costs at the least:
    the packages and every step; its backups go to a throwaway repository, so its first
    backup of an empty server neither becomes the latest archive nor prunes one), then
(a) `mailops rebuild` on another empty host, from the archive taken before (b) with
    N more messages in one mailbox.

The lab is left as it was: (a) runs last and restores it, and the bench's messages are
expunged afterwards.  Usage (lab up and
provisioned; `--messages 200` is the quick mode):

    .venv/bin/python bench/rebuild.py [--messages 10000]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backup import DELIVER, USER  # noqa: E402
from mailops.core.params import load_params  # noqa: E402
from mailops.lab import hosts as lab  # noqa: E402
from mailops.provision import backup, rebuild, runner  # noqa: E402
from mailops.provision.session import Session  # noqa: E402

PARAMS = ROOT / "parameters" / "lab.yaml"


def empty_host(spec) -> None:
    lab.down(spec, purge=True, log=lambda m: None)
    if not lab.up(spec, log=lambda m: None).up:
        raise SystemExit(f"lab {spec.name} did not come up")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10_000)
    args = ap.parse_args()
    params = load_params(PARAMS)
    spec = lab.LabSpec.from_params(params)
    with Session(params) as s:
        have = int(s.host.run(["doveadm", "-f", "flow", "mailbox", "status", "-u", USER,
                               "messages", "INBOX"]).out.split("=")[-1])
        if have < args.messages:
            s.host.run(["python3", "-c", DELIVER, "bench_deliver", str(have),
                        str(args.messages - have)], timeout=3600)
        s.host.run(["/usr/local/sbin/mailops-backup"], timeout=3600)
        archive = backup.archives(s)[-1]["name"]
        messages = sum(int(line.split("=")[-1]) for line in s.host.run(
            ["doveadm", "-f", "flow", "mailbox", "status", "-A", "messages", "*"]).out.split("\n")
            if "=" in line)

    # beside lab.yaml, so that its relative paths mean the same
    fresh_params = PARAMS.with_name(".bench-rebuild-fresh.yaml")
    fresh_params.write_text(PARAMS.read_text().replace(
        params.backup.repository, params.backup.repository + "-bench-fresh").replace(
        str(params.backup.key_copy), str(params.backup.key_copy) + "-bench-fresh"))
    empty_host(spec)
    try:
        t0 = time.monotonic()
        fresh = runner.provision(fresh_params, apply=True, verify=True, log=lambda m: None,
                                 tag="bench-fresh")
        fresh_s = time.monotonic() - t0
        with Session(load_params(fresh_params)) as s:
            s.host.run(["sh", "-c", "BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=YES "
                        "/usr/local/sbin/mailops-borg delete >/dev/null 2>&1; true"])
    finally:
        fresh_params.unlink()
        params.path(params.backup.key_copy).with_name(
            params.path(params.backup.key_copy).name + "-bench-fresh").unlink(missing_ok=True)
    if not fresh.ok:
        raise SystemExit(f"provision from nothing failed:\n{fresh}")

    empty_host(spec)
    t0 = time.monotonic()
    report = rebuild.rebuild(PARAMS, archive=archive, max_age_hours=24, log=lambda m: None)
    rebuild_s = time.monotonic() - t0
    if not report.ok:
        raise SystemExit(f"rebuild failed:\n{report}")
    with Session(params) as s:                # the bench's messages go again
        s.host.run(["doveadm", "expunge", "-u", USER, "mailbox", "*", "header",
                    "X-Mailops-Bench", "yes"], check=False, timeout=600)

    result = {"messages": messages, "archive": archive,
              "provision_from_nothing_s": round(fresh_s, 1), "rebuild_s": round(rebuild_s, 1),
              "rebuild_over_fresh": round(rebuild_s / fresh_s, 2),
              "phases": {n: round(sec, 1) for n, sec, _ in report.phases},
              "date": time.strftime("%Y-%m-%d")}
    out = ROOT / "bench" / "results" / "rebuild.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{messages} messages: provision from nothing {fresh_s:.0f} s, rebuild from the "
          f"backup {rebuild_s:.0f} s ({rebuild_s / fresh_s:.2f}x)")
    for name, sec in result["phases"].items():
        print(f"  {name:10} {sec:7.1f} s")


if __name__ == "__main__":
    main()
