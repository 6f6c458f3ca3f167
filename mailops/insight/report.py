"""`mailops report daily|weekly|monthly`: the analysis notebooks as HTML reports.

A report collects first (unless told not to), runs each analysis notebook through
papermill with the period's parameters, and converts the executed copy to one
self-contained HTML file without code: charts are PNGs embedded as data URIs, and
the scripts nbconvert's template would fetch from a CDN (require.js, MathJax,
mermaid) are removed, so a report opens offline with nothing fetched and no error.

    reports/<host>/<period>/<label>/{status,rspamd,rejects,fail2ban}.html (+ .ipynb)
    reports/<host>/<period>/<label>/index.html    that report's pages
    reports/index.html                            every report, newest first

Optionally the index page is mailed (``insight.report_to``) through the server's
own submission port, as a signed-in mailbox of the server.
"""
from __future__ import annotations

import dataclasses
import html
import json
import re
import time
from pathlib import Path

from .queries import PERIODS, day_of, period_for
from mailops.provision.runner import PROJECT, REPORTS

NOTEBOOKS = PROJECT / "notebooks" / "analysis"
PAGES = ("status", "rspamd", "rejects", "fail2ban")
_CDN_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>\s*", re.I)
_CDN_BLOCK = re.compile(r"<script\b[^>]*>(?:(?!</script>).)*?https?://cdn(?:(?!</script>).)*"
                        r"</script>\s*", re.I | re.S)


class ReportError(RuntimeError):
    pass


@dataclasses.dataclass
class ReportResult:
    host: str
    kind: str
    label: str
    directory: Path
    pages: dict[str, str]           # name -> "ok" or the error
    status_ok: bool | None
    seconds: float
    collect: object = None
    mailed_to: str | None = None

    @property
    def ok(self) -> bool:
        return all(v == "ok" for v in self.pages.values())

    @property
    def index(self) -> Path:
        return self.directory / "index.html"

    def __str__(self) -> str:
        lines = [f"report {self.kind} {self.label} for {self.host}: "
                 f"{'ok' if self.ok else 'FAILED'} ({self.seconds:.1f} s)"]
        if self.collect is not None:
            lines.append(f"  {self.collect}")
        lines += [f"  {name}: {state}" for name, state in self.pages.items()]
        if self.status_ok is False:
            lines.append("  status: a check failed (see status.html)")
        if self.mailed_to:
            lines.append(f"  mailed to {self.mailed_to}")
        lines.append(f"  {self.index}")
        return "\n".join(lines)


def to_html(notebook: Path, out: Path, title: str) -> None:
    """The executed notebook as self-contained HTML without code or prompts."""
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(notebook, as_version=4)
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    out.write_text(offline(body))


def offline(page: str) -> str:
    """Remove every script the template loads from outside (nothing here needs them:
    no widgets, no LaTeX, no diagrams)."""
    page = _CDN_SCRIPT.sub("", page)
    return _CDN_BLOCK.sub("", page)


def run(params_file: str | Path, kind: str = "daily", date: str = "", *,
        collect: bool = True, reports: Path = REPORTS, pages=PAGES, mail: bool = True,
        log=print) -> ReportResult:
    from .collect import collect as do_collect, host_name, store_for
    from mailops.core.kernel import execute
    from mailops.core.params import load_params
    from mailops.provision.session import Session
    if kind not in PERIODS:
        raise ReportError(f"period must be one of {', '.join(PERIODS)}, not {kind!r}")
    params_file = Path(params_file).resolve()
    params = load_params(params_file)
    try:
        per = period_for(kind, day_of(date), params.timezone)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    host = host_name(params)
    t0 = time.monotonic()
    collected = None
    if collect:
        with Session(params) as s:
            collected = do_collect(s, store_for(params), log=log)
        log(str(collected))
    out = reports / host / kind / per.label
    out.mkdir(parents=True, exist_ok=True)
    states, status_ok = {}, None
    for name in pages:
        nb_out = out / f"{name}.ipynb"
        if name == "status":
            args = {"params_file": str(params_file), "fail_on_error": False,
                    "record_file": str(out / "status.json")}
        else:
            args = {"params_file": str(params_file), "hosts": host, "period": kind,
                    "date": per.end.isoformat(), "collect": False}
        try:
            execute(NOTEBOOKS / f"{name}.ipynb", nb_out, args, cwd=str(NOTEBOOKS))
            states[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - the page shows the failed cell
            states[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        if nb_out.exists():
            to_html(nb_out, out / f"{name}.html", f"{name} — {host} {per.label}")
        if name == "status" and (out / "status.json").exists():
            status_ok = json.loads((out / "status.json").read_text())["status"] == "verified"
        log(f"report {kind} {per.label}: {name} {states[name]}")
    result = ReportResult(host, kind, per.label, out, states, status_ok,
                          time.monotonic() - t0, collected)
    write_index(result, per)
    write_top_index(reports)
    if mail and params.insight.report_to:
        send(params, result)
        result.mailed_to = params.insight.report_to
    return result


def write_index(r: ReportResult, per) -> None:
    from mailops.core.tables import html_table, markup
    failed = " (a check failed)" if r.status_ok is False else ""
    rows = [{"page": markup(f'<a href="{html.escape(n)}.html">{html.escape(n)}</a>'),
             "state": s + (failed if n == "status" else "")} for n, s in r.pages.items()]
    table = html_table(rows, ["page", "state"], title=f"{r.kind} report {r.label} — {r.host}",
                       note=f": {per}")
    r.index.write_text(_page(f"mailops {r.kind} report {r.label} {r.host}", table))


def write_top_index(reports: Path) -> Path:
    from mailops.core.tables import html_table, markup
    rows = []
    for idx in sorted(reports.glob("*/*/*/index.html"), key=lambda p: p.parent.name,
                      reverse=True):
        rel = idx.relative_to(reports)
        host, kind, label = rel.parts[:3]
        pages = " ".join(f'<a href="{html.escape(str(rel.parent / p.name))}">{html.escape(p.stem)}</a>'
                         for p in sorted(idx.parent.glob("*.html")) if p.name != "index.html")
        rows.append({"host": host, "period": kind,
                     "report": markup(f'<a href="{html.escape(str(rel))}">{html.escape(label)}</a>'),
                     "pages": markup(pages)})
    path = reports / "index.html"
    path.write_text(_page("mailops reports", html_table(rows, ["host", "period", "report", "pages"],
                                                       title="mailops reports")))
    return path


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:"
            f"collapse}}td,th{{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}}"
            f"</style></head><body>{body}</body></html>\n")


def send(params, r: ReportResult) -> None:
    """Mail the report's pages (HTML attachments) through the server's submission
    port as the sending mailbox, its password from the secrets."""
    from email.message import EmailMessage
    from mailops.core.secrets import resolve
    sender = params.insight.report_from or (params.mail.mailboxes[0].address
                                            if params.mail.mailboxes else None)
    if sender is None:
        raise ReportError("insight.report_to needs a mailbox to send from (insight.report_from)")
    box = next((m for m in params.mail.mailboxes if m.address == sender), None)
    if box is None:
        raise ReportError(f"insight.report_from {sender!r} is not a mailbox in the parameters")
    password = resolve(box.password, params.base_dir)
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, params.insight.report_to
    msg["Subject"] = f"mailops {r.kind} report {r.label} for {r.host}" + (
        "" if r.ok and r.status_ok is not False else " (attention)")
    msg.set_content(str(r))
    for p in sorted(r.directory.glob("*.html")):
        msg.add_attachment(p.read_bytes(), maintype="text", subtype="html", filename=p.name)
    from mailops.provision.checks.clients import target_from
    # the project's SMTP client: STARTTLS with the server's name verified (the lab CA in the lab)
    with target_from(params).smtp(587) as smtp:
        smtp.login(sender, password.reveal())
        smtp.send_message(msg)
