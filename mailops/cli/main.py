"""The ``mailops`` command: lab, plan, provision, drill, rebuild; and the management
commands user, alias, catchall, domain, sieve (mailops/cli/manage.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_PARAMS = Path(__file__).resolve().parents[2] / "parameters" / "lab.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mailops", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    lab = sub.add_parser("lab", help="the lab host: a throwaway Debian server on this machine")
    lab.add_argument("action", choices=["up", "down", "status", "ssh", "seed"],
                     help="seed: fill the lab's mailboxes with a corpus (folders, flags, "
                          "attachments) and back it up, so the restore drill proves something")
    lab.add_argument("--params", default=str(DEFAULT_PARAMS), help="parameters file with a lab: section")
    lab.add_argument("--purge", action="store_true", help="with down: also remove the rootfs and keys")
    lab.add_argument("command", nargs="*", help="with ssh: a command to run")

    plan = sub.add_parser("plan", help="show what the steps would change (in-process, read only)")
    plan.add_argument("--params", default=str(DEFAULT_PARAMS))
    plan.add_argument("--only", action="append", help="a step (repeatable)")

    prov = sub.add_parser("provision", help="run the provisioning notebooks through papermill")
    prov.add_argument("--params", nargs="+", default=[str(DEFAULT_PARAMS)],
                      help="parameters file(s): several hosts are provisioned in parallel, "
                           "each failing alone")
    prov.add_argument("--apply", action="store_true", help="apply the changes (default: dry run)")
    prov.add_argument("--only", action="append", help="a step (repeatable)")
    prov.add_argument("--notebooks", choices=["changed", "all"], default="changed",
                      help="execute notebooks only for steps with changes (default) or for all")
    prov.add_argument("--verify", action="store_true",
                      help="run 90-verify even when nothing changed (it runs after any change)")
    prov.add_argument("--json", action="store_true", help="print the summary as JSON")

    dr = sub.add_parser("drill", help="the restore drill: latest archive against the live mail")
    dr.add_argument("--params", default=str(DEFAULT_PARAMS))
    dr.add_argument("--archive", default="", help="an archive name (default: the latest)")
    dr.add_argument("--restore-mailbox", default="", metavar="ADDRESS",
                    help="restore this mailbox for real (deleted or empty: as archived; "
                         "else beside its mail in Restored/<archive>)")

    rb = sub.add_parser("rebuild", help="rebuild a lost server on an empty host from its latest "
                                        "backup (refused when the host holds mail)")
    rb.add_argument("--params", default=str(DEFAULT_PARAMS))
    rb.add_argument("--archive", default="", help="an archive name (default: the latest)")
    rb.add_argument("--max-age-hours", type=float, default=None, metavar="H",
                    help="accept an archive up to H hours old (default: "
                         "backup.rebuild_max_age_hours, 48)")
    rb.add_argument("--dry-run", action="store_true",
                    help="survey the host and choose the archive; change nothing")

    up = sub.add_parser("upgrade", help="upgrade the server to the next Debian release in "
                                        "place (12 -> 13), under mail: senders get 4xx and retry")
    up.add_argument("--params", default=str(DEFAULT_PARAMS))
    up.add_argument("--to", required=True, choices=["trixie"], help="the release to go to")
    up.add_argument("--dry-run", action="store_true",
                    help="show the packages that change and the config files rewritten "
                         "(diffs); change nothing")

    logs = sub.add_parser("logs", help="postfix log figures").add_subparsers(
        dest="action", required=True)
    ls = logs.add_parser("summary", help="pflogsumm's figures (Debian 1.1.5's definitions) for "
                                         "any postfix log: plain or .gz, syslog or RFC 3339")
    ls.add_argument("files", nargs="+", metavar="FILE")
    ls.add_argument("--day", help="only this day, YYYY-MM-DD")
    ls.add_argument("--json", action="store_true", help="every figure as one JSON object")
    ls.add_argument("--engine", choices=["auto", "compiled", "polars", "stream"], default="auto",
                    help="compiled: the line loop in C (mailops/insight/_pflogc.c), fastest, memory "
                         "bounded by the messages; polars: vectorised, memory growing with the "
                         "input; stream: pure Python, line by line; auto (default): compiled when "
                         "built, else polars up to about 256 MB of log and stream above")

    from . import manage as climanage, insight as cliinsight
    climanage.add_parsers(sub, DEFAULT_PARAMS)
    cliinsight.add_parsers(sub, DEFAULT_PARAMS)

    args = ap.parse_args(argv)
    try:
        if args.cmd in climanage.COMMANDS:
            return climanage.run(args)
        if args.cmd in cliinsight.COMMANDS:
            return cliinsight.run(args)
        return {"lab": _lab, "plan": _plan, "provision": _provision, "drill": _drill,
                "rebuild": _rebuild, "upgrade": _upgrade, "logs": _logs}[args.cmd](args)
    except Exception as exc:
        # bad parameters: their message, exit 2 (a ParamsError exists only once a command
        # loaded mailops.core.params: `mailops logs` starts without it and pydantic)
        params = sys.modules.get("mailops.core.params")
        if params is not None and isinstance(exc, params.ParamsError):
            print(exc, file=sys.stderr)
            return 2
        raise


def _lab(args) -> int:
    from mailops.lab import hosts as lab
    from mailops.lab import internet
    from mailops.lab import peers as neighbours
    from mailops.core.host import exec_replace
    from mailops.core.params import load_params

    params = load_params(args.params)
    spec = lab.LabSpec.from_params(params)
    peers = [(spec_, what) for spec_, what in ((neighbours.backup_spec(params), "backup host"),
                                                (neighbours.old_imap_spec(params), "old IMAP server"),
                                                (internet.dns_spec(params), "DNS host"))
             if spec_ is not None]
    if args.action == "up":
        internet.prepare_dns_host(params)          # first: the mail server's resolver asks it
        internet.prepare_acme_ca(params)           # and certbot on it asks pebble there
        lab.up(spec)
        neighbours.prepare_backup_host(params)
        neighbours.prepare_old_imap_host(params)
    elif args.action == "down":
        lab.down(spec, purge=args.purge)
        # the backup, old IMAP and DNS hosts are shared by every mail server of the lab:
        # while another one runs they stay (purging them would lose its backups, its DNS
        # zones and its ACME CA)
        others = sorted(set(lab.running()) - {p.name for p, _ in peers} - {spec.name})
        for peer, what in peers:
            if others:
                print(f"lab {peer.name}: {what} kept, {', '.join(others)} still up")
            else:
                lab.down(peer, purge=args.purge)
    elif args.action == "status":
        states = [lab.status(spec)]
        print(states[0])
        for peer, what in peers:
            states.append(lab.status(peer))
            print(f"{states[-1]} ({what})")
        return 0 if all(st.up for st in states) else 3
    elif args.action == "seed":
        return _seed(params)
    else:
        exec_replace(lab.ssh_argv(spec, *args.command))
    return 0


def _seed(params) -> int:
    from mailops.lab.seed import seed_mail
    added = seed_mail(params)
    print("seeded: " + ", ".join(f"{u} +{n}" for u, n in added.items()))
    if params.backup.enabled and any(added.values()):
        from mailops.provision.session import Session
        from mailops.core.layout import BACKUP as PATHS
        with Session(params) as s:            # a backup that holds the corpus
            s.host.run([PATHS.run], timeout=900)
        print("backed up")
    return 0


def _logs(args) -> int:
    import datetime as dt
    import json
    from mailops.insight import pflog, pflogc, pflogfast
    try:
        day = dt.date.fromisoformat(args.day) if args.day else None
    except ValueError:
        print(f"error: day: {args.day!r} is not a date YYYY-MM-DD", file=sys.stderr)
        return 2
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        print(f"error: files: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    engine = {"stream": pflog.summarize, "polars": pflogfast.summarize,
              "compiled": pflogc.summarize}.get(args.engine)
    if args.engine == "compiled" and not pflogc.available():
        print("error: engine: the compiled engine is not built (mailops was installed without "
              "a C compiler); use --engine stream or polars", file=sys.stderr)
        return 2
    if engine is None:              # auto: compiled when built, else polars up to AUTO_LIMIT
        engine = pflogc.summarize if pflogc.available() else (
            pflogfast.summarize if pflog.input_size(args.files) <= pflogfast.AUTO_LIMIT
            else pflog.summarize)
    s = engine(args.files, day=day)
    print(json.dumps(s.to_dict(), indent=2) if args.json else pflog.text(s), end="")
    return 0


def _drill(args) -> int:
    from mailops.provision.runner import drill
    record = drill(args.params, archive=args.archive, restore_mailbox=args.restore_mailbox)
    return 0 if record.get("status") == "verified" else 1


def _rebuild(args) -> int:
    from mailops.provision.rebuild import RebuildError, rebuild
    try:
        report = rebuild(args.params, dry_run=args.dry_run, archive=args.archive,
                         max_age_hours=args.max_age_hours)
    except RebuildError as exc:
        print(f"mailops rebuild: refused: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1


def _upgrade(args) -> int:
    from mailops.provision.upgrade import UpgradeError, upgrade
    try:
        report = upgrade(args.params, to=args.to, dry_run=args.dry_run)
    except UpgradeError as exc:
        print(f"mailops upgrade: refused: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1


def _plan(args) -> int:
    from mailops.provision.session import open_session
    from mailops.provision.steps import STEPS, get_step

    steps = [get_step(n) for n in args.only] if args.only else [s for s in STEPS if s.declare]
    steps = [s for s in steps if not s.checks]
    with open_session(args.params) as session:
        for plan in session.plan_many([s.name for s in steps]).values():
            print(plan)
    return 0


def _provision(args) -> int:
    from mailops.provision.runner import provision, provision_many

    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    kw = dict(apply=args.apply, only=args.only, notebooks=args.notebooks, verify=args.verify)
    if len(args.params) == 1:
        summary = provision(args.params[0], log=log, **kw)
        print(json.dumps(summary.to_json(), indent=2) if args.json else summary)
        return 0 if summary.ok else 1
    summaries = provision_many(args.params, log=log, **kw)
    ok = all(s.ok for s in summaries)
    if args.json:
        print(json.dumps({"ok": ok, "hosts": [s.to_json() for s in summaries]}, indent=2))
    else:
        print("\n\n".join(str(s) for s in summaries))
        print(f"\n{sum(s.ok for s in summaries)} of {len(summaries)} hosts ok")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
