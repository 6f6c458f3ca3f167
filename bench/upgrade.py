"""Debian 12 to 13 in place on the lab, under a client's eye: how long the server tells
senders to come back (the window), against the whole upgrade, side by side in one run.

A Debian 12 mail server built from nothing at lab8 (`parameters/lab-upgrade.yaml`), its
mailboxes seeded; then `mailops upgrade --to trixie` while a client connects to port 25
every half second and notes each greeting (220, 421, or no answer).  Printed: the whole
upgrade, the phases, the window as the stand-in counted it (first 421 to last) and as the
client saw it (first greeting that was not 220 to the last), and the window's share of the
upgrade.  lab8 is taken down at the end.  Usage (the lab's DNS and backup hosts up, as
`mailops lab up --params parameters/lab.yaml` leaves them; `--messages 20` is the quick
mode):

    .venv/bin/python bench/upgrade.py [--messages 200]
"""
from __future__ import annotations

import argparse
import json
import smtplib
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailops.core.params import load_params  # noqa: E402
from mailops.lab import hosts as lab  # noqa: E402
from mailops.lab import peers  # noqa: E402
from mailops.lab.seed import seed_mail  # noqa: E402
from mailops.provision import runner, upgrade  # noqa: E402

PARAMS = ROOT / "parameters" / "lab-upgrade.yaml"


class Watcher:
    """A client that connects to port 25 every ``every`` seconds: (time, code) each
    (0: no answer)."""

    def __init__(self, address: str, every: float = 0.5):
        self.address, self.every = address, every
        self.seen: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            try:
                with smtplib.SMTP(self.address, 25, timeout=5):
                    code = 220
            except smtplib.SMTPConnectError as exc:
                code = exc.smtp_code
            except OSError:
                code = 0
            self.seen.append((t, code))
            self.stop.wait(self.every)

    def window(self) -> dict:
        closed = [(t, c) for t, c in self.seen if c != 220]
        if not closed:
            return {"seconds": 0.0, "421": 0, "no_answer": 0, "other": []}
        return {"seconds": round(closed[-1][0] - closed[0][0], 1),
                "421": sum(c == 421 for _, c in closed),
                "no_answer": sum(c == 0 for _, c in closed),
                "other": sorted({c for _, c in closed} - {0, 421})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200, help="seeded per mailbox")
    args = ap.parse_args()
    params = load_params(PARAMS)
    spec = lab.LabSpec.from_params(params)
    quiet = lambda m: None  # noqa: E731
    lab.down(spec, purge=True, log=quiet)
    try:
        if not lab.up(spec, log=quiet).up:
            raise SystemExit(f"lab {spec.name} did not come up")
        peers.prepare_backup_host(params, log=quiet, fresh=True)
        first = runner.provision(PARAMS, apply=True, verify=True, log=quiet, tag="bench-upgrade")
        if not first.ok:
            raise SystemExit(f"the Debian 12 server did not build:\n{first}")
        seeded = seed_mail(params, per_mailbox=args.messages)
        watcher = Watcher(str(params.addresses[0]))
        watcher.thread.start()
        t0 = time.monotonic()
        report = upgrade.upgrade(params_file=PARAMS, to="trixie", log=quiet)
        upgrade_s = time.monotonic() - t0
        time.sleep(2)
        watcher.stop.set()
        watcher.thread.join()
        if not report.ok:
            raise SystemExit(f"the upgrade failed:\n{report}")
    finally:
        lab.down(spec, purge=True, log=quiet)
    seen = watcher.window()
    result = {"messages": sum(seeded.values()), "packages": len(report.packages),
              "upgrade_s": round(upgrade_s, 1),
              "window_stand_in_s": report.window.get("seconds"),
              "window_client_s": seen["seconds"], "client": seen,
              "window_over_upgrade": round(seen["seconds"] / upgrade_s, 2),
              "last_changes": report.last_changes,
              "phases": [[n, round(sec, 1)] for n, sec, _ in report.phases],
              "probes": len(watcher.seen),
              "date": time.strftime("%Y-%m-%d")}
    out = ROOT / "bench" / "results" / "upgrade.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"upgrade of {result['packages']} packages with {result['messages']} messages: "
          f"{upgrade_s:.0f} s; senders told to retry for {seen['seconds']:.0f} s as the client "
          f"saw it ({result['window_over_upgrade']:.2f} of the upgrade; the stand-in counted "
          f"{result['window_stand_in_s']} s); of {len(watcher.seen)} probes {seen['421']} met "
          f"421, {seen['no_answer']} no answer, other codes {seen['other']}")
    for name, sec in result["phases"]:
        print(f"  {name:10} {sec:7.1f} s")


if __name__ == "__main__":
    main()
