"""Synthetic postfix logs covering what pflogsumm counts (and what it must not):
local and outbound deliveries, forwards, deferrals then delivery or bounce, pickup,
smtpd rejects of every kind pflogsumm normalises (RCPT, CONNECT, MAIL, DATA,
pipelining, size), reject warnings, cleanup holds, discards and milter rejects at
END-OF-MESSAGE, smtpd milter rejects at RCPT (not counted), SASL failures, other
warnings, Solaris ``[ID ...]`` tags and lines of other programs; in the three
timestamp formats.  Deterministic for a seed.  Used by the tests and bench/pflog.py."""
from __future__ import annotations

import datetime as dt
import random

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def stamp(t: dt.datetime, fmt: str) -> str:
    if fmt == "rfc3339":
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}+00:00"
    if fmt == "maillog":                       # postfix's own maillog_file: zero-padded day
        return f"{MONTHS[t.month - 1]} {t.day:02d} {t:%H:%M:%S}"
    return f"{MONTHS[t.month - 1]} {t.day:2d} {t:%H:%M:%S}"   # syslog


def first_day(today: dt.date | None = None) -> dt.date:
    """The first of last month (always in the past, so pflogsumm's year guess holds)."""
    today = today or dt.date.today()
    return (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)


def events(n: int, seed: int = 1, days: int = 12, start: dt.date | None = None):
    """(time, program, text) tuples for about ``n`` messages over ``days`` days."""
    rnd = random.Random(seed)
    start = start or first_day()
    t0 = dt.datetime.combine(start, dt.time())
    span = days * 86400
    qn = 0

    def qid():
        nonlocal qn
        qn += 1
        return f"{qn:010X}"

    def ip():
        return f"203.0.113.{rnd.randint(2, 250)}"

    ext = ["example.net", "mail.example.org", "gmail.example", "lists.example.co.uk"]
    local = ["lab.test", "example.test"]
    out = []
    for i in range(n):
        t = t0 + dt.timedelta(seconds=rnd.randrange(span), microseconds=rnd.randrange(10 ** 6))
        kind = rnd.choices(["in", "out", "pickup", "fwd", "reject", "greylist", "milter",
                            "warn", "sasl", "hold", "discard", "other"],
                           [40, 15, 4, 3, 15, 4, 4, 3, 4, 1, 1, 6])[0]
        q = qid()
        host = f"mx{rnd.randint(1, 9)}.{rnd.choice(ext)}"
        cip = ip()
        sender = f"user{rnd.randint(1, 60)}@{rnd.choice(ext)}"
        if rnd.random() < 0.05:
            sender = ""
        rcpt = f"rcpt{rnd.randint(1, 30)}@{rnd.choice(local)}"
        size = rnd.randint(800, 90000)
        s = lambda k: t + dt.timedelta(milliseconds=k * 7)   # noqa: E731
        if kind in ("in", "fwd"):
            out += [(s(0), "postfix/smtpd", f"connect from {host}[{cip}]"),
                    (s(1), "postfix/smtpd", f"{q}: client={host}[{cip}]"),
                    (s(2), "postfix/cleanup", f"{q}: message-id=<{q}@{host}>"),
                    (s(3), "postfix/qmgr", f"{q}: from=<{sender}>, size={size}, nrcpt=1 (queue active)")]
            if kind == "fwd":
                out.append((s(4), "postfix/local", f"{q}: to=<{rcpt}>, relay=local, delay=0.2, "
                                                   f"delays=0.1/0/0/0.1, dsn=2.0.0, status=sent "
                                                   f"(forwarded as {qid()})"))
            else:
                for r in range(rnd.choice([1, 1, 1, 2, 3])):
                    rc = f"rcpt{rnd.randint(1, 30)}@{rnd.choice(local)}" if r else rcpt
                    out.append((s(4 + r), "postfix/lmtp",
                                f"{q}: to=<{rc}>, relay=127.0.0.1[127.0.0.1]:24, delay=0.{rnd.randint(1, 9)}, "
                                f"delays=0.1/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 <{rc}> Saved)"))
            out.append((s(9), "postfix/qmgr", f"{q}: removed"))
        elif kind in ("out", "pickup"):
            who = f"rcpt{rnd.randint(1, 30)}@lab.test"
            if kind == "pickup":
                out.append((s(1), "postfix/pickup", f"{q}: uid=0 from=<root>"))
                who = "root"
            else:
                out.append((s(1), "postfix/submission/smtpd",
                            f"{q}: client=unknown[198.51.100.{rnd.randint(2, 9)}], "
                            f"sasl_method=PLAIN, sasl_username={who}"))
            dest = f"{sender.split('@')[0] or 'x'}@{rnd.choice(ext)}"
            out.append((s(3), "postfix/qmgr", f"{q}: from=<{who}>, size={size}, nrcpt=1 (queue active)"))
            fate = rnd.choices(["sent", "defer-sent", "defer-bounce", "bounce"], [70, 15, 5, 10])[0]
            k = 4
            if fate.startswith("defer"):
                for _ in range(rnd.randint(1, 3)):
                    out.append((s(k), "postfix/smtp",
                                f"connect to {host}[{ip()}]:25: Connection refused"))
                    out.append((s(k + 1), "postfix/smtp",
                                f"{q}: to=<{dest}>, relay=none, delay={rnd.randint(1, 900)}, "
                                f"delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to "
                                f"{host}[{ip()}]:25: Connection refused)"))
                    k += 2
            if fate.endswith("sent"):
                out.append((s(k), "postfix/smtp",
                            f"{q}: to=<{dest}>, relay={host}[{ip()}]:25, delay=1.{rnd.randint(0, 9)}, "
                            f"delays=0/0/0.5/0.5, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as X{q})"))
            else:
                out.append((s(k), "postfix/smtp",
                            f"{q}: to=<{dest}>, relay={host}[{ip()}]:25, delay=2, delays=0/0/1/1, "
                            f"dsn=5.1.1, status=bounced (host {host}[{ip()}] said: 550 5.1.1 "
                            f"<{dest}>: Recipient address rejected: User unknown (in reply to "
                            f"RCPT TO command))"))
                out.append((s(k + 1), "postfix/bounce",
                            f"{q}: sender non-delivery notification: {qid()}"))
            out.append((s(k + 2), "postfix/qmgr", f"{q}: removed"))
        elif kind == "reject":
            helo = rnd.choice(["<localhost>", "<[1.2.3.4]>", f"<{host}>"])
            out.append((s(0), "postfix/smtpd", "NOQUEUE: reject: " + rnd.choice([
                f"RCPT from {host}[{cip}]: 550 5.1.1 <{rcpt}>: Recipient address rejected: "
                f"User unknown in virtual mailbox table; from=<{sender}> to=<{rcpt}> proto=ESMTP helo={helo}",
                f"RCPT from unknown[{cip}]: 554 5.7.1 <x@{rnd.choice(ext)}>: Relay access denied; "
                f"from=<{sender}> to=<x@{rnd.choice(ext)}> proto=ESMTP helo={helo}",
                f"RCPT from unknown[{cip}]: 450 4.7.25 Client host rejected: cannot find your "
                f"hostname, [{cip}]; from=<{sender}> to=<{rcpt}> proto=ESMTP helo={helo}",
                f"RCPT from {host}[{cip}]: 553 5.7.1 <{sender}>: Sender address rejected: not "
                f"owned by user x; from=<{sender}> to=<{rcpt}> proto=ESMTP helo={helo}",
                f"CONNECT from unknown[{cip}]: 554 5.7.1 Service unavailable; Client host "
                f"[{cip}] blocked using zen.example; proto=SMTP",
                f"MAIL from {host}[{cip}]: 552 5.3.4 Message size exceeds fixed limit; "
                f"proto=ESMTP helo={helo}",
                f"DATA from {host}[{cip}]: 503 5.5.0 <DATA>: Data command rejected: Improper "
                f"use of SMTP command pipelining; from=<{sender}> to=<{rcpt}> proto=ESMTP helo={helo}",
                f"RCPT from {host}[{cip}]: 504 5.5.2 <bad helo>: Helo command rejected: need "
                f"fully-qualified hostname; from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<bad helo>",
            ])))
        elif kind == "greylist":       # rspamd asks to try later: smtpd, at RCPT: not counted
            out.append((s(0), "postfix/smtpd",
                        f"NOQUEUE: milter-reject: RCPT from {host}[{cip}]: 451 4.7.1 Try again "
                        f"later; from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<{host}>"))
        elif kind == "milter":         # rspamd refuses spam at end of message: cleanup, counted
            out += [(s(1), "postfix/smtpd", f"{q}: client={host}[{cip}]"),
                    (s(2), "postfix/cleanup",
                     f"{q}: milter-reject: END-OF-MESSAGE from {host}[{cip}]: 5.7.1 Gtube "
                     f"pattern; from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<{host}>")]
        elif kind == "warn":
            out.append((s(0), "postfix/smtpd", rnd.choice([
                f"warning: hostname {host} does not resolve to address {cip}",
                f"NOQUEUE: reject_warning: RCPT from {host}[{cip}]: 450 4.7.1 Client host "
                f"rejected: cannot find your reverse hostname, [{cip}]; from=<{sender}> "
                f"to=<{rcpt}> proto=ESMTP helo=<{host}>",
                f"warning: non-SMTP command from {host}[{cip}]: GET / HTTP/1.1"])))
        elif kind == "sasl":
            bad = f"198.51.100.{rnd.choice([3, 4, 5])}"
            out.append((s(0), "postfix/submission/smtpd",
                        f"warning: unknown[{bad}]: SASL PLAIN authentication failed: "
                        f"UGFzc3dvcmQ6"))
        elif kind == "hold":
            out += [(s(1), "postfix/smtpd", f"{q}: client={host}[{cip}]"),
                    (s(2), "postfix/cleanup", f"{q}: hold: header Subject: invoice {i} from "
                                              f"{host}[{cip}]; from=<{sender}> to=<{rcpt}> "
                                              f"proto=ESMTP helo=<{host}>")]
        elif kind == "discard":
            out += [(s(1), "postfix/smtpd", f"{q}: client={host}[{cip}]"),
                    (s(2), "postfix/cleanup", f"{q}: discard: body free money from "
                                              f"{host}[{cip}]; from=<{sender}> to=<{rcpt}> "
                                              f"proto=ESMTP helo=<{host}>")]
        else:
            out.append((s(0), rnd.choice(["dovecot", "postfix/anvil", "postfix/scache",
                                          "rspamd"]), "statistics: something else"))
    out.sort(key=lambda e: e[0])
    return out


def write(path, n: int, fmt: str = "syslog", seed: int = 1, days: int = 12,
          host: str = "mx1", solaris_every: int = 0) -> int:
    """A log file of about ``n`` messages; returns the number of lines."""
    count = 0
    with open(path, "w") as f:
        for i, (t, prog, text) in enumerate(events(n, seed, days)):
            pid = 1000 + len(prog) * 37
            tag = "[ID 197553 mail.info] " if solaris_every and i % solaris_every == 0 else ""
            f.write(f"{stamp(t, fmt)} {host} {prog}[{pid}]: {tag}{text}\n")
            count += 1
    return count
