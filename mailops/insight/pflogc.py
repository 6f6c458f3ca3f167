"""pflogsumm's figures with the line loop compiled: :mod:`mailops.insight._pflogc` (C) runs
:meth:`mailops.insight.pflog.Summary.feed` over every line and keeps the per-queue-id state and
the figures; the lines pflogsumm normalises with many regular expressions (rejects,
cleanup's holds and discards, warnings) come back here as distinct texts with a count, and
``pflog.Summary``'s own methods file them, so those rules exist once.  The result is a
``pflog.Summary``: the same ``to_dict()`` and ``text()``, equal to the streaming engine's
(the unit tests compare them on every fixture).  Memory is bounded like the streaming
engine's: by the queue ids and distinct senders and recipients, not by the lines.

Built by ``pip install`` from ``mailops/_pflogc.c`` (``setup.py``; optional: without a C
compiler :func:`available` is false and ``logs summary`` uses the Python engines).
"""
from __future__ import annotations

import datetime as dt
import gzip
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from . import pflog

try:
    from . import _pflogc
except ImportError:                      # not built: no C compiler where mailops was installed
    _pflogc = None

RARE_BATCH = 100_000                     # distinct reject/warning lines held in C at most
PARALLEL_FROM = 32 << 20                 # bytes of log from which a second process files them
PIPE_BATCH = 4_000                       # distinct rare lines per batch sent to it
READ = 8 << 20                           # bytes C reads between two looks at the rare lines
_TABLES = ("rejects", "warns", "holds", "discards", "warnings", "sasl_failures")


def available() -> bool:
    return _pflogc is not None


def summarize(paths: Iterable[str | Path], day: dt.date | None = None,
              today: dt.date | None = None, parallel: bool | None = None) -> pflog.Summary:
    """The figures of log files (plain ones read by the C code itself, ``.gz`` ones
    decompressed here), in order.  With ``parallel`` (default: from PARALLEL_FROM bytes on,
    with two cores or more) a forked process files the rare lines while C reads on."""
    paths = list(paths)
    if parallel is None:
        parallel = (os.cpu_count() or 1) > 1 and pflog.input_size(paths) >= PARALLEL_FROM

    def feed(scan):
        for p in map(Path, paths):
            if p.suffix == ".gz":
                with gzip.open(p, "rb") as f:
                    while block := f.read(READ):
                        scan.feed(block)
                        yield
            else:
                with open(p, "rb") as f:
                    while scan.feed_fd(f, READ):
                        yield
    return _summarize(feed, day, today, _Worker if parallel else _Inline)


def summarize_lines(lines: Iterable[str], day: dt.date | None = None,
                    today: dt.date | None = None, batch: int = 100_000) -> pflog.Summary:
    """The figures of lines from elsewhere (the store), in order."""
    return summarize_blocks(pflog.line_blocks(lines, batch), day, today)


def summarize_blocks(blocks: Iterable[bytes], day: dt.date | None = None,
                     today: dt.date | None = None) -> pflog.Summary:
    """The figures of the log's bytes, in order (blocks may end anywhere)."""
    def feed(scan):
        for block in blocks:
            scan.feed(block)
            yield
    return _summarize(feed, day, today)


def _summarize(feed, day: dt.date | None, today: dt.date | None,
               filer: type[_Inline] | None = None) -> pflog.Summary:
    """feed(scan) gives the scanner the input, yielding now and then (rare lines are
    filed at those points, so the C side holds at most about RARE_BATCH of them)."""
    filer = filer or _Inline
    if _pflogc is None:
        raise RuntimeError("mailops.insight._pflogc is not built (no C compiler when mailops was "
                           "installed): use the stream or polars engine")
    today = today or dt.date.today()
    s = pflog.Summary(this_year=today.year, this_month=today.month - 1, day=day)
    scan = _pflogc.Scanner(s.this_year, s.this_month,
                           (day.year, day.month, day.day) if day else None, pflog.gimme_domain)
    with filer(s) as file:
        for _ in feed(scan):
            if scan.rare_count() > file.batch:
                file(scan.take_rare())
        scan.finish()
        file(scan.take_rare())
    _fill(s, scan.result())
    return s


class _Inline:
    """Files the rare lines here, between reads."""
    def __init__(self, s: pflog.Summary):
        self.s, self.batch = s, RARE_BATCH

    def __call__(self, rare: dict[bytes, int]) -> None:
        _file_rare(self.s, rare)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Worker(_Inline):
    """Files the rare lines in a forked process, batch by batch in their order, while C
    reads on (pflogsumm's normalising runs in Python's regex engine: as long as the read);
    its tables come back at the end.  A pipe holds one batch: the reader waits, never runs
    ahead by more."""
    def __init__(self, s: pflog.Summary):
        import multiprocessing as mp
        super().__init__(s)
        self.batch = PIPE_BATCH
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_file_in_worker, daemon=True,
                                args=(child, s.this_year, s.this_month, s.day))
        self.proc.start()
        child.close()

    def __call__(self, rare: dict[bytes, int]) -> None:
        if rare:
            self.conn.send(rare)

    def __exit__(self, kind, exc, tb):
        try:
            if kind is None:
                self.conn.send(None)
                ok, tables = self.conn.recv()
                if not ok:
                    raise RuntimeError(tables)
                for name in _TABLES:
                    setattr(self.s, name, tables[name])
        except EOFError:
            raise RuntimeError(f"the filing process ended (exit {self.proc.exitcode})") from None
        finally:
            self.conn.close()
            self.proc.join(timeout=5)
            if self.proc.is_alive():
                self.proc.kill()
        return False


def _file_in_worker(conn, this_year: int, this_month: int, day) -> None:
    s = pflog.Summary(this_year=this_year, this_month=this_month, day=day)
    try:
        while (rare := conn.recv()) is not None:
            _file_rare(s, rare)
        conn.send((True, {name: getattr(s, name) for name in _TABLES}))
    except EOFError:                   # the reader failed and closed its end
        pass
    except Exception as exc:           # noqa: BLE001 - sent to the reader, which raises it
        conn.send((False, f"{type(exc).__name__}: {exc}"))


def _file_rare(s: pflog.Summary, rare: dict[bytes, int]) -> None:
    for key, count in rare.items():
        mid, _, rest = key[1:].partition(b"\0")
        mid, rest = mid.decode("utf-8", "replace"), rest.decode("utf-8", "replace")
        code = key[:1]
        if code == b"R":
            s._reject_entry(mid, rest, count)
        elif code == b"W":
            s._warning_entry(mid, rest, count)
        else:
            r = pflog._CLEANUP.search(rest)
            if not r or s._cleanup_entry(r, count) != mid:
                raise RuntimeError(f"mailops.insight._pflogc and pflog disagree on a cleanup line: {rest!r}")


def _text(key: bytes, how: str) -> str:
    """A key as pflog.Summary keys it: C lowered ASCII letters only; lower the rest."""
    if key.isascii():
        return key.decode("ascii")
    text = key.decode("utf-8", "replace")
    return text.lower() if how == "lower" else pflog._lower_domain(text) if how == "address" else text


_HOW = {ord("A"): "lower", ord("L"): "lower", ord("U"): "address", ord("D"): "address", ord("W"): "as is"}


def _merge(rows: dict[bytes, list], how: str | None) -> dict[str, list]:
    """Keys decoded (a tag byte first when how is None); rows of keys that become equal summed
    (the last column, a maximum, when there are five)."""
    out: dict[str, list] = {}
    for key, row in rows.items():
        text = _text(key[1:], _HOW[key[0]]) if how is None else _text(key, how)
        have = out.get(text)
        if have is None:
            out[text] = row
        else:
            for i in range(4 if len(row) == 5 else len(row)):
                have[i] += row[i]
            if len(row) == 5:
                have[4] = max(have[4], row[4])
    return out


def _fill(s: pflog.Summary, r: dict) -> None:
    s.n = Counter({k: v for k, v in r["n"].items() if v})
    s.per_day = defaultdict(lambda: [0, 0, 0, 0, 0],
                            {k.decode("ascii"): v for k, v in r["per_day"].items()})
    s.per_hour = r["per_hour"]
    s.day_count = r["day_count"]
    s.sendg_user = _merge(r["sendg_user"], "address")
    s.sendg_dom = _merge(r["sendg_dom"], None)
    s.recip_user = _merge(r["recip_user"], "address")
    s.recip_dom = _merge(r["recip_dom"], None)
