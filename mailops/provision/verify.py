"""90-verify: the mail server checked from outside, the way clients and other
servers meet it, and on the server what only it can tell.  Each check returns
ok or failed with its evidence (the check families live in ``mailops.provision.checks``).

Test messages carry an ``X-Mailops-Verify`` token; each is looked for over IMAPS
in the mailbox it must reach (and, for the catch-all, must not reach) and
deleted afterwards, so user data is left as it was.
"""
from __future__ import annotations

import uuid
from typing import Callable

from .checks import dkim, dns, peer, server, smtp, tls
from mailops.provision.checks.clients import (Target, find_and_delete, imap_login, message,
    target_from)
from mailops.provision.checks.result import (Check, CheckFailed, CheckReport, check, require,
    run_parallel)
from mailops.provision.checks.smtp import GTUBE

__all__ = ["Check", "CheckFailed", "CheckReport", "GTUBE", "Target", "check", "find_and_delete",
           "message", "require", "run_checks", "run_parallel", "target_from"]


def client_checks(params, t: Target) -> list[tuple[str, Callable[[], str]]]:
    """Checks from outside, as clients and other servers meet the server."""
    m = params.mail
    mailboxes = [mb.address for mb in m.mailboxes]
    user = mailboxes[0]
    todo: list[tuple[str, Callable[[], str]]] = []
    add = lambda name, fn: todo.append((name, fn))  # noqa: E731

    for port, mode in tls.PORTS:
        for kind, ciphers in tls.KINDS:
            add(f"tls {port} {kind}",
                lambda p=port, mo=mode, k=kind, c=ciphers: tls.certificate(t, p, mo, k, c))
    for domain in params.mail_domains:
        rcpt = next((a for a in mailboxes if a.endswith("@" + domain)), None)
        if rcpt:
            add(f"inbound smtp 25 to {domain}", lambda r=rcpt: smtp.deliver(t, 25, None, r, r))
    add("submission 587 as user", lambda: smtp.deliver(t, 587, user, user, user))
    add("submission 465 as user", lambda: smtp.deliver(t, 465, user, user, user, tls="implicit"))
    for alias in m.aliases:
        owners = [d for d in alias.destinations if d in mailboxes]
        if owners:
            # every mailbox the alias reaches gets the message; each copy is taken away
            add(f"alias {alias.source}", lambda a=alias.source, o=tuple(owners): smtp.deliver(
                t, 25, None, a, o[0], also=o[1:]))
    for domain, dest in m.catch_all.items():
        if dest in mailboxes:
            add(f"catch-all {domain}", lambda d=domain, o=dest: smtp.deliver(
                t, 25, None, f"nobody-{uuid.uuid4().hex[:8]}@{d}", o))
        real = next((a for a in mailboxes if a.endswith("@" + domain) and a != dest), None)
        if real and dest in mailboxes:
            add(f"catch-all does not hide {real}",
                lambda r=real, o=dest: smtp.deliver(t, 25, None, r, r, not_in=o))
    add("plaintext imap 143 refused", lambda: smtp.closed(t, 143))
    add("auth before tls refused (587)", lambda: smtp.auth_before_tls(t))
    add("relay without auth refused", lambda: smtp.relay_refused(t))
    other = next((a for a in mailboxes if a != user), None) or \
        f"someone-else@{params.mail_domains[0]}"
    add("sending as someone else refused", lambda: smtp.sender_mismatch(t, user, other))
    for name, ending in smtp.SMUGGLING_ENDINGS.items():
        add(f"smtp smuggling {name} not split",
            lambda n=name, e=ending: smtp.smuggling(t, user, n, e))
    if params.rspamd.enabled:
        add("spam (GTUBE) refused at SMTP time", lambda: smtp.gtube_refused(t, user))
    for remote in params.verify.remote_mailboxes:
        add(f"mx to mx {remote.address}", lambda r=remote: peer.arrives(t, params, user, r))
    return todo


def server_checks(params, session) -> list[tuple[str, Callable[[], str]]]:
    """Checks only the server can answer, over the session's one connection."""
    todo: list[tuple[str, Callable[[], str]]] = [
        ("security updates", lambda: server.updates(session, params)),
        ("ssh password logins", lambda: server.sshd(session, params)),
        ("dns records", lambda: dns.published(session))]
    if params.fail2ban.enabled:
        todo.append(("fail2ban", lambda: server.fail2ban(session, params)))
    if params.backup.enabled:
        todo.append(("last backup", lambda: server.last_backup(session, params)))
    if params.rspamd.enabled:
        for domain in params.mail_domains:
            todo.append((f"dkim signs {domain}",
                         lambda d=domain: dkim.signs(session.host, params, d)))
        if params.sieve.learn:
            todo.append(("spam/ham learning", lambda: server.learning(session.host)))
    return todo


def run_checks(params) -> CheckReport:
    t = target_from(params)
    if not params.mail.mailboxes:
        return CheckReport(t.address, (Check("mailboxes", False, "no mailboxes in the parameters"
                                                                 ": nothing to verify with"),))
    user = params.mail.mailboxes[0].address
    # each mailbox opened once before the parallel checks: a new mailbox's first
    # sessions in parallel made dovecot 2.3 panic on its index lock (EDEADLK)
    first = [check(f"imap login {mb.address}", lambda u=mb.address: imap_login(t, u))
             for mb in params.mail.mailboxes]
    todo = client_checks(params, t)
    from .session import Session
    session = Session(params)
    try:
        session.info        # connect once, before the checks share the connection in threads
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        failed = Check("server checks over SSH", False, f"{type(exc).__name__}: {exc}")
        return CheckReport(t.address, tuple(first + run_parallel(todo)) + (failed,))
    try:
        checks = first + run_parallel(todo + server_checks(params, session))
    finally:
        session.close()
    # wrong passwords last: dovecot then slows every login from this address
    checks += run_parallel([("wrong password refused (imap)", lambda: smtp.wrong_imap(t, user)),
                            ("wrong password refused (587)", lambda: smtp.wrong_smtp(t, user))])
    return CheckReport(t.address, tuple(checks))
