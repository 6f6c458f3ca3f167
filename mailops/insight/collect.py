"""`mailops collect`: what the server did since the last run, into the local store.

One SSH round trip (a stdlib helper, ``remote/collect.py``) brings back the new
lines of postfix's and dovecot's logs (rotated and compressed files included,
followed by fingerprint and offset), the rspamd history rows added since the
last run (read from redis, deduplicated on time and Message-ID, a wrapped history
reported as a gap), rspamd's ``/stat`` counters, fail2ban's bans (from a read-only
copy of its sqlite), the mail queue (``postqueue -j``) and the last backup's
record.  It writes them to the store (``mailops/store.py``) under the host's lock
and only then moves the cursors: a run that fails half way is simply run again.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import re
import time
import zlib
from zoneinfo import ZoneInfo

from mailops.core.layout import BACKUP, LEARN_PASSWORD
from mailops.remote import source as helper_source
from .store import Store

LOGS = {"postfix": "/var/log/postfix.log", "dovecot": "/var/log/dovecot.log",
        # every scan is one `rspamd_task_write_log` line there, GTUBE rejects included,
        # which rspamd's history leaves out (refused before the filters ran)
        "rspamd_log": "/var/log/rspamd/rspamd.log",
        # a host that logs mail through syslog instead (postfix's lines are read from it)
        "mail": "/var/log/mail.log"}
F2B_DB = "/var/lib/fail2ban/fail2ban.sqlite3"
MAX_BYTES = 64 << 20             # per round trip; a first run over months of logs takes several

_MONTHS = {m: i + 1 for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul",
                                           "Aug", "Sep", "Oct", "Nov", "Dec"))}
_SYSLOG = re.compile(rb"^(\w{3}) {1,2}(\d{1,2}) (\d\d):(\d\d):(\d\d) ")
_RFC3339 = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d) ")
# rspamd's own log: "2026-12-01 08:55:07 #1(normal) ..." (".123" with log_usec), local time
_LOCAL = re.compile(rb"^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.\d+)? ")


class CollectError(RuntimeError):
    pass


def store_for(params) -> Store:
    return Store(params.path(params.insight.store))


def host_name(params) -> str:
    return params.insight.name or params.short_hostname


@dataclasses.dataclass
class CollectResult:
    host: str
    added: dict[str, int]
    warnings: list[str]
    round_trips: int
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.warnings

    def record(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        added = ", ".join(f"{k} {v}" for k, v in self.added.items() if v) or "nothing new"
        lines = [f"collect {self.host}: {added} ({self.round_trips} round trip"
                 f"{'s' if self.round_trips != 1 else ''}, {self.seconds:.2f} s)"]
        return "\n".join(lines + [f"  warning: {w}" for w in self.warnings])


# -- log lines ------------------------------------------------------------------------
def line_times(lines: list[bytes], tz: ZoneInfo, year_of: dt.datetime) -> list[dt.datetime | None]:
    """UTC time of each line: syslog stamps in the server's zone (the year from the
    file's modification time, a month after it meaning the year before), RFC 3339
    stamps as they are, rspamd's ``YYYY-MM-DD HH:MM:SS`` in the server's zone.  One
    parse per distinct second."""
    cache: dict[bytes, dt.datetime | None] = {}
    out = []
    for line in lines:
        key = line[:32]
        m = _SYSLOG.match(key)
        k = m.group(0) if m else key
        if k in cache:
            out.append(cache[k])
            continue
        t = None
        if m:
            mon = _MONTHS.get(m.group(1).decode())
            if mon:
                year = year_of.year - (1 if mon > year_of.month else 0)
                try:
                    t = dt.datetime(year, mon, int(m.group(2)), int(m.group(3)), int(m.group(4)),
                                    int(m.group(5)), tzinfo=tz).astimezone(dt.timezone.utc)
                except ValueError:
                    t = None
        elif r := _RFC3339.match(key):
            zone = r.group(2).decode().replace("Z", "+00:00")
            t = dt.datetime.fromisoformat(r.group(1).decode() + zone).astimezone(dt.timezone.utc)
        elif r := _LOCAL.match(key):
            try:
                t = dt.datetime(*map(int, r.groups()), tzinfo=tz).astimezone(dt.timezone.utc)
            except ValueError:
                t = None
        cache[k] = t
        out.append(t)
    return out


def _log_frame(chunk: dict, tz: ZoneInfo, seq0: int):
    import pandas as pd
    data = zlib.decompress(base64.b64decode(chunk["data"]))
    lines = data.split(b"\n")[:-1]
    mtime = dt.datetime.fromtimestamp(chunk["mtime"], tz)
    times = line_times(lines, tz, mtime)
    # a line without a stamp (a continuation) takes the time of the line before it
    last = None
    for i, t in enumerate(times):
        times[i] = last = t or last or mtime.astimezone(dt.timezone.utc)
    frame = pd.DataFrame({"seq": range(seq0, seq0 + len(lines)),
                          "time": pd.to_datetime(times, utc=True),
                          "line": [x.decode("utf-8", "replace") for x in lines]})
    frame["day"] = frame["time"].dt.tz_convert(tz).dt.strftime("%Y-%m-%d")
    return frame


# -- rspamd history -------------------------------------------------------------------
def history_rows(raw_rows: list[bytes]) -> list[dict]:
    import zstandard
    d = zstandard.ZstdDecompressor()
    rows = []
    for raw in raw_rows:
        try:
            rows.append(json.loads(d.decompressobj().decompress(raw)))
        except zstandard.ZstdError:
            rows.append(json.loads(raw))          # `compress = false` keeps plain JSON
    return rows


def _history_frames(rows: list[dict], tz: ZoneInfo):
    import pandas as pd
    recs, syms = [], []
    for r in rows:
        t = float(r.get("unix_time") or 0)
        mid = str(r.get("message-id") or "")
        recs.append({"time": t, "message_id": mid, "action": r.get("action"),
                     "score": float(r.get("score") or 0),
                     "required_score": float(r.get("required_score") or 0),
                     "is_skipped": bool(r.get("is_skipped")),
                     "scan_ms": float(r.get("time_real") or 0) * 1000.0,   # seconds there
                     "size": int(r.get("size") or 0), "ip": str(r.get("ip") or ""),
                     "sender_smtp": str(r.get("sender_smtp") or ""),
                     "sender_mime": str(r.get("sender_mime") or ""),
                     "rcpt": ",".join(r.get("rcpt_smtp") or []),
                     "user": str(r.get("user") or ""), "subject": str(r.get("subject") or "")})
        for name, s in (r.get("symbols") or {}).items():
            syms.append({"time": t, "message_id": mid, "symbol": name,
                         "score": float((s or {}).get("score") or 0)})
    frames = []
    for recs_ in (recs, syms):
        f = pd.DataFrame(recs_)
        if len(f):
            # microseconds, as the store keeps them: the dedupe compares with stored rows
            f["time"] = pd.to_datetime(f["time"], unit="s", utc=True).dt.round("us") \
                .dt.as_unit("us")
            f["day"] = f["time"].dt.tz_convert(tz).dt.strftime("%Y-%m-%d")
        frames.append(f)
    return frames


def _dedupe_history(store: Store, host: str, frame):
    """Drop rows already stored: the key is (time, Message-ID), as rspamd's own."""
    import pandas as pd
    if not len(frame):
        return frame
    frame = frame.drop_duplicates(["time", "message_id"])
    old = []
    for day in frame["day"].unique():
        d = store.day_dir("rspamd", host, day)
        if d.exists() and any(d.glob("*.parquet")):
            old.append(pd.read_parquet(d, columns=["time", "message_id"]))
    if not old:
        return frame
    seen = pd.concat(old)
    keys = set(zip(seen["time"].dt.as_unit("us"), seen["message_id"]))
    mask = [k not in keys for k in zip(frame["time"], frame["message_id"])]
    return frame[mask]


# -- the run --------------------------------------------------------------------------
def request(params, state: dict, logs: dict[str, str] | None = None,
            logs_only: bool = False) -> dict:
    """What to ask the helper; ``logs_only`` for the further round trips of a first
    collection over large logs (the rest was read by the first)."""
    req = {"logs": [{"name": n, "path": p} for n, p in (logs or LOGS).items()],
           "cursors": state.get("cursors", {}), "max_bytes": MAX_BYTES, "queue": not logs_only,
           "backup_state": BACKUP.state if params.backup.enabled and not logs_only else None}
    if logs_only:
        return req
    if params.rspamd.enabled:
        h = state.get("history", {})
        req["history"] = {"key": h.get("key"), "newest": h.get("newest"),
                          "nrows": params.rspamd.history_rows}
        req["stat"] = {"password_file": LEARN_PASSWORD}
    if params.fail2ban.enabled:
        req["fail2ban"] = {"db": F2B_DB, "since": state.get("fail2ban", {}).get("since", 0)}
    return req


def _helper(session, req: dict) -> dict:
    res = session.host.run(["python3", "-c", helper_source("collect")],
                           stdin=json.dumps(req).encode(), timeout=600)
    return json.loads(res.out)


def collect(session, store: Store | None = None, *, log=None,
            logs: dict[str, str] | None = None) -> CollectResult:
    """Collect once (as many round trips as a first run over large logs needs).
    ``logs``: other log files to follow (name -> path; default postfix's and dovecot's)."""
    params = session.params
    store = store or store_for(params)
    host = host_name(params)
    tz = ZoneInfo(params.timezone)
    t0 = time.monotonic()
    added: dict[str, int] = {}
    warnings: list[str] = []
    trips = 0
    with store.writer(host):
        state = store.state(host)
        while True:
            reply = _helper(session, request(params, state, logs, logs_only=trips > 0))
            trips += 1
            _absorb(store, host, tz, state, reply, added, warnings, first=trips == 1)
            state["last_collect"] = reply["time"]
            store.save_state(host, state)
            if not reply.get("more"):
                break
            if log:
                log(f"collect {host}: more to read ({sum(added.values())} rows so far)")
        today = dt.datetime.fromtimestamp(state["last_collect"], tz).strftime("%Y-%m-%d")
        for table in ("postfix", "dovecot", "rspamd_log", "mail", "rspamd", "rspamd_symbols",
                      "fail2ban", "stat", "queue", "backup"):
            store.compact(table, host, before=today)
    return CollectResult(host, added, warnings, trips, time.monotonic() - t0)


def _absorb(store, host, tz, state, reply, added, warnings, first: bool) -> None:
    import pandas as pd
    now = pd.Timestamp(reply["time"], unit="s", tz="UTC")
    day = now.tz_convert(tz).strftime("%Y-%m-%d")
    stamp = f"{int(reply['time'] * 1000):015d}"
    cursors = state.setdefault("cursors", {})
    seqs = state.setdefault("seq", {})
    for name, chunks in reply["logs"].items():
        for ch in chunks:
            if "error" in ch:
                warnings.append(f"{ch['path']}: {ch['error']}")
                continue
            frame = _log_frame(ch, tz, seqs.get(name, 0))
            n = store.write(name, host, frame, f"{ch['fingerprint']}-{ch['offset']:012d}")
            seqs[name] = seqs.get(name, 0) + n
            added[name] = added.get(name, 0) + n
            cursors.setdefault(name, {})[ch["fingerprint"]] = {
                "offset": ch["end"], "final": ch["final"], "inode": ch["inode"],
                "path": ch["path"], "seen": reply["time"]}
        # a file still on the server keeps its cursor (a final .gz is never read again);
        # forget files gone from it for a month
        for fp in reply.get("present", {}).get(name, []):
            if fp in cursors.get(name, {}):
                cursors[name][fp]["seen"] = reply["time"]
        for fp, cur in list(cursors.get(name, {}).items()):
            if reply["time"] - cur.get("seen", reply["time"]) > 31 * 86400 and cur.get("final"):
                del cursors[name][fp]
    if not first:
        return
    h = reply.get("history")
    if h is not None:
        if "error" in h:
            warnings.append(f"rspamd history: {h['error']}")
        else:
            rows = history_rows([base64.b64decode(x) for x in h["rows"]])
            hist, syms = _history_frames(rows, tz)
            hist = _dedupe_history(store, host, hist)
            if len(syms) and len(hist):
                keep = set(zip(hist["time"], hist["message_id"]))
                syms = syms[[k in keep for k in zip(syms["time"], syms["message_id"])]]
            elif len(syms):
                syms = syms.iloc[0:0]
            name = (h["newest"] or "none")[:16]
            added["rspamd"] = added.get("rspamd", 0) + store.write("rspamd", host, hist, name)
            store.write("rspamd_symbols", host, syms, name)
            prev = state.get("history", {})
            if h["wrapped"]:
                oldest = min((float(r.get("unix_time") or 0) for r in rows), default=reply["time"])
                gap = {"from": prev.get("newest_time"), "to": oldest, "noticed": reply["time"]}
                state.setdefault("gaps", []).append(gap)
                warnings.append(
                    f"rspamd history wrapped between two collections: rows from "
                    f"{_utc(gap['from'])} to {_utc(gap['to'])} are lost (history_rows "
                    f"{h['nrows']}; collect more often)")
            newest_time = max((float(r.get("unix_time") or 0) for r in rows),
                              default=prev.get("newest_time"))
            state["history"] = {"key": h["key"], "newest": h["newest"],
                                "newest_time": newest_time}
    s = reply.get("stat")
    if s is not None:
        if "error" in s:
            warnings.append(f"rspamd /stat: {s['error']}")
        else:
            rec = {"time": now, "scanned": s.get("scanned", 0), "learned": s.get("learned", 0),
                   "spam_count": s.get("spam_count", 0), "ham_count": s.get("ham_count", 0),
                   "connections": s.get("connections", 0),
                   **{f"action_{k.replace(' ', '_')}": v
                      for k, v in (s.get("actions") or {}).items()}, "day": day}
            added["stat"] = store.write("stat", host, pd.DataFrame([rec]), stamp)
            state["stat"] = {k: (v.isoformat() if k == "time" else v) for k, v in rec.items()}
    f = reply.get("fail2ban")
    if f is not None:
        if "error" in f:
            warnings.append(f"fail2ban: {f['error']}")
        else:
            fs = state.setdefault("fail2ban", {})
            seen = {tuple(k) for k in fs.get("keys", [])}
            rows = [r for r in f["bans"] if (r[0], r[1], r[2]) not in seen]
            frame = pd.DataFrame(rows, columns=["jail", "ip", "timeofban", "bantime", "bancount"])
            if len(frame):
                frame["time"] = pd.to_datetime(frame["timeofban"], unit="s", utc=True)
                frame["day"] = frame["time"].dt.tz_convert(tz).dt.strftime("%Y-%m-%d")
                frame = frame.drop(columns=["timeofban"])
            added["fail2ban"] = store.write("fail2ban", host, frame, stamp)
            top = max([r[2] for r in f["bans"]], default=fs.get("since", 0))
            fs["since"] = top
            fs["keys"] = sorted({(r[0], r[1], r[2]) for r in f["bans"] if r[2] == top} |
                                {k for k in seen if k[2] == top})
            fs["banned"] = f["banned"]
            fs["bips"] = f["bips"]
            if f.get("banned") is None:
                warnings.append(f"fail2ban-client banned: {(f.get('banned_error') or '').strip()}")
    q = reply.get("queue")
    if q is not None:
        if "error" in q:
            warnings.append(f"postqueue: {q['error']}")
        else:
            items = q["items"]
            counts = {n: sum(1 for i in items if i["queue"] == n)
                      for n in ("active", "deferred", "hold", "incoming", "maildrop")}
            oldest = min((i["arrival"] for i in items if i["arrival"]), default=None)
            rec = {"time": now, "messages": len(items),
                   "bytes": sum(i["size"] or 0 for i in items),
                   "oldest_age_s": (reply["time"] - oldest) if oldest else 0.0,
                   **counts, "day": day}
            added["queue"] = store.write("queue", host, pd.DataFrame([rec]), stamp)
            state["queue"] = {**{k: v for k, v in rec.items() if k not in ("time", "day")},
                              "time": reply["time"], "items": items[:50]}
    b = reply.get("backup")
    if b:
        if b.get("end") != state.get("backup", {}).get("end"):
            rec = {"time": pd.Timestamp(b.get("end", reply["time"]), unit="s", tz="UTC"),
                   **{k: (json.dumps(v) if isinstance(v, (dict, list)) else v)
                      for k, v in b.items() if k not in ("time",)}}
            rec["day"] = rec["time"].tz_convert(tz).strftime("%Y-%m-%d")
            added["backup"] = store.write("backup", host, pd.DataFrame([rec]),
                                          f"{int(b.get('end', 0))}")
        state["backup"] = b


def _utc(t) -> str:
    if t is None:
        return "the start"
    return dt.datetime.fromtimestamp(float(t), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
