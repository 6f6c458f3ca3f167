"""The insight commands: collect, report, status, schedule."""
from __future__ import annotations

import json
import sys
from pathlib import Path

COMMANDS = ("collect", "report", "status", "schedule", "dns")


def add_parsers(sub, default_params: str) -> None:
    c = sub.add_parser("collect", help="fetch what is new on the server into the local store")
    c.add_argument("--params", default=default_params)
    c.add_argument("--json", action="store_true")
    r = sub.add_parser("report", help="run the analysis notebooks and write HTML reports")
    r.add_argument("period", choices=["daily", "weekly", "monthly", "yearly"])
    r.add_argument("--params", default=default_params)
    r.add_argument("--date", default="", help="the period's last day: YYYY-MM-DD, today, "
                                              "yesterday (default today)")
    r.add_argument("--no-collect", action="store_true", help="report from the store as it is")
    r.add_argument("--no-mail", action="store_true", help="do not mail it to insight.report_to")
    s = sub.add_parser("status", help="is the server well now? (exit 1 when a check fails)")
    s.add_argument("--params", default=default_params)
    s.add_argument("--json", action="store_true")
    d = sub.add_parser("dns", help="the DNS records the server needs").add_subparsers(
        dest="dns_cmd", required=True)
    dc = d.add_parser("check", help="expected vs published, through the server's own resolver "
                                    "(exit 1 when one is missing or different)")
    dc.add_argument("--params", default=default_params)
    dc.add_argument("--json", action="store_true")
    dp = d.add_parser("publish", help="send the missing or different records to the zones' "
                                      "primary (RFC 2136 with TSIG, dns.update); a dry run "
                                      "without --apply")
    dp.add_argument("--params", default=default_params)
    dp.add_argument("--apply", action="store_true")
    sc = sub.add_parser("schedule", help="collect and reports on a timer (this machine)")
    sc.add_argument("action", choices=["install", "show"])
    sc.add_argument("--params", default=default_params)
    sc.add_argument("--unit-dir", default=None, help="write the units here (default "
                                                     "/etc/systemd/system)")
    sc.add_argument("--cron", action="store_true", help="cron lines even where systemd runs")


def run(args) -> int:
    from mailops.core.host import HostError
    from mailops.insight.store import StoreError
    try:
        return {"collect": _collect, "report": _report, "status": _status,
                "schedule": _schedule, "dns": _dns}[args.cmd](args)
    except (HostError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _collect(args) -> int:
    from mailops.insight.collect import collect
    from mailops.provision.session import open_session
    with open_session(args.params) as s:
        r = collect(s, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(r.record()) if args.json else r)
    return 0 if r.ok else 1


def _report(args) -> int:
    from mailops.insight import report
    try:
        r = report.run(args.params, args.period, args.date, collect=not args.no_collect,
                       mail=not args.no_mail, log=lambda m: print(m, file=sys.stderr))
    except report.ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(r)
    return 0 if r.ok else 1


def _status(args) -> int:
    from mailops.insight import status
    from mailops.provision.session import open_session
    with open_session(args.params) as s:
        r = status.run(s)
    print(json.dumps(r.record(), indent=1) if args.json else r)
    return 0 if r.ok else 1


def _dns(args) -> int:
    from mailops.provision import dnsrecords
    from mailops.provision.session import open_session
    with open_session(args.params) as s:
        if args.dns_cmd == "publish":
            try:
                r = dnsrecords.publish(s, apply=args.apply)
            except dnsrecords.PublishError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(r)
            return 0 if r.ok else 1
        r = dnsrecords.dns_check(s)
    print(json.dumps(r.rows, indent=1) if args.json else r)
    return 0 if r.ok else 1


def _schedule(args) -> int:
    from mailops.insight import schedule
    from mailops.core.host import connect
    from mailops.core.params import load_params
    params_file = Path(args.params).resolve()
    params = load_params(params_file)
    kw = {"systemd": False if args.cron else None}
    if args.unit_dir:
        kw.update(unit_dir=Path(args.unit_dir), cron_dir=Path(args.unit_dir))
    sched = schedule.plan(params, params_file, **kw)
    if args.action == "show":
        for path, text in sched.files.items():
            print(f"# {path}\n{text}")
        return 0
    todo = schedule.install(sched)
    print(sched)
    if todo and not args.unit_dir:
        local = connect("local://")
        for argv in todo:
            local.run(argv)
    return 0
