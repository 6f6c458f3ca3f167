"""The management commands: ``mailops user|alias|catchall|domain|sieve|migrate ...``.

Each write command reads the server, prints its plan (the rows it inserts,
updates or deletes, and the actions after), then applies it; ``--dry-run``
stops after the plan.  Exit codes: 0 done, 1 failed on the server, 2 bad input
(nothing written).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


COMMANDS = ("user", "alias", "catchall", "domain", "sieve", "migrate")


def add_parsers(sub, default_params: Path) -> None:
    def cmd(parent, name, help_, write=True):
        p = parent.add_parser(name, help=help_)
        p.add_argument("--params", default=str(default_params))
        if write:
            p.add_argument("--dry-run", action="store_true",
                           help="show the planned rows and actions; write nothing")
        return p

    user = sub.add_parser("user", help="mailboxes: list, settings, add, passwd, quota, disable, "
                                       "enable, remove").add_subparsers(dest="action", required=True)
    p = cmd(user, "list", "every mailbox with quota, usage, messages, last login", write=False)
    p.add_argument("--domain")
    p.add_argument("--json", action="store_true")
    p = cmd(user, "settings", "what to type into a mail client: host, ports, TLS, user name",
            write=False)
    p.add_argument("address")
    p.add_argument("--json", action="store_true")
    p = cmd(user, "add", "add mailboxes (several: one transaction)")
    p.add_argument("address", nargs="+")
    p.add_argument("--quota", type=int, metavar="MB", help="quota in MiB (default: the server's)")
    p.add_argument("--password", metavar="SOURCE",
                   help="prompt | generate | file:PATH[#key] | env:NAME (default: prompt on a "
                        "terminal, else generate; a generated one goes to a 0600 file whose "
                        "path is printed); several addresses: generate only")
    p = cmd(user, "passwd", "set a password (live at once)")
    p.add_argument("address")
    p.add_argument("--password", metavar="SOURCE", default="prompt",
                   help="prompt (default) | file:PATH[#key] | env:NAME")
    p = cmd(user, "quota", "set a mailbox's quota")
    p.add_argument("address")
    p.add_argument("quota", help="MiB, or 'default'")
    for name, what in (("disable", "no login on any port; mail still delivered"),
                       ("enable", "allow logins again")):
        cmd(user, name, what).add_argument("address")
    p = cmd(user, "remove", "remove a mailbox; its mail is kept (moved aside) unless --purge")
    p.add_argument("address")
    p.add_argument("--cascade", action="store_true",
                   help="also remove alias destinations and catch-alls pointing at it")
    p.add_argument("--purge", action="store_true",
                   help="archive the mail in the borg repository, then delete it")

    alias = sub.add_parser("alias", help="aliases: list, add, remove").add_subparsers(
        dest="action", required=True)
    cmd(alias, "list", "aliases and catch-alls", write=False).add_argument("--json",
                                                                          action="store_true")
    p = cmd(alias, "add", "add destinations to an alias (made if new)")
    p.add_argument("source")
    p.add_argument("destinations", nargs="+")
    p = cmd(alias, "remove", "remove destinations (or the whole alias)")
    p.add_argument("source")
    p.add_argument("destinations", nargs="*")

    ca = sub.add_parser("catchall", help="a domain's catch-all: set, clear").add_subparsers(
        dest="action", required=True)
    p = cmd(ca, "set", "mail to unknown addresses of DOMAIN goes to DESTINATION")
    p.add_argument("domain")
    p.add_argument("destination")
    cmd(ca, "clear", "no catch-all for DOMAIN").add_argument("domain")

    dom = sub.add_parser("domain", help="mail domains: list, add, remove, dns").add_subparsers(
        dest="action", required=True)
    cmd(dom, "list", "mail domains with their mailbox and alias counts", write=False)
    cmd(dom, "add", "add a domain (and its DKIM key); shows the DNS records").add_argument("domain")
    cmd(dom, "remove", "remove a domain with no mailboxes or aliases").add_argument("domain")
    cmd(dom, "dns", "the DNS records to publish for DOMAIN", write=False).add_argument("domain")

    sv = sub.add_parser("sieve", help="a user's own sieve scripts, dry runs, vacation"
                        ).add_subparsers(dest="action", required=True)
    cmd(sv, "list", "the user's scripts (and the admin's vacation)", write=False
        ).add_argument("address")
    p = cmd(sv, "show", "a script's text", write=False)
    p.add_argument("address")
    p.add_argument("name")
    p = cmd(sv, "put", "store a script (parsed here, compiled by the server first)")
    p.add_argument("address")
    p.add_argument("name")
    p.add_argument("file", help="the script ('-': standard input)")
    p.add_argument("--activate", action="store_true", help="make it the active script")
    p.add_argument("--replace", action="store_true",
                   help="overwrite a script of that name with other content (its diff is shown)")
    p = cmd(sv, "activate", "make a stored script the active one")
    p.add_argument("address")
    p.add_argument("name")
    cmd(sv, "deactivate", "no active script (all stay stored)").add_argument("address")
    p = cmd(sv, "delete", "delete a script")
    p.add_argument("address")
    p.add_argument("name")
    p = cmd(sv, "test", "what a script would do with sample messages (nothing is delivered)",
            write=False)
    p.add_argument("address")
    p.add_argument("file", help="the script")
    p.add_argument("messages", nargs="+", help="message files (RFC 5322)")
    p = cmd(sv, "vacation", "an out-of-office reply set by the postmaster (or --off)")
    p.add_argument("address")
    p.add_argument("--start", help="first day, YYYY-MM-DD")
    p.add_argument("--end", help="last day, YYYY-MM-DD (it stops by itself after it)")
    p.add_argument("--subject", default="Out of office")
    p.add_argument("--body", help="the reply's text")
    p.add_argument("--body-file", help="the reply's text from a file")
    p.add_argument("--days", type=int, default=7, help="at most one reply per sender per DAYS")
    p.add_argument("--off", action="store_true", help="remove the vacation")
    _migrate_parser(sub, default_params)


def _migrate_parser(sub, default_params: Path) -> None:
    p = sub.add_parser("migrate", help="pull mailboxes from an old IMAP server (dovecot's dsync "
                                       "over imapc): folders, flags and UIDs kept, then verified")
    p.add_argument("--params", default=str(default_params))
    p.add_argument("--only", action="append", default=[], metavar="LOGIN|ADDRESS",
                   help="only these mailboxes of the parameters' migration section")
    p.add_argument("--from", dest="source", metavar="URL",
                   help="imaps://host[:port] or imap://host[:port] (STARTTLS): one mailbox "
                        "given by --login, --password and --to instead of the parameters'")
    p.add_argument("--login", help="the user name on the old server")
    p.add_argument("--password", metavar="SOURCE", default="prompt",
                   help="prompt (default) | file:PATH[#key] | env:NAME")
    p.add_argument("--to", metavar="ADDRESS", help="the mailbox here (it must exist)")
    p.add_argument("--ca-file", help="trust this CA for the old server (default: the "
                                     "mail server's system CAs)")
    p.add_argument("--mode", choices=("sync", "backup"),
                   help="sync (default): never deletes here; backup: an exact copy")
    p.add_argument("--dry-run", action="store_true",
                   help="test the connection and login, show the folders; copy nothing")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the per-message comparison after the copy")
    p.add_argument("--json", action="store_true", help="print the run record as JSON")


def _migrate(session, args) -> int:
    import json
    from mailops.manage import migrate
    src, mode, jobs = migrate.jobs_for(session.params, only=args.only, source=args.source or "",
                                       login=args.login or "", password=args.password,
                                       to=args.to or "", ca_file=args.ca_file or "",
                                       mode=args.mode or "")
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        result = migrate.migrate(session, src, jobs, mode, dry_run=args.dry_run,
                                 verify_copy=not args.no_verify, progress=log)
    except migrate.MigrationError as exc:
        print(f"error: {exc}\nwhat was copied stays; a re-run continues from there",
              file=sys.stderr)
        return 1
    print(json.dumps(result.record(), indent=2, ensure_ascii=False) if args.json else result)
    return 0 if result.ok else 1


def run(args) -> int:
    from mailops.manage.accounts import ManageError          # here, so `mailops logs` starts without pydantic
    from mailops.core.secrets import SecretError
    from mailops.provision.session import open_session
    from mailops.core.host import ConnectError
    try:
        with open_session(args.params) as session:
            return _run(session, args)
    except (ManageError, SecretError, ConnectError) as exc:
        # a host key that is not the known one is refused before anything is sent
        print(f"error: {exc}\nnothing was written", file=sys.stderr)
        return 2


def _run(session, args) -> int:
    from mailops.manage.accounts import ManageError          # here, so `mailops logs` starts without pydantic
    from mailops.manage import users
    from mailops.manage.users import password_from
    if args.cmd == "migrate":
        return _migrate(session, args)
    what, action = args.cmd, args.action
    if (what, action) == ("user", "list"):
        df = users.mailboxes(session, args.domain)
        print(df.to_json(orient="records", date_format="iso") if args.json
              else df.to_string(index=False))
        return 0
    if (what, action) == ("user", "settings"):
        from mailops.manage.settings import client_settings
        found = client_settings(session.params, users.state(session), args.address)
        print(json.dumps(found.rows(), indent=2) if args.json else found)
        return 0
    if (what, action) == ("alias", "list"):
        df = users.aliases(session)
        print(df.to_json(orient="records") if args.json else df.to_string(index=False))
        return 0
    if (what, action) == ("domain", "list"):
        st = users.state(session)
        for d, active in sorted(st.domains.items()):
            n = sum(a.endswith("@" + d) for a in st.mailboxes)
            m = sum(a.endswith("@" + d) for a in st.aliases)
            print(f"{d:30} {'active' if active else 'inactive':8} {n:6} mailbox(es) {m:6} alias(es)"
                  + (f"  catch-all -> {st.catchall[d]}" if d in st.catchall else ""))
        return 0
    if (what, action) == ("domain", "dns"):
        print(users.dns_records(session, args.domain))
        return 0

    if what == "sieve":
        from mailops.manage import usersieve
        if action == "list":
            print(usersieve.table(session, args.address).to_string(index=False))
            return 0
        if action == "show":
            text = usersieve.show(session, args.address, args.name)
            if text is None:
                raise ManageError("name", f"{args.address} has no script {args.name!r}")
            print(text, end="")
            return 0
        if action == "test":
            results = usersieve.test(session, args.address, _read("file", args.file),
                                     [_read("messages", m) for m in args.messages])
            for m, r in zip(args.messages, results):
                print(f"== {m} ({r.subject}): {'ok' if r.ok else 'FAILED'}\n{r.actions}\n")
            return 0 if all(r.ok for r in results) else 1
        plan = _sieve_plan(session, args, usersieve)
    elif what == "user" and action == "add":
        if len(args.address) > 1:
            if args.password not in (None, "generate"):
                raise ManageError("password", "several addresses take generated passwords only")
            plan = users.plan_add_mailboxes(session, args.address, args.quota)
        else:
            source = args.password or ("prompt" if sys.stdin.isatty() else "generate")
            plan = users.plan_add_mailbox(session, args.address[0], password_from(source),
                                          args.quota)
    elif what == "user" and action == "passwd":
        plan = users.plan_set_password(session, args.address,
                                       password_from(args.password, generate=False))
    elif what == "user" and action == "quota":
        quota = args.quota if args.quota == "default" else _int("quota", args.quota)
        plan = users.plan_set_quota(session, args.address, quota)
    elif what == "user" and action in ("disable", "enable"):
        plan = getattr(users, f"plan_{action}")(session, args.address)
    elif what == "user" and action == "remove":
        plan = users.plan_remove_mailbox(session, args.address, cascade=args.cascade,
                                         purge=args.purge)
    elif what == "alias" and action == "add":
        plan = users.plan_add_alias(session, args.source, args.destinations)
    elif what == "alias" and action == "remove":
        plan = users.plan_remove_alias(session, args.source, args.destinations or None)
    elif what == "catchall" and action == "set":
        plan = users.plan_set_catchall(session, args.domain, args.destination)
    elif what == "catchall" and action == "clear":
        plan = users.plan_clear_catchall(session, args.domain)
    elif what == "domain" and action == "add":
        plan = users.plan_add_domain(session, args.domain)
    elif what == "domain" and action == "remove":
        plan = users.plan_remove_domain(session, args.domain)
    else:  # pragma: no cover - argparse allows nothing else
        raise SystemExit(f"unknown command {what} {action}")
    outcome = users.apply(session, plan, dry_run=args.dry_run)
    print(outcome)
    if what == "domain" and action == "add" and not args.dry_run:
        print("\npublish these DNS records:\n" + str(users.dns_records(session, args.domain)))
    return 0


def _sieve_plan(session, args, usersieve):
    from mailops.manage.accounts import ManageError          # here, so `mailops logs` starts without pydantic
    if args.action == "put":
        return usersieve.plan_put(session, args.address, args.name, _read("file", args.file),
                                  activate=args.activate, replace=args.replace)
    if args.action == "activate":
        return usersieve.plan_activate(session, args.address, args.name)
    if args.action == "deactivate":
        return usersieve.plan_deactivate(session, args.address)
    if args.action == "delete":
        return usersieve.plan_delete(session, args.address, args.name)
    if args.off:
        return usersieve.plan_vacation_off(session, args.address)
    for field in ("start", "end"):
        if not getattr(args, field):
            raise ManageError(field, "required (YYYY-MM-DD), or --off")
    body = _read("body_file", args.body_file) if args.body_file else args.body
    return usersieve.plan_vacation(session, args.address, args.start, args.end, args.subject,
                                   body or "", args.days)


def _read(field: str, path: str) -> str:
    from mailops.manage.accounts import ManageError          # here, so `mailops logs` starts without pydantic
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise ManageError(field, f"cannot read {path}: {exc.strerror}") from None


def _int(field: str, value: str) -> int:
    from mailops.manage.accounts import ManageError          # here, so `mailops logs` starts without pydantic
    try:
        return int(value)
    except ValueError:
        raise ManageError(field, f"{value!r} is not a whole number") from None

