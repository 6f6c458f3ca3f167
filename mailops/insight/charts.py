"""The analysis notebooks' charts: matplotlib, each titled, with units on the axes
and the server's time zone on every time axis.  Each function returns the figure
(drawn inline by Jupyter, embedded as a PNG in the HTML reports)."""
from __future__ import annotations


def _fig(title: str, w: float = 9, h: float = 3.6):
    import matplotlib
    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline",
                                               "inline"):
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(w, h), layout="constrained")
    ax.set_title(title)
    return fig, ax


def _nothing(ax, what: str):
    ax.text(0.5, 0.5, f"no {what} in this period", ha="center", va="center",
            transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def stacked_over_time(table, title: str, unit: str, tz: str, bucket: str = "hour"):
    """Columns of ``table`` (index: time buckets) as stacked bars."""
    fig, ax = _fig(title)
    if table is None or not len(table):
        _nothing(ax, unit)
        return fig
    import numpy as np
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for col in table.columns:
        vals = table[col].to_numpy(dtype=float)
        ax.bar(x, vals, bottom=bottom, label=str(col), width=0.85)
        bottom += vals
    fmt = {"hour": "%m-%d %H:00", "day": "%Y-%m-%d", "month": "%Y-%m"}.get(bucket, "%Y-%m-%d")
    step = max(1, len(table) // 12)
    ax.set_xticks(x[::step], [t.strftime(fmt) for t in table.index[::step]], rotation=30,
                  ha="right")
    ax.set_xlabel(f"{bucket} ({tz})")
    ax.set_ylabel(unit)
    ax.legend(fontsize="small", ncols=min(4, len(table.columns)))
    return fig


def score_histogram(scores, thresholds: dict[str, float], title: str):
    fig, ax = _fig(title)
    if scores is None or not len(scores):
        _nothing(ax, "scanned messages")
        return fig
    ax.hist(scores, bins=60, color="#4a78b0")
    ax.set_yscale("log")
    for name, value in thresholds.items():
        ax.axvline(value, color="#b00", linestyle="--", linewidth=1)
        ax.text(value, 0.97, f" {name} {value:g}", rotation=90, va="top", ha="right",
                color="#b00", fontsize="small", transform=ax.get_xaxis_transform())
    ax.set_xlabel("rspamd score (points)")
    ax.set_ylabel("messages (log scale)")
    return fig


def barh(series, title: str, unit: str):
    """A horizontal bar per row of ``series`` (index: labels), largest on top."""
    fig, ax = _fig(title, h=max(2.5, 0.28 * len(series) + 1))
    if series is None or not len(series):
        _nothing(ax, unit)
        return fig
    s = series.iloc[::-1]
    ax.barh([str(i) for i in s.index], s.to_numpy(dtype=float), color="#4a78b0")
    ax.set_xlabel(unit)
    return fig


def lines(table, title: str, unit: str, tz: str, xlabel: str = "time"):
    fig, ax = _fig(title)
    if table is None or not len(table):
        _nothing(ax, unit)
        return fig
    for col in table.columns:
        ax.plot(table.index, table[col], marker=".", label=str(col))
    ax.set_xlabel(f"{xlabel} ({tz})")
    ax.set_ylabel(unit)
    ax.legend(fontsize="small")
    fig.autofmt_xdate()
    return fig
