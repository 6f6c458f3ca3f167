"""The local store `mailops collect` writes and the analysis notebooks read.

Parquet files partitioned the Hive way, one tree per table::

    store/<table>/host=<name>/day=YYYY-MM-DD/<part>.parquet
    store/state/<name>.json          the cursors of the last collection
    store/state/<name>.lock          one writer per host (flock)

so DuckDB reads any period of any set of hosts without loading the rest
(``read_parquet(..., hive_partitioning = true)`` prunes by ``host`` and ``day``).
Times are UTC (``timestamp with time zone``); the notebooks show them in the
server's zone.  A part's name comes from what it holds (a log chunk's fingerprint
and offset, a history batch's newest row), so writing it again after a crash
replaces it instead of adding it twice.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Iterator

TABLES = ("postfix", "dovecot", "mail", "rspamd_log", "rspamd", "rspamd_symbols", "fail2ban", "stat",
          "queue", "backup")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class StoreError(RuntimeError):
    pass


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- state and the one writer --------------------------------------------------
    def _state_path(self, host: str) -> Path:
        if not _NAME.match(host):
            raise StoreError(f"not a host name for the store: {host!r}")
        return self.root / "state" / f"{host}.json"

    def state(self, host: str) -> dict:
        p = self._state_path(host)
        return json.loads(p.read_text()) if p.exists() else {}

    def save_state(self, host: str, state: dict) -> None:
        p = self._state_path(host)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, p)

    @contextlib.contextmanager
    def writer(self, host: str) -> Iterator[None]:
        """Hold the host's lock: a second collection of the same host waits for none,
        it fails (a timer's run that overlaps the previous one)."""
        p = self._state_path(host).with_suffix(".lock")
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"another collection of {host} is running "
                                 f"(lock {p})") from None
            yield
        finally:
            os.close(fd)

    # -- parts ----------------------------------------------------------------------
    def day_dir(self, table: str, host: str, day: dt.date | str) -> Path:
        if table not in TABLES:
            raise StoreError(f"no table {table!r} in the store")
        return self.root / table / f"host={host}" / f"day={day}"

    def write(self, table: str, host: str, frame, name: str, day_column: str = "day") -> int:
        """Write ``frame`` (pandas, with a ``day`` column) split by day as parts
        called ``name``; returns the number of rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        if frame is None or len(frame) == 0:
            return 0
        for day, part in frame.groupby(day_column, sort=True):
            d = self.day_dir(table, host, day)
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{name}.tmp"
            table_ = pa.Table.from_pandas(part.drop(columns=[day_column]), preserve_index=False)
            # one time type everywhere: microseconds, UTC (DuckDB keeps no zone on ns)
            table_ = table_.cast(pa.schema([
                pa.field(f.name, pa.timestamp("us", tz="UTC"))
                if pa.types.is_timestamp(f.type) else f for f in table_.schema]), safe=False)
            pq.write_table(table_, tmp, compression="zstd")
            os.replace(tmp, d / f"{name}.parquet")
        return len(frame)

    def days(self, table: str, host: str) -> list[str]:
        base = self.root / table / f"host={host}"
        return sorted(p.name[4:] for p in base.glob("day=*")) if base.exists() else []

    def hosts(self) -> list[str]:
        base = self.root / "state"
        return sorted(p.stem for p in base.glob("*.json")) if base.exists() else []

    def compact(self, table: str, host: str, before: str) -> int:
        """Merge each finished day's parts (days before ``before``) into one file;
        collecting every few minutes leaves hundreds a day.  Returns days merged."""
        import pyarrow.parquet as pq
        merged = 0
        for day in self.days(table, host):
            if day >= before:
                continue
            d = self.day_dir(table, host, day)
            parts = sorted(d.glob("*.parquet"))
            if len(parts) < 2:
                continue
            whole = pq.read_table(parts, partitioning=None)
            sort = [c for c in ("time", "seq") if c in whole.column_names]
            if sort:
                whole = whole.sort_by([(c, "ascending") for c in sort])
            tmp = d / ".day.tmp"
            pq.write_table(whole, tmp, compression="zstd")
            os.replace(tmp, d / "day.parquet")
            for p in parts:
                if p.name != "day.parquet":
                    p.unlink()
            merged += 1
        return merged

    # -- reading --------------------------------------------------------------------
    def glob(self, table: str) -> str:
        return str(self.root / table / "host=*" / "day=*" / "*.parquet")

    def has(self, table: str, hosts: list[str] | None = None) -> bool:
        base = self.root / table
        if hosts:
            return any(any((base / f"host={h}").glob("day=*/*.parquet")) for h in hosts)
        return any(base.glob("host=*/day=*/*.parquet"))

    def query(self, sql: str, **params):
        """DuckDB over the store: ``{postfix}``-style names in ``sql`` become the
        table's parquet scan (hive partitions ``host`` and ``day`` as columns);
        ``$name`` parameters come from ``params``.  Returns a pandas frame."""
        import duckdb
        scans = {t: (f"read_parquet('{self.glob(t)}', hive_partitioning = true, "
                     f"union_by_name = true)") for t in TABLES}
        text = sql.format(**scans)
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            return con.execute(text, params).df() if params else con.execute(text).df()
        finally:
            con.close()
