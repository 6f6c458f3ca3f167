"""pflogsumm's figures, vectorised: the same definitions as :mod:`mailops.insight.pflog`
(its ``Summary`` is the reference, line by line), computed with polars.

The file is read in blocks of whole lines; every block's lines are parsed at once
(timestamps, program, queue id and the fields of each line kind are regex
extractions in polars, on all cores) and reduced to small event tables: messages
received, ``from=`` lines, deliveries, rejects, warnings.  The per-queue-id state
pflogsumm keeps (a message's size, where it came from, which ids were deferred)
is then joined in bulk over the events, in the order of the lines:

- a ``from=`` line counts only while no earlier one of its queue id carried a
  size (pflogsumm's ``next if $msgSizes{$qid}``);
- it takes the client host/domain of the latest ``client=`` (or pickup) line of
  its queue id since the previous counted ``from=`` (pflogsumm pops that entry);
- a delivery's bytes are the size of the latest counted ``from=`` before it.

Python runs only over distinct values (client names, reject texts).  Memory grows
with the file (about 0.4 GB for 1M lines); ``mailops.insight.pflog.Summary`` streams in
memory bounded by the messages (``logs summary --engine stream``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Iterable

from . import pflog
from .pflog import MONTHS, gimme_domain

BLOCK = 32 << 20
AUTO_LIMIT = 256 << 20          # `logs summary --engine auto`: above this, the streaming engine


# the timestamp and host: only this prefix is matched (a capture over the whole line is slow)
_PREFIX = (r"^(?:\w{3} {1,2}\d{1,2} \d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}"
           r"(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)) \S+ ")
_TS = (r"^(?:(?P<mon>\w{3}) {1,2}(?P<d>\d{1,2}) (?P<h>\d{2})"
       r"|(?P<Y>\d{4})-(?P<M>\d{2})-(?P<D>\d{2})T(?P<H>\d{2}))")
_CMD = r"^postfix(?:/(?:smtps|submission))?/(?P<cmd>[^\[:]*).*?: (?P<qid>[^:\s]+)"
_CMD2 = r"^(?P<cmd>postfix(?:-script)?)(?:\[\d+\])?: (?P<qid>[^:\s]+)"
_CLEANUP = (r"/cleanup\[\d+\]: .*?\b(?P<sub>(?:milter-)?reject|warning|hold|discard): "
            r"(?P<where>header|body|END-OF-MESSAGE) ")
# the reference's own patterns where polars takes them as they are; the others above and
# below differ only by named groups or by stopping before the rest of the line (cheaper)
_CLIENT = pflog._CLIENT.pattern
_SMTPD_REJ = pflog._SMTPD_REJ.pattern
_FROM = r"from=<(?P<addr>[^>]*)>, size=(?P<size>\d+)"
_TO = (r"to=<(?P<addr>[^>]*)>, (?:orig_to=<[^>]*>, )?relay=(?:[^,]+), (?:conn_use=[^,]+, )?"
       r"delay=(?:[^,]+), (?:delays=[^,]+, )?(?:dsn=[^,]+, )?status=(?P<status>\S+)")
_PICKUP = pflog._PICKUP.pattern
_SASL = pflog._SASL.pattern
# every line that can count holds one of these (the rest only make days)
_RELEVANT = ["client=", "from=<", "to=<", "reject", "hold:", "discard:", "warning:",
             "/pickup[", "fatal:", "panic:"]
_FIGURE = {"reject": "rejected", "reject_warning": "reject_warnings", "hold": "held",
           "discard": "discarded"}


def _nocap(pattern: str) -> str:
    """The pattern without its anchor and named groups (for a match-only scan)."""
    import re
    return re.sub(r"\(\?P<\w+>", "(?:", pattern.lstrip("^"))


def _lines(block: bytes):
    """One column of lines (no separator, no quoting; undecodable bytes replaced)."""
    import io
    import polars as pl
    return pl.read_csv(io.BytesIO(block), has_header=False, separator="\x1f", quote_char=None,
                       new_columns=["l"], schema={"l": pl.Utf8}, encoding="utf8-lossy",
                       truncate_ragged_lines=True)


def _lower_domain(col):
    import polars as pl
    parts = col.str.extract_groups(r"^([^@]*)(@.*)$")
    return pl.when(col.str.contains("@", literal=True)).then(
        parts.struct.field("1") + parts.struct.field("2").str.to_lowercase()).otherwise(col)


@dataclasses.dataclass
class FastSummary:
    figures: dict
    per_day_rows: list
    per_hour_rows: list
    rejects: list
    sasl: dict
    warnings: dict
    sendg_dom: dict
    recip_dom: dict
    days: int

    def grand_totals(self) -> dict:
        return self.figures

    @property
    def per_day(self) -> dict[str, list[int]]:
        """As :class:`mailops.insight.pflog.Summary` keeps it (for :func:`mailops.insight.pflog.text`)."""
        return {r["date"]: [r["received"], r["delivered"], r["deferred"], r["bounced"],
                            r["rejected"]] for r in self.per_day_rows}

    def top_reject_reasons(self) -> list[dict]:
        return self.rejects

    def to_dict(self) -> dict:
        return {"grand_totals": self.figures, "per_day": self.per_day_rows,
                "per_hour": self.per_hour_rows, "top_reject_reasons": self.rejects,
                "sasl_failures_by_ip": self.sasl, "warnings_by_program": self.warnings,
                "messages_by_sender_domain": self.sendg_dom,
                "deliveries_by_recipient_domain": self.recip_dom, "days": self.days}


def summarize(paths: Iterable[str | Path], day: dt.date | None = None,
              today: dt.date | None = None) -> FastSummary:
    """The figures of these files (plain or ``.gz``), in order."""
    return summarize_blocks(pflog.blocks(paths, BLOCK), day, today)


def summarize_lines(lines: Iterable[str], day: dt.date | None = None,
                    today: dt.date | None = None, batch: int = 100_000) -> FastSummary:
    """The figures of lines from elsewhere (the store), in order."""
    return summarize_blocks(pflog.line_blocks(lines, batch), day, today)


def summarize_blocks(blocks: Iterable[bytes], day: dt.date | None = None,
                     today: dt.date | None = None) -> FastSummary:
    import polars as pl
    today = today or dt.date.today()
    this_year, this_month = today.year, today.month - 1
    parts: dict[str, list] = {k: [] for k in ("lines", "rcvd", "from", "to", "rej", "warn")}
    seq0, last_day, day_count = 0, None, 0
    cmd_any = _PREFIX + "(?:" + _nocap(_CMD) + "|" + _nocap(_CMD2) + ")"
    for block in blocks:
        df = _lines(block)
        n = len(df)
        df = df.with_columns(seq=pl.int_range(seq0, seq0 + n, dtype=pl.Int64))
        seq0 += n
        l = pl.col("l")
        df = df.with_columns(pl.when(l.str.contains(": [ID ", literal=True)).then(
            l.str.replace(pflog._ID_STUFF.pattern, ": ")).otherwise(l).alias("l"))
        # postfix's lines (a timestamp, a host, a postfix program): no capture yet
        df = df.filter(l.str.contains(cmd_any))
        df = df.with_columns(prefix=l.str.extract(_PREFIX, 0))
        df = df.with_columns(ts=pl.col("prefix").str.extract_groups(_TS)).unnest("ts")
        syslog = pl.col("mon").is_not_null()
        df = df.with_columns(
            m0=pl.when(syslog).then(pl.col("mon").replace_strict(MONTHS, default=None,
                                                                  return_dtype=pl.Int32))
            .otherwise(pl.col("M").cast(pl.Int32) - 1),
            dd=pl.when(syslog).then(pl.col("d").cast(pl.Int32)).otherwise(pl.col("D").cast(pl.Int32)),
            hour=pl.when(syslog).then(pl.col("h").cast(pl.Int32)).otherwise(pl.col("H").cast(pl.Int32)))
        df = df.filter(pl.col("m0").is_not_null() & (pl.col("hour") <= 23))   # no such hour: skipped
        df = df.with_columns(year=pl.when(syslog).then(
            pl.when(pl.col("m0") > this_month).then(this_year - 1).otherwise(this_year))
            .otherwise(pl.col("Y").cast(pl.Int32)))
        if day is not None:
            ok = (pl.col("m0") == day.month - 1) & (pl.col("dd") == day.day) & (
                syslog | (pl.col("year") == day.year))
            df = df.filter(ok)
        if len(df) == 0:
            continue
        df = df.with_columns(key=pl.col("year") * 10000 + (pl.col("m0") + 1) * 100 + pl.col("dd"))
        dds = df["dd"]
        changes = int((dds != dds.shift(1)).fill_null(True).sum())
        if last_day is not None and dds[0] == last_day:
            changes -= 1
        day_count += changes
        last_day = dds[-1]
        parts["lines"].append(df.select(pl.col("key").unique()))
        # only lines that can count go further (a literal scan, Aho-Corasick)
        df = df.filter(l.str.contains_any(_RELEVANT)).select(
            "seq", "key", "hour", rest=l.str.slice(pl.col("prefix").str.len_chars()))
        r = pl.col("rest")
        c1, c2 = r.str.extract_groups(_CMD), r.str.extract_groups(_CMD2)
        df = df.with_columns(
            cmd=pl.coalesce(c1.struct.field("cmd"), c2.struct.field("cmd")),
            qid=pl.when(c1.struct.field("cmd").is_not_null()).then(c1.struct.field("qid"))
            .otherwise(c2.struct.field("qid")))
        cmd, qid = pl.col("cmd"), pl.col("qid")
        # pflogsumm's order of line kinds: the first that applies takes the line
        cleanup = df.filter(cmd == "cleanup").with_columns(
            cl=r.str.extract_groups(_CLEANUP)).filter(pl.col("cl").struct.field("sub").is_not_null())
        df = df.filter(~pl.col("seq").is_in(cleanup["seq"].implode()))
        none = pl.lit(None, pl.Utf8)
        parts["rej"].append(cleanup.select(
            "seq", "key", "hour",
            kind=pl.col("cl").struct.field("sub").replace(
                {"milter-reject": "reject", "warning": "reject_warning"}),
            typ=pl.lit("cleanup"), reason=pl.col("cl").struct.field("where"), text=none))
        parts["warn"].append(df.filter(qid == "warning").select(
            "seq", "cmd", sasl=pl.when(cmd == "smtpd").then(r.str.extract(_SASL, 1))))
        df = df.filter(~qid.is_in(["warning", "fatal", "panic"]))
        parts["rej"].append(df.filter(qid.is_in(list(_FIGURE))).select(
            "seq", "key", "hour", kind=qid, typ=none, reason=none, text=r))
        df = df.filter(~qid.is_in(list(_FIGURE)) & (cmd != "master"))
        smtpd = df.filter(cmd.is_in(["smtpd", "postscreen"])).with_columns(
            client=pl.when(r.str.contains("client=", literal=True)).then(r.str.extract(_CLIENT, 1)))
        parts["rcvd"].append(smtpd.filter(pl.col("client").is_not_null()).select(
            "seq", "qid", "key", "hour", src=pl.col("client"), pickup=pl.lit(False)))
        srej = smtpd.filter(pl.col("client").is_null()).with_columns(
            srej=r.str.extract(_SMTPD_REJ, 1)).filter(pl.col("srej").is_not_null())
        parts["rej"].append(srej.select("seq", "key", "hour", kind=pl.col("srej"), typ=none,
                                        reason=none, text=r))
        df = df.filter(~cmd.is_in(["smtpd", "postscreen"]))
        fr = df.filter(r.str.contains(", size=", literal=True)).with_columns(
            fr=r.str.extract_groups(_FROM)).filter(pl.col("fr").struct.field("addr").is_not_null())
        parts["from"].append(fr.select("seq", "qid", addr=pl.col("fr").struct.field("addr"),
                                       size=pl.col("fr").struct.field("size").cast(pl.Int64)))
        df = df.filter(~pl.col("seq").is_in(fr["seq"].implode()))
        to = df.filter(r.str.contains("to=<", literal=True)).with_columns(
            to=r.str.extract_groups(_TO)).filter(pl.col("to").struct.field("status").is_not_null())
        parts["to"].append(to.select(
            "seq", "qid", "key", "hour", addr=pl.col("to").struct.field("addr"),
            status=pl.col("to").struct.field("status"),
            fwd=r.str.contains(r"status=\S+.*forwarded as ")))
        df = df.filter(~pl.col("seq").is_in(to["seq"].implode()))
        parts["rcvd"].append(df.filter((cmd == "pickup") & r.str.contains(_PICKUP)).select(
            "seq", "qid", "key", "hour", src=pl.lit("pickup"), pickup=pl.lit(True)))
    return _reduce(parts, day_count)


def _cat(frames, schema):
    import polars as pl
    frames = [f for f in frames if len(f)]
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame(schema=schema)


def _reduce(parts, day_count) -> FastSummary:
    import polars as pl
    S, I = pl.Utf8, pl.Int64
    rcvd = _cat(parts["rcvd"], {"seq": I, "qid": S, "key": pl.Int32, "hour": pl.Int32, "src": S,
                                "pickup": pl.Boolean})
    frm = _cat(parts["from"], {"seq": I, "qid": S, "addr": S, "size": I})
    to = _cat(parts["to"], {"seq": I, "qid": S, "key": pl.Int32, "hour": pl.Int32, "addr": S,
                            "status": S, "fwd": pl.Boolean})
    rej = _cat(parts["rej"], {"seq": I, "key": pl.Int32, "hour": pl.Int32, "kind": S, "typ": S,
                              "reason": S, "text": S})
    warn = _cat(parts["warn"], {"seq": I, "cmd": S, "sasl": S})
    keys = sorted(set().union(*[set(f["key"]) for f in parts["lines"]])) if parts["lines"] else []
    fmt = {k: f"{k // 10000:04d}-{k // 100 % 100:02d}-{k % 100:02d}" for k in keys}

    # where each received message came from: pflogsumm's gimme_domain, once per name
    names = {s: gimme_domain(s) for s in rcvd.filter(~pl.col("pickup"))["src"].unique()}
    names["pickup"] = "pickup"
    rcvd = rcvd.with_columns(whence=pl.col("src").replace_strict(names, return_dtype=S))

    # counted from= lines: none of the same id before them had a size
    frm = frm.sort("seq").with_columns(
        before=((pl.col("size") > 0).cast(I).cum_sum() - (pl.col("size") > 0).cast(I))
        .over("qid"))
    counted = frm.filter(pl.col("before") == 0).drop("before").with_columns(
        prev=pl.col("seq").shift(1).over("qid"))
    counted = counted.sort("seq").join_asof(
        rcvd.sort("seq").select("seq", "qid", rseq="seq", whence="whence"),
        on="seq", by="qid", strategy="backward", check_sortedness=False)
    senders = counted.filter(
        pl.col("whence").is_not_null() & (pl.col("whence") != "") &
        (pl.col("prev").is_null() | (pl.col("rseq") > pl.col("prev"))))
    senders = senders.with_columns(
        addr=pl.when(pl.col("addr") == "").then(pl.lit("from=<>"))
        .otherwise(_lower_domain(pl.col("addr"))))
    senders = senders.with_columns(dom=pl.coalesce(
        pl.col("addr").str.extract(r"^[^@]+@(.+)$", 1),
        pl.when(pl.col("whence") == "pickup").then(pl.col("addr")).otherwise(pl.col("whence"))))

    # deliveries: the size of the latest counted from= of the id before them
    to = to.sort("seq").join_asof(counted.select("seq", "qid", fsize="size").sort("seq"),
                                  on="seq", by="qid", strategy="backward", check_sortedness=False)
    to = to.with_columns(addr=_lower_domain(pl.col("addr")),
                         fsize=pl.col("fsize").fill_null(0))
    to = to.with_columns(dom=pl.col("addr").str.replace(r"^[^@]+@", ""))
    sent = to.filter((pl.col("status") == "sent") & ~pl.col("fwd"))
    forwarded = to.filter((pl.col("status") == "sent") & pl.col("fwd")).height
    deferred = to.filter(pl.col("status") == "deferred")
    bounced = to.filter(pl.col("status") == "bounced")

    # rejects: pflogsumm's reason for each distinct text, once
    by_text = rej.filter(pl.col("text").is_not_null() & (pl.col("kind") == "reject")) \
        .group_by("text").agg(pl.len())
    merged: dict[tuple[str, str], int] = {}
    for w, c in rej.filter((pl.col("typ") == "cleanup") & (pl.col("kind") == "reject")) \
            .group_by("reason").agg(pl.len()).iter_rows():
        merged[("cleanup", w)] = merged.get(("cleanup", w), 0) + c
    if by_text.height:
        typ, reason = reject_reasons(by_text["text"])
        for key, c in zip(zip(typ, reason), by_text["len"]):
            merged[key] = merged.get(key, 0) + c
    top = sorted(({"type": t, "reason": r, "count": c} for (t, r), c in merged.items()),
                 key=lambda x: (-x["count"], x["type"], x["reason"]))
    kinds = dict(rej.group_by("kind").agg(pl.len()).iter_rows())

    # per day and per hour: received, delivered, deferred, bounced, rejected
    def per(col):
        out = {}
        for name, frame in (("received", rcvd), ("delivered", sent), ("deferred", deferred),
                            ("bounced", bounced), ("rejected", rej)):
            for k, c in frame.group_by(col).agg(pl.len()).iter_rows():
                out.setdefault(k, {})[name] = c
        return out
    by_day, by_hour = per("key"), per("hour")
    cols = ("received", "delivered", "deferred", "bounced", "rejected")
    per_day = [{"date": fmt[k], **{c: by_day.get(k, {}).get(c, 0) for c in cols}} for k in keys]
    per_hour = [{"hour": h, **{c: by_hour.get(h, {}).get(c, 0) for c in cols}} for h in range(24)]

    sd = senders.group_by("dom").agg(m=pl.len(), b=pl.col("size").sum())
    rd_sent = sent.group_by("dom").agg(d=pl.len(), b=pl.col("fsize").sum())
    rd_def = deferred.group_by("dom").agg(f=pl.len())
    rd = rd_sent.join(rd_def, on="dom", how="full", coalesce=True).fill_null(0)
    n = {"delivered": sent.height, "rejected": kinds.get("reject", 0),
         "discarded": kinds.get("discard", 0)}
    total = n["delivered"] + n["rejected"] + n["discarded"]
    figures = {
        "received": rcvd.height, "delivered": sent.height, "forwarded": forwarded,
        "deferred": deferred["qid"].n_unique() if deferred.height else 0,
        "deferrals": deferred.height, "bounced": bounced.height, "rejected": n["rejected"],
        "rejected_pct": int(n["rejected"] / total * 100) if total else 0,
        "reject_warnings": kinds.get("reject_warning", 0), "held": kinds.get("hold", 0),
        "discarded": n["discarded"],
        "discarded_pct": int(n["discarded"] / total * 100) if total else 0,
        "bytes_received": int(senders["size"].sum() or 0),
        "bytes_delivered": int(sent["fsize"].sum() or 0),
        "senders": senders["addr"].n_unique() if senders.height else 0,
        "sending_hosts_domains": sd.height,
        "recipients": sent["addr"].n_unique() if sent.height else 0,
        "recipient_hosts_domains": rd.filter(pl.col("d") > 0).height}
    sasl_rows = warn.filter(pl.col("sasl").is_not_null()).group_by("sasl").agg(
        c=pl.len(), first=pl.col("seq").min()).sort(["c", "first"], descending=[True, False])
    return FastSummary(
        figures, per_day, per_hour, top,
        {ip: c for ip, c, _ in sasl_rows.iter_rows()},
        {cmd: c for cmd, c in sorted(warn.group_by("cmd").agg(pl.len()).iter_rows())},
        {d: {"messages": m, "bytes": b} for d, m, b in
         sorted(sd.iter_rows(), key=lambda x: (-x[1], x[0]))},
        {d: {"delivered": dd, "bytes": b, "deferrals": f} for d, dd, b, f in
         sorted(rd.select("dom", "d", "b", "f").iter_rows(), key=lambda x: (-x[1], x[0]))},
        day_count)


_REJ_PARTS = (r"^.* \b(?:reject(?:_warning)?|hold|discard): (?P<typ>\S+) from (?:\S+?): "
              r"(?P<reas>.*)$")
# pflogsumm's rewritten reasons, the reference's table (Python's \1 is polars' ${1})
_SPECIAL = [(rx.pattern, repl.replace("\\1", "${1}")) for rx, repl in pflog._REJ_SPECIAL]


def reject_reasons(texts):
    """:func:`mailops.insight.pflog.reject_reason`'s type and reason, for a column of texts."""
    import polars as pl
    df = pl.DataFrame({"t": texts}).with_columns(p=pl.col("t").str.extract_groups(_REJ_PARTS))
    typ, reas = pl.col("p").struct.field("typ"), pl.col("p").struct.field("reas")
    rcpt = (reas.str.replace(r"^(\d{3} <).*?(>:)", "${1}${2}")
            .str.replace(r"^(?:\d{3} \d\.\d\.\d )(Protocol error);.*$", "${1}")
            .str.replace(r"^(?:.*?[:;] )(?:\[[^\]]+\] )?([^;,]+)[;,].*$", "${1}")
            .str.replace(r"^((?:Sender|Recipient) address rejected: [^:]+):.*$", "${1}")
            .str.replace(r"(client|Client host|Sender address) .+? blocked", "blocked"))
    mail = reas.str.replace(r"^\d{3} (?:<.+>: )?([^;:]+)[;:]?.*$", "${1}")
    other = reas.str.replace(r"^(?:.*[:;] )?([^,]+).*$", "${1}")
    df = df.with_columns(typ=typ, reas=pl.when(typ.is_in(["RCPT", "DATA", "CONNECT"])).then(rcpt)
                         .when(typ == "MAIL").then(mail).otherwise(other))
    reas = pl.col("reas")
    plain = ~reas.str.starts_with("Sender address rejected:") & \
        ~reas.str.contains(r"^(?:Recipient address rejected:|User unknown(?: |$))")
    special = pl.when(plain & reas.str.contains(_SPECIAL[0][0])).then(
        reas.str.replace(*_SPECIAL[0]))
    for pattern, repl in _SPECIAL[1:]:
        special = special.when(plain & reas.str.contains(pattern)).then(
            reas.str.replace(pattern, repl))
    df = df.with_columns(reas=special.otherwise(reas))
    return (df["typ"].fill_null("").to_list(), df["reas"].fill_null("").to_list())
