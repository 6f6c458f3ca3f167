"""`mailops status`: is the server well now?  Mail-in-a-Box's status page, as checks.

One round trip gathers the server's facts (processes, listening ports, the served
certificates, disk, inodes, memory, the queue, the last backup, rspamd's log);
DNS is asked of the server's own resolver through an SSH port forward (TCP 53),
so the answers are the ones postfix and rspamd see.  Every check gives evidence;
a failed one makes :meth:`CheckReport.raise_for_status` raise and the command exit
1, so a timer can alert.
"""
from __future__ import annotations

import datetime as dt
import json
import time

from mailops.provision.checks.result import (Check, CheckFailed, CheckReport, check, require,
    run_parallel)
from mailops.provision.dnsrecords import Resolver, dns_records
from mailops.core.layout import BACKUP, tls_paths

CERT_DAYS_MIN = 14            # certificates: fail below this many days left
DISK_MAX_PCT = 90             # disk and inodes: fail above this use
MEM_MIN_PCT = 5               # memory: fail below this available
QUEUE_MAX_AGE_H = 24          # the oldest queued message
DNSBLS = ("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")

FACTS = {
    "procs": ["sh", "-c", "for p in master dovecot rspamd redis-server unbound fail2ban-server; "
                          "do printf '%s %s\\n' $p \"$(pgrep -x -c $p || true)\"; done"],
    "ports": ["ss", "-ltnH"],
    "df": ["df", "-P", "/", "/var/mail", "/var/log"],
    "dfi": ["df", "-Pi", "/", "/var/mail", "/var/log"],
    "mem": ["cat", "/proc/meminfo"],
    "queue": ["postqueue", "-j"],
    "backup": ["cat", BACKUP.state],
    "rspamd_log": ["tail", "-n", "2000", "/var/log/rspamd/rspamd.log"],
}


def expected_services(p) -> list[str]:
    want = ["master", "dovecot", "unbound"]
    if p.rspamd.enabled:
        want += ["rspamd", "redis-server"]
    if p.fail2ban.enabled:
        want.append("fail2ban-server")
    return want


def expected_ports(p) -> list[tuple[str, int]]:
    ports = [("0.0.0.0", n) for n in p.firewall.open_tcp]
    ports += [("127.0.0.1", 53)]
    if p.rspamd.enabled:
        ports += [("127.0.0.1", 11332), ("127.0.0.1", 11334), ("127.0.0.1", 6379)]
    return ports


def listening(ss_out: str) -> set[tuple[str, int]]:
    found = set()
    for line in ss_out.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            addr, _, port = parts[3].rpartition(":")
            if port.isdigit():
                found.add((addr.strip("[]"), int(port)))
    return found


def _ports(facts, p) -> str:
    have = listening(facts["ports"])
    loopback = {"127.0.0.1", "::1"}

    def up(addr, port):
        # a public port must listen beyond loopback; a loopback one anywhere that covers it
        return any(pt == port and (a not in loopback if addr == "0.0.0.0" else
                                   a in (addr, "0.0.0.0", "*", "::")) for a, pt in have)
    missing = [f"{a}:{n}" for a, n in expected_ports(p) if not up(a, n)]
    require(not missing, f"not listening: {', '.join(missing)}")
    return f"listening: {', '.join(str(n) for _, n in expected_ports(p))}"


def _services(facts, p) -> str:
    counts = dict(line.split() for line in facts["procs"].splitlines() if len(line.split()) == 2)
    down = [s for s in expected_services(p) if counts.get(s, "0") == "0"]
    require(not down, f"not running: {', '.join(down)}")
    return f"running: {', '.join(expected_services(p))}"


def _certs(session, p) -> str:
    from cryptography import x509
    paths = tls_paths(p)
    out = []
    for kind in ("rsa", "ec"):
        pem = session.host.read_file(paths[f"{kind}_cert"])
        cert = x509.load_pem_x509_certificates(pem)[0]
        left = (cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days
        require(left >= CERT_DAYS_MIN, f"the {kind.upper()} certificate expires in {left} days "
                                       f"({cert.not_valid_after_utc:%Y-%m-%d})")
        out.append(f"{kind.upper()} {left} days left")
    return ", ".join(out)


def parse_df(text: str) -> dict[str, int]:
    use = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6 and parts[4].endswith("%"):
            use[parts[5]] = int(parts[4][:-1]) if parts[4][:-1].isdigit() else 0
    return use


def _disk(facts, key: str, what: str) -> str:
    use = parse_df(facts[key])
    require(use, f"df printed nothing for {what}")
    full = {m: u for m, u in use.items() if u > DISK_MAX_PCT}
    require(not full, f"{what} above {DISK_MAX_PCT}%: " + ", ".join(
        f"{m} {u}%" for m, u in full.items()))
    return ", ".join(f"{m} {u}%" for m, u in sorted(use.items()))


def _memory(facts) -> str:
    info = {ln.split(":")[0]: int(ln.split()[1]) for ln in facts["mem"].splitlines()
            if len(ln.split()) >= 2 and ln.split()[1].isdigit()}
    total, avail = info.get("MemTotal", 0), info.get("MemAvailable", 0)
    require(total, "no MemTotal in /proc/meminfo")
    pct = 100 * avail / total
    require(pct >= MEM_MIN_PCT, f"only {pct:.0f}% of memory available")
    return f"{avail // 1024} MiB of {total // 1024} MiB available ({pct:.0f}%)"


def _queue(facts) -> str:
    items = [json.loads(ln) for ln in facts["queue"].splitlines() if ln.startswith("{")]
    now = time.time()
    oldest = max((now - i.get("arrival_time", now) for i in items), default=0)
    deferred = sum(1 for i in items if i.get("queue_name") == "deferred")
    require(oldest <= QUEUE_MAX_AGE_H * 3600,
            f"{len(items)} queued, the oldest {oldest / 3600:.1f} h old ({deferred} deferred)")
    return f"{len(items)} queued ({deferred} deferred), oldest {oldest / 60:.0f} min"


def _backup(facts, p) -> str:
    from mailops.provision.backup import parse_state
    from mailops.provision.checks.server import judge_backup
    run = parse_state(facts["backup"])
    judge_backup(run, p)
    return f"ok {run['age_hours']:.1f} h ago, took {run['end'] - run['start']} s"


def _rspamd_log(facts) -> str:
    lines = facts["rspamd_log"].splitlines()
    errors = [ln for ln in lines if "error" in ln.lower() or "cannot" in ln.lower()]
    require(len(errors) <= max(10, len(lines) // 10),
            f"{len(errors)} of the last {len(lines)} log lines are errors; the newest: "
            f"{errors[-1][-200:] if errors else ''}")
    return f"{len(errors)} error line(s) in the last {len(lines)}"


# -- DNS through the server's own resolver ----------------------------------------------
def dnsbl(resolver: Resolver, addresses) -> list[dict]:
    rows = []
    for a in addresses:
        if a.version != 4:
            continue
        rev = ".".join(reversed(str(a).split(".")))
        for bl in DNSBLS:
            rcode, got = resolver.ask(f"{rev}.{bl}", "A")
            listed = bool(got) and any(g.startswith("127.0.0.") or g.startswith("127.255.")
                                       for g in got)
            rows.append({"address": str(a), "list": bl, "listed": listed,
                         "answer": " ".join(got) if got else rcode})
    return rows


def run(session) -> CheckReport:
    """Every status check, in parallel where they can be."""
    p = session.params
    results = session.host.run_many(list(FACTS.values()))
    facts = {k: (r.out if r.ok else "") for k, r in zip(FACTS, results)}
    todo = [("services running", lambda: _services(facts, p)),
            ("ports answering", lambda: _ports(facts, p)),
            ("disk", lambda: _disk(facts, "df", "disk use")),
            ("inodes", lambda: _disk(facts, "dfi", "inode use")),
            ("memory", lambda: _memory(facts)),
            ("mail queue", lambda: _queue(facts)),
            ("certificates", lambda: _certs(session, p))]
    if p.backup.enabled:
        todo.append(("last backup", lambda: _backup(facts, p)))
    if p.rspamd.enabled:
        todo.append(("rspamd errors", lambda: _rspamd_log(facts)))
    from mailops.provision.checks import server
    todo.append(("security updates", lambda: server.updates(session, p)))
    checks = run_parallel(todo)
    checks += _dns_checks(session)
    return CheckReport(p.hostname, tuple(checks), step="status")


def _dns_checks(session) -> list[Check]:
    p = session.params
    try:
        with session.host.forward(53) as port:
            r = Resolver(port)
            records = dns_records(session, r)
            listings = dnsbl(r, p.addresses)
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        return [Check("dns records", False, f"the server's resolver: {type(exc).__name__}: {exc}")]

    from mailops.provision.checks.dns import judge

    def bl():
        listed = [f"{x['address']} on {x['list']}" for x in listings if x["listed"]]
        if listed:
            raise CheckFailed("listed: " + ", ".join(listed))
        unknown = [x for x in listings if x["answer"] not in ("NXDOMAIN",) and not x["listed"]]
        return (f"not listed on {', '.join(DNSBLS)}" + (
            f" ({len(unknown)} lookups not answered: {unknown[0]['answer']})" if unknown else ""))
    return [check("dns records", lambda: judge(records)), check("dnsbl listing", bl)]


def write_record(report: CheckReport, path: str) -> None:
    import pathlib
    pathlib.Path(path).write_text(json.dumps(report.record(), indent=1))
