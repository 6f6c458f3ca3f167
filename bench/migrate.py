"""Migration throughput on the lab, measured side by side in one run.

The lab's old IMAP server (lab5) gets a mailbox of --messages messages (the seeded
corpus: 4 KB to 50 KB, nested and non-ASCII folders, flags).  Then, into fresh
mailboxes on the Debian 12 lab server:

1. `mailops migrate` (dovecot's dsync over imapc, on the mail server): the first
   copy, the verification (SHA-256 and flags of every message, both sides) and a
   re-run with nothing new (dsync's state per folder);
2. an APPEND-based copy as imapsync-like tools do it, from this machine: FETCH
   each message from the old server, APPEND it with its flags to the new one
   (one connection each way, no pipelining; new UIDs).

Both are timed in the same run, against the same old mailbox; the ratio is
dsync's messages per second over APPEND's.

    .venv/bin/python bench/migrate.py [--messages 5000]
"""
from __future__ import annotations

import argparse
import json
import re
import ssl
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailops.lab import peers
from mailops.manage import accounts as manage, migrate, users  # noqa: E402
from mailops.provision.checks.clients import IMAPS  # noqa: E402
from mailops.core.params import load_params  # noqa: E402
from mailops.remote.migrate import _folders  # noqa: E402
from mailops.core.secrets import Secret  # noqa: E402
from mailops.provision.session import Session  # noqa: E402

PARAMS = ROOT / "parameters" / "lab.yaml"
LOGIN = "bulk@old.test"


def ctx(ca: Path) -> ssl.SSLContext:
    c = ssl.create_default_context(cafile=str(ca))
    c.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    return c


def add_target(s) -> tuple[str, Secret]:
    address = f"bench{uuid.uuid4().hex[:6]}@lab.test"
    password = manage.generate_password()
    users.apply(s, users.plan_add_mailbox(s, address, password))
    return address, password


def append_copy(params, old_pw: str, address: str, password: Secret) -> int:
    """FETCH from the old server, APPEND to the new one, folder by folder."""
    ca = params.path(params.tls.ca_dir) / "ca.crt"
    spec = peers.old_imap_spec(params)
    src = IMAPS(str(spec.address), 993, peers.OLD_IMAP_NAME, ssl_context=ctx(ca), timeout=60)
    dst = IMAPS(str(params.addresses[0]), 993, params.hostname, ssl_context=ctx(ca), timeout=60)
    src.login(LOGIN, old_pw)
    dst.login(address, password.reveal())
    n = 0
    for name, sep, _ in _folders(src):          # the selectable folders, as the helper lists them
        target = "/".join(name.split(sep))
        dst.create(f'"{target}"')
        src.select(f'"{name}"', readonly=True)
        _, data = src.uid("SEARCH", None, "ALL")
        for uid in data[0].split():
            _, msg = src.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")
            flags = re.search(rb"FLAGS \(([^)]*)\)", msg[0][0]).group(1).decode()
            flags = " ".join(f for f in flags.split() if f != "\\Recent")
            dst.append(f'"{target}"', f"({flags})" if flags else None, None, msg[0][1])
            n += 1
    src.logout()
    dst.logout()
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    args = ap.parse_args()
    params = load_params(PARAMS)
    manage.PASSWORD_DIR = Path("/tmp/mailops-bench-passwords")
    peers.prepare_old_imap_host(params, {LOGIN: args.messages})
    import yaml
    old_pw = yaml.safe_load((peers.old_imap_spec(params).state_dir / "secrets.yaml").read_text())[
        peers.OLD_IMAP_SECRET]
    src = migrate.Source.parse("imaps://imap.old.test", params.path(params.tls.ca_dir) / "ca.crt")
    out: dict = {"messages": args.messages}
    with Session(params) as s:
        address, _ = add_target(s)
        j = migrate.Job(LOGIN, Secret(old_pw), address)
        plan = migrate.plan(s, src, [j])
        t0 = time.perf_counter()
        res = migrate.run(s, plan, verify_copy=False, progress=lambda line: None)
        copy = time.perf_counter() - t0
        if res.runs[0].new != args.messages:
            raise SystemExit(f"copied {res.runs[0].new} of {args.messages}: {res.summary()}")
        t0 = time.perf_counter()
        ver = migrate.verify(s, src, j)
        verify_s = time.perf_counter() - t0
        if not ver.ok:
            raise SystemExit(f"verification failed: {ver.folders}")
        t0 = time.perf_counter()
        again = migrate.run(s, migrate.plan(s, src, [j]), verify_copy=False,
                            progress=lambda line: None)
        rerun = time.perf_counter() - t0
        if again.runs[0].new:
            raise SystemExit(f"the re-run copied {again.runs[0].new} message(s)")
        out["dsync"] = {"seconds": round(copy, 2), "msgs_per_s": round(args.messages / copy, 1),
                        "verify_seconds": round(verify_s, 2), "rerun_seconds": round(rerun, 2)}
        target2, pw2 = add_target(s)
    t0 = time.perf_counter()
    n = append_copy(params, old_pw, target2, pw2)
    append = time.perf_counter() - t0
    out["append"] = {"seconds": round(append, 2), "msgs_per_s": round(n / append, 1),
                     "messages": n}
    out["ratio_dsync_over_append"] = round(out["dsync"]["msgs_per_s"] / out["append"]["msgs_per_s"], 1)
    with Session(params) as s:
        for a in (address, target2):
            users.apply(s, users.plan_remove_mailbox(s, a))
    print(json.dumps(out, indent=2))
    (ROOT / "bench" / "results" / "migrate.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
