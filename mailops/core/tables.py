"""The one way mailops shows a table in a notebook: a pandas DataFrame as HTML.

Every ``_repr_html_`` builds its rows as plain values and calls :func:`html_table`;
values are escaped by pandas, except cells made with :func:`markup`, which the
caller built from escaped parts (a diff in a ``<details>`` element, say).
pandas is imported when a table is drawn, not when mailops is imported: the
no-change run never pays for it.
"""
from __future__ import annotations

import html
from typing import Any, Mapping, Sequence


class markup(str):
    """A cell value that is already HTML (built from escaped parts)."""


def details(summary: str, text: str) -> markup:
    """A collapsed block of preformatted text (a diff, a long output)."""
    if not text:
        return markup("")
    return markup(f"<details><summary>{html.escape(summary)}</summary>"
                  f"<pre>{html.escape(text)}</pre></details>")


def status(ok: bool, yes: str = "ok", no: str = "failed") -> markup:
    color = "#070" if ok else "#b00"
    return markup(f"<span style='color:{color}'>{html.escape(yes if ok else no)}</span>")


def show(df, title: str | None = None, note: str = "", limit: int = 200):
    """A pandas frame (an analysis table) as a titled table: the notebooks' one way."""
    return Table(df, title, note, limit)


class Table:
    def __init__(self, df, title, note, limit):
        self.df, self.title, self.note, self.limit = df, title, note, limit

    def _repr_html_(self) -> str:
        df = self.df.reset_index() if self.df.index.name or any(self.df.index.names) \
            else self.df
        df = df.rename(columns=str)
        rows = df.head(self.limit).to_dict("records")
        more = f" (first {self.limit} of {len(df)})" if len(df) > self.limit else ""
        if not len(df):
            more = ": nothing in this period"
        return html_table(rows, list(df.columns),
                          title=self.title, note=self.note + more)

    def __repr__(self) -> str:
        return f"{self.title or ''}\n{self.df.head(self.limit).to_string()}"


def frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None):
    """The rows as a DataFrame (columns in the given order, else the first row's)."""
    import pandas as pd
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    return pd.DataFrame([[r.get(c, "") for c in cols] for r in rows], columns=cols)


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
               title: str | None = None, note: str = "") -> str:
    """A titled HTML table of ``rows``; every value escaped unless it is :class:`markup`."""
    # escaped before pandas sees the values: its string dtype (pyarrow) keeps no subclass
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    df = frame([{c: (r.get(c, "") if isinstance(r.get(c, ""), markup) else
                     html.escape("" if r.get(c) is None else str(r.get(c, ""))))
                 for c in cols} for r in rows], cols)
    head = f"<p><b>{html.escape(title)}</b>{html.escape(note)}</p>" if title else ""
    if df.empty and not len(df.columns):
        return head or "<p>(nothing to show)</p>"
    return head + df.to_html(index=False, escape=False, border=0, classes="mailops",
                             justify="left")
