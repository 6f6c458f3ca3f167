"""Open an HTML report in Debian's headless Chromium (driven by playwright, no
browser download) with the network blocked: every request that is not the file
itself (or a data: URI) is aborted and counted.  Returns what a reader would meet:
console errors, blocked requests, images with their natural sizes, tables."""
from __future__ import annotations

import dataclasses
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclasses.dataclass
class PageReport:
    errors: list[str]
    blocked: list[str]
    images: list[dict]
    tables: int
    text: str


def available() -> bool:
    import importlib.util
    return importlib.util.find_spec("playwright") is not None and Path(CHROMIUM).exists()


def open_report(path: Path, screenshot: Path | None = None) -> PageReport:
    from playwright.sync_api import sync_playwright
    url = Path(path).resolve().as_uri()
    errors, blocked = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            def route(r):
                u = r.request.url
                if u == url or u.startswith("data:"):
                    return r.continue_()
                blocked.append(u)
                return r.abort()
            page.route("**/*", route)
            page.goto(url, wait_until="load")
            page.wait_for_load_state("networkidle")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({complete: e.complete, w: e.naturalWidth, "
                       "h: e.naturalHeight, src: e.src.slice(0, 30)}))")
            tables = page.eval_on_selector_all("table", "els => els.length")
            text = page.inner_text("body")
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return PageReport(errors, blocked, images, tables, text)
