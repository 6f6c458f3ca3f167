"""What the server did, from the store: tables (pandas) for the analysis notebooks.

Every function takes the store, the host(s) and a :class:`Period` and queries the
parquet store with DuckDB, reading only the days of the period (partition
pruning), so a month or a year of several hosts is never loaded whole: the
aggregation happens in DuckDB and only the result comes back.  Times come back
in the server's time zone (the parameters' ``timezone``), which the charts name.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
from typing import Iterator

from .store import Store

PERIODS = ("daily", "weekly", "monthly", "yearly")


@dataclasses.dataclass(frozen=True)
class Period:
    """Whole days ``start`` to ``end`` inclusive, in the server's time zone."""
    start: dt.date
    end: dt.date
    tz: str = "Etc/UTC"
    kind: str = "custom"

    @property
    def label(self) -> str:
        if self.kind == "daily":
            return self.start.isoformat()
        if self.kind == "monthly":
            return self.start.strftime("%Y-%m")
        if self.kind == "yearly":
            return str(self.start.year)
        return f"{self.start.isoformat()}_{self.end.isoformat()}"

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def bucket(self) -> str:
        """The time bucket charts use for this length."""
        return "hour" if self.days <= 2 else "day" if self.days <= 92 else "month"

    def where(self, col: str = "day") -> str:
        return f"{col} BETWEEN DATE '{self.start}' AND DATE '{self.end}'"

    def __str__(self) -> str:
        span = self.start.isoformat() if self.days == 1 else f"{self.start} to {self.end}"
        return f"{span} ({self.tz})"


def day_of(text: str = "") -> dt.date:
    """A day as the notebooks and `mailops report` take it: YYYY-MM-DD, ``today`` (also
    the empty default) or ``yesterday``."""
    today = dt.date.today()
    if text in ("", "today"):
        return today
    if text == "yesterday":
        return today - dt.timedelta(days=1)
    return _iso(text)


def _iso(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date (YYYY-MM-DD): {text!r}") from None


def period_for(kind: str, on: dt.date | str | None = None, tz: str = "Etc/UTC") -> Period:
    """The period a report for ``on`` covers: the day; the 7 days ending on it; its
    calendar month; its calendar year.  ``on`` defaults to yesterday."""
    if kind not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {kind!r}")
    if isinstance(on, str):
        on = _iso(on)
    on = on or dt.date.today() - dt.timedelta(days=1)
    if kind == "daily":
        return Period(on, on, tz, kind)
    if kind == "weekly":
        return Period(on - dt.timedelta(days=6), on, tz, kind)
    if kind == "monthly":
        first = on.replace(day=1)
        nxt = (first + dt.timedelta(days=32)).replace(day=1)
        return Period(first, nxt - dt.timedelta(days=1), tz, kind)
    return Period(on.replace(month=1, day=1), on.replace(month=12, day=31), tz, kind)


def _host_list(hosts) -> list[str]:
    return [hosts] if isinstance(hosts, str) else list(hosts)


def _hosts(hosts) -> str:
    """The hosts as a SQL list, each name checked (they go into the query text)."""
    hs = _host_list(hosts)
    for h in hs:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", h):
            raise ValueError(f"not a host name: {h!r}")
    return "(" + ", ".join(f"'{h}'" for h in hs) + ")"


def _q(store: Store, sql: str, hosts, p: Period, table: str):
    in_hosts = _hosts(hosts)                 # refuses a name that is not one, before anything
    if not store.has(table, _host_list(hosts)):
        return None
    return store.query(sql.replace("$WHERE", f"host IN {in_hosts} AND {p.where()}")
                       .replace("$TZ", p.tz))


def _empty(columns):
    import pandas as pd
    return pd.DataFrame(columns=columns)


def _local(frame, p: Period, *cols):
    for c in cols:
        if c in frame and len(frame):
            frame[c] = frame[c].dt.tz_convert(p.tz)
    return frame


# -- postfix ----------------------------------------------------------------------------
def log_lines(store: Store, hosts, p: Period, table: str = "postfix",
              batch: int = 200_000) -> Iterator[str]:
    """The period's log lines in the order they were written, streamed in batches."""
    import duckdb
    hs = _host_list(hosts)
    if not store.has(table, hs):
        return
    con = duckdb.connect()
    try:
        rel = con.execute(
            f"SELECT line FROM read_parquet('{store.glob(table)}', hive_partitioning = true) "
            f"WHERE host IN {_hosts(hs)} AND {p.where()} ORDER BY host, seq")
        while True:
            rows = rel.fetchmany(batch)
            if not rows:
                break
            for (line,) in rows:
                yield line
    finally:
        con.close()


def postfix_table(store: Store, hosts) -> str:
    """postfix's own log where the host writes one, else syslog's ``mail.log``."""
    hs = _host_list(hosts)
    return "postfix" if store.has("postfix", hs) or not store.has("mail", hs) else "mail"


def postfix_summary(store: Store, hosts, p: Period):
    """pflogsumm's figures (Debian 1.1.5's definitions) over the period (the compiled
    engine, :mod:`mailops.insight.pflogc`, else the vectorised one; the same figures as
    ``pflog.Summary``)."""
    from . import pflogc, pflogfast
    engine = pflogc if pflogc.available() else pflogfast
    return engine.summarize_lines(log_lines(store, hosts, p, postfix_table(store, hosts)),
                                  today=p.end)


# what pflogsumm does not give: every refusal at SMTP time, by kind, client and network
_REFUSAL = re.compile(r"^(?P<time>\S+ +\S+ \S+|\S+) \S+ postfix(?:/\w+)*/(?P<prog>smtpd|postscreen|"
                      r"cleanup)\[\d+\]: (?:\w+|NOQUEUE): (?P<what>milter-reject|reject): "
                      r"(?P<rest>.*)$")
_CLIENT_IP = re.compile(r" from [^\[\s]*\[([0-9a-fA-F.:]+)\]")
KINDS = [("rspamd", re.compile(r"milter-reject|Spam message rejected|5\.7\.1 Gtube", re.I)),
         ("greylisting", re.compile(r"Try again later|greylist", re.I)),
         ("dnsbl", re.compile(r"blocked using|listed (?:by|in|at)", re.I)),
         ("unknown recipient", re.compile(r"User unknown|Recipient address rejected: "
                                          r"(?:undeliverable|unverified)", re.I)),
         ("relay denied", re.compile(r"Relay access denied", re.I)),
         ("sender/helo policy", re.compile(r"(?:Sender address|Helo command|Client host) "
                                           r"rejected|not owned by user", re.I)),
         ("size/protocol", re.compile(r"size exceeds|pipelining|bare <LF>|too many", re.I))]


def refusal_kind(text: str) -> str:
    for kind, rx in KINDS:
        if rx.search(text):
            return kind
    return "other policy"


def refusals(store: Store, hosts, p: Period):
    """One row per SMTP-time refusal (smtpd, postscreen, milter and cleanup):
    time, kind (rspamd / greylisting / dnsbl / unknown recipient / relay denied /
    sender/helo policy / size/protocol / other policy), client address and /24."""
    import pandas as pd
    hs = _host_list(hosts)
    table = postfix_table(store, hs)
    if not store.has(table, hs):
        return _empty(["time", "kind", "code", "client", "network"])
    frame = store.query(
        f"SELECT time, line FROM {{{table}}} WHERE host IN {_hosts(hs)} AND {p.where()} AND "
        "(line LIKE '%reject: %') ORDER BY host, seq")
    rows = []
    for t, line in zip(frame["time"], frame["line"]):
        m = _REFUSAL.match(line)
        if not m or "reject_warning" in line:
            continue
        rest = m.group("rest")
        ip = _CLIENT_IP.search(rest)
        code = re.search(r"\b([45]\d\d)\b", rest)
        addr = ip.group(1) if ip else ""
        rows.append({"time": t, "kind": refusal_kind(m.group("what") + " " + rest),
                     "code": code.group(1) if code else "",
                     "client": addr, "network": _network(addr)})
    out = pd.DataFrame(rows, columns=["time", "kind", "code", "client", "network"])
    return _local(out, p, "time")


def _network(addr: str) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return ""
    return str(ipaddress.ip_network(f"{addr}/{24 if ip.version == 4 else 48}", strict=False))


# -- rspamd -----------------------------------------------------------------------------
def rspamd_rows(store: Store, hosts, p: Period, columns: str = "*"):
    f = _q(store, f"SELECT {columns} FROM {{rspamd}} WHERE $WHERE ORDER BY time", hosts, p,
           "rspamd")
    return _local(f, p, "time") if f is not None else _empty(["time", "action", "score"])


def actions_over_time(store: Store, hosts, p: Period):
    """Messages per action per bucket (hour, day or month by the period's length)."""
    f = _q(store, f"SELECT date_trunc('{p.bucket}', timezone('$TZ', time)) AS bucket, action, "
                  "count(*) AS messages FROM {rspamd} WHERE $WHERE GROUP BY ALL ORDER BY 1",
           hosts, p, "rspamd")
    if f is None or not len(f):
        return _empty([])
    return f.pivot_table(index="bucket", columns="action", values="messages",
                         fill_value=0).astype(int)


# rspamd's log line for every scan: "... (default: S (reject): [15.00/15.00] [...]"
_SCAN = r"rspamd_task_write_log: .*\(default: \w \(([a-z ]+)\): \[(-?[0-9.]+|nan)/"


def action_counts(store: Store, hosts, p: Period, since=None, thresholds=None):
    """Messages per action, every scan counted, as rspamd's /stat counts them: from
    rspamd's log, where each scan is one line (the history leaves out GTUBE and
    other pre-filter rejects).  A message the greylist module refused ("soft
    reject ... set by greylist") counts under its score's action, as in /stat."""
    t = {"greylist": 4.0, "add header": 6.0, "reject": 15.0, **(thresholds or {})}
    score = f"try_cast(regexp_extract(line, '{_SCAN}', 2) AS DOUBLE)"
    by_score = (f"CASE WHEN {score} >= {t['reject']} THEN 'reject' WHEN {score} >= "
                f"{t['add header']} THEN 'add header' WHEN {score} >= {t['greylist']} THEN "
                "'greylist' ELSE 'no action' END")
    f = _q(store, f"SELECT CASE WHEN line LIKE '%(set by greylist)%' THEN {by_score} ELSE "
                  f"regexp_extract(line, '{_SCAN}', 1) END AS action, count(*) AS messages, "
                  f"round(avg({score}), 2) "
                  "AS mean_score FROM {rspamd_log} WHERE $WHERE $SINCE AND line LIKE "
                  "'%rspamd_task_write_log%' GROUP BY ALL HAVING action <> '' "
                  "ORDER BY messages DESC".replace("$SINCE", _since(since)), hosts, p,
           "rspamd_log")
    if f is not None:
        return f
    f = _q(store, "SELECT action, count(*) AS messages, round(avg(score), 2) AS mean_score "
                  "FROM {rspamd} WHERE $WHERE $SINCE GROUP BY ALL ORDER BY messages DESC"
           .replace("$SINCE", _since(since)), hosts, p, "rspamd")
    return f if f is not None else _empty(["action", "messages", "mean_score"])


def _since(t) -> str:
    if t is None:
        return ""
    import pandas as pd
    return f"AND time >= TIMESTAMPTZ '{pd.Timestamp(t).tz_convert('UTC').isoformat()}'"


def scores(store: Store, hosts, p: Period):
    f = _q(store, "SELECT score FROM {rspamd} WHERE $WHERE", hosts, p, "rspamd")
    return f["score"] if f is not None else _empty(["score"])["score"]


def top_symbols(store: Store, hosts, p: Period, n: int = 20):
    """Symbols by how often they fired, and how much score they added in all."""
    f = _q(store, "SELECT symbol, count(*) AS fired, round(sum(score), 2) AS total_score, "
                  "round(avg(score), 3) AS mean_score FROM {rspamd_symbols} WHERE $WHERE "
                  f"GROUP BY ALL ORDER BY fired DESC, symbol LIMIT {int(n)}",
           hosts, p, "rspamd_symbols")
    return f if f is not None else _empty(["symbol", "fired", "total_score", "mean_score"])


def top_spam_sources(store: Store, hosts, p: Period, n: int = 15):
    """Sender domains and client addresses of the messages rspamd did not pass."""
    f = _q(store, "SELECT coalesce(nullif(split_part(sender_smtp, '@', 2), ''), '<>') AS "
                  "sender_domain, ip, count(*) AS messages, round(avg(score), 2) AS mean_score "
                  "FROM {rspamd} WHERE $WHERE AND action <> 'no action' GROUP BY ALL "
                  f"ORDER BY messages DESC LIMIT {int(n)}", hosts, p, "rspamd")
    return f if f is not None else _empty(["sender_domain", "ip", "messages", "mean_score"])


def scan_times(store: Store, hosts, p: Period):
    """Scan time percentiles (milliseconds) per day."""
    f = _q(store, "SELECT day, count(*) AS messages, "
                  "round(quantile_cont(scan_ms, 0.5), 1) AS p50_ms, "
                  "round(quantile_cont(scan_ms, 0.9), 1) AS p90_ms, "
                  "round(quantile_cont(scan_ms, 0.99), 1) AS p99_ms, "
                  "round(max(scan_ms), 1) AS max_ms FROM {rspamd} WHERE $WHERE GROUP BY ALL "
                  "ORDER BY day", hosts, p, "rspamd")
    return f if f is not None else _empty(["day", "messages", "p50_ms", "p90_ms", "p99_ms"])


def spam_ratio_by_month(store: Store, hosts, p: Period):
    f = _q(store, "SELECT date_trunc('month', day) AS month, count(*) AS messages, "
                  "round(100.0 * count(*) FILTER (WHERE action IN ('reject', 'add header', "
                  "'rewrite subject')) / count(*), 2) AS spam_pct FROM {rspamd} WHERE $WHERE "
                  "GROUP BY ALL ORDER BY 1", hosts, p, "rspamd")
    return f if f is not None else _empty(["month", "messages", "spam_pct"])


def learning(store: Store, hosts, p: Period):
    """Bayes: the learned counter over the period (rspamd's /stat) and the messages
    Bayes classified (BAYES_SPAM / BAYES_HAM symbols) per day."""
    stat = _q(store, "SELECT day, max(learned) - min(learned) AS learned, max(learned) AS "
                     "learned_total FROM {stat} WHERE $WHERE GROUP BY ALL ORDER BY day",
              hosts, p, "stat")
    sym = _q(store, "SELECT day, count(*) FILTER (WHERE symbol = 'BAYES_SPAM') AS bayes_spam, "
                    "count(*) FILTER (WHERE symbol = 'BAYES_HAM') AS bayes_ham FROM "
                    "{rspamd_symbols} WHERE $WHERE GROUP BY ALL ORDER BY day",
             hosts, p, "rspamd_symbols")
    if stat is None:
        return sym if sym is not None else _empty(["day", "learned"])
    return stat if sym is None else stat.merge(sym, on="day", how="outer").fillna(0)


def stat_delta(store: Store, hosts, p: Period):
    """rspamd's own counters: the change over the period per action (first and
    last collection in it); a restart of rspamd resets them, shown as a negative."""
    f = _q(store, "SELECT * FROM {stat} WHERE $WHERE ORDER BY time", hosts, p, "stat")
    if f is None or len(f) < 2:
        return {}
    cols = [c for c in f.columns if c.startswith("action_") or c in ("scanned", "learned")]
    first, last = f.iloc[0], f.iloc[-1]
    return {c: int(last[c] - first[c]) for c in cols}


# -- fail2ban ---------------------------------------------------------------------------
def bans(store: Store, hosts, p: Period):
    f = _q(store, "SELECT time, host, jail, ip, bantime, bancount FROM {fail2ban} WHERE $WHERE "
                  "ORDER BY time", hosts, p, "fail2ban")
    if f is None:
        return _empty(["time", "host", "jail", "ip", "bantime", "bancount", "network"])
    f = _local(f, p, "time")
    f["network"] = [_network(a) for a in f["ip"]]
    return f


def bans_per_jail_day(frame):
    if not len(frame):
        return _empty([])
    return frame.assign(day=frame["time"].dt.date).pivot_table(
        index="day", columns="jail", values="ip", aggfunc="count", fill_value=0)


def repeat_offenders(frame, n: int = 15):
    """Addresses banned more than once, with their jails (recidive among them)."""
    import pandas as pd
    if not len(frame):
        return _empty(["ip", "bans", "jails", "first", "last"])
    g = frame.groupby("ip").agg(bans=("jail", "size"),
                                jails=("jail", lambda s: ", ".join(sorted(set(s)))),
                                first=("time", "min"), last=("time", "max")).reset_index()
    g = g[g["bans"] > 1].sort_values(["bans", "last"], ascending=[False, False]).head(n)
    return pd.DataFrame(g)


def banned_now(state: dict, now: float | None = None):
    """Addresses banned now (``fail2ban-client banned`` at the last collection),
    with the time left from fail2ban's own record of the ban."""
    import time
    import pandas as pd
    f2b = state.get("fail2ban", {})
    now = now or state.get("last_collect") or time.time()
    latest = {(r[0], r[1]): (r[2], r[3]) for r in f2b.get("bips", [])}  # jail, ip, t, bantime
    rows = []
    for jail, ips in sorted((f2b.get("banned") or {}).items()):
        for ip in ips:
            t, bt = latest.get((jail, ip), (None, None))
            left = None if t is None else ("permanent" if bt is not None and bt < 0 else
                                           max(0, int(t + bt - now)))
            rows.append({"jail": jail, "ip": ip, "seconds_left": left})
    return pd.DataFrame(rows, columns=["jail", "ip", "seconds_left"])


# -- queue and backups ------------------------------------------------------------------
def queue_over_time(store: Store, hosts, p: Period):
    f = _q(store, "SELECT time, host, messages, deferred, active, hold, oldest_age_s FROM "
                  "{queue} WHERE $WHERE ORDER BY time", hosts, p, "queue")
    return _local(f, p, "time") if f is not None else _empty(["time", "messages"])


# -- a notebook's view: parameters, store, hosts, period --------------------------------
@dataclasses.dataclass
class View:
    """What an analysis notebook looks at: which hosts, which days, which store."""
    params: object
    store: Store
    hosts: list[str]
    period: Period
    collected: list = dataclasses.field(default_factory=list)

    @property
    def tz(self) -> str:
        return self.period.tz

    @property
    def thresholds(self) -> dict[str, float]:
        r = self.params.rspamd
        return {"greylist": r.greylist, "add header": r.add_header, "reject": r.reject}

    def state(self, host: str | None = None) -> dict:
        return self.store.state(host or self.hosts[0])

    def __str__(self) -> str:
        last = [self.store.state(h).get("last_collect") for h in self.hosts]
        when = ", ".join(
            f"{h} collected {dt.datetime.fromtimestamp(t, dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
            if t else f"{h} never collected" for h, t in zip(self.hosts, last))
        return f"{', '.join(self.hosts)}: {self.period}; {when}"

    def _repr_html_(self) -> str:
        import html
        extra = "".join(f"<br>{html.escape(str(c))}" for c in self.collected)
        return f"<p><b>{html.escape(str(self))}</b>{extra}</p>"

    def raise_for_status(self) -> None:
        """Fail the notebook when a host was never collected (nothing to show is then
        a mistake, not a quiet day), or the collection of this run failed."""
        never = [h for h in self.hosts if not self.store.state(h).get("last_collect")]
        if never:
            raise RuntimeError(f"never collected: {', '.join(never)} (run `mailops collect`)")
        bad = [c for c in self.collected if not c.ok]
        if bad:
            raise RuntimeError("; ".join(str(c) for c in bad))


def view(params_file: str, hosts: str = "", period: str = "daily", date: str = "",
         collect: bool = False) -> View:
    """The notebooks' first call: load the parameters, pick the hosts (comma-separated
    store names; default this parameters file's host), the period ending on ``date``
    (YYYY-MM-DD, ``today``, ``yesterday``; default today), and collect first if asked."""
    from .collect import collect as do_collect, host_name, store_for
    from mailops.core.params import load_params
    params = load_params(params_file)
    store = store_for(params)
    names = [h.strip() for h in hosts.split(",") if h.strip()] or [host_name(params)]
    _hosts(names)
    v = View(params, store, names, period_for(period, day_of(date), params.timezone))
    if collect:
        from mailops.provision.session import Session
        with Session(params) as s:
            v.collected.append(do_collect(s, store))
    return v


# -- small shapes for the rejects notebook ----------------------------------------------
def grand_totals_frame(figures: dict):
    import pandas as pd
    g = figures["grand_totals"]
    return pd.DataFrame({"figure": list(g), "value": list(g.values())})


def per_hour_or_day(figures: dict, p: Period):
    import pandas as pd
    if p.days == 1:
        f = pd.DataFrame(figures["per_hour"])
        f.index = [dt.datetime.combine(p.start, dt.time(h)) for h in f.pop("hour")]
    else:
        f = pd.DataFrame(figures["per_day"])
        if not len(f):
            return pd.DataFrame(columns=["delivered", "deferred", "bounced", "rejected"])
        f.index = pd.to_datetime(f.pop("date"))
    return f


def frame_of(data, key: str = "", value: str = ""):
    """A list of dicts, or a mapping name -> count, as a frame."""
    import pandas as pd
    if isinstance(data, dict):
        return pd.DataFrame({key or "name": list(data), value or "count": list(data.values())})
    return pd.DataFrame(data)


def refusals_over_time(refused, p: Period):
    if not len(refused):
        return _empty([])
    bucket = refused["time"].dt.floor({"hour": "h", "day": "D"}.get(p.bucket, "D")) \
        if p.bucket != "month" else refused["time"].dt.to_period("M").dt.to_timestamp()
    return refused.assign(bucket=bucket).pivot_table(index="bucket", columns="kind",
                                                     values="client", aggfunc="count",
                                                     fill_value=0)


def refusal_table(refused, by: str):
    if not len(refused):
        return _empty([by, "refusals"])
    return refused.groupby(by).size().sort_values(ascending=False).rename(
        "refusals").reset_index()


def by_weight(frame, column: str, label: str = "symbol"):
    """``column`` indexed by ``label``, largest magnitude first (a symbol that took
    500 points off matters as much as one that added 500)."""
    if not len(frame):
        return frame.set_index(label)[column] if label in frame else frame
    s = frame.set_index(label)[column]
    return s.reindex(s.abs().sort_values(ascending=False).index)
