"""The docs hold: the parameter reference is what the model says, every key is described,
the README stays short, and every relative link in the README and docs/ leads somewhere."""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from mailops.core import paramref
from mailops.core.params import Address, Model, Port

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_parameter_reference_is_what_the_model_says():
    committed = paramref.PAGE.read_text()
    assert committed == paramref.reference(), \
        "docs/parameters.md is stale: run .venv/bin/python -m mailops.core.paramref --write"


def test_every_parameter_is_described():
    assert paramref.undocumented() == []


def test_the_reference_catches_a_new_key_without_a_description():
    class Inner(Model):
        """What inner is for."""
        port: Port = 25
        """the port"""

    class Outer(Model):
        when: Literal["daily", "weekly"] = "daily"
        """how often"""
        inner: Inner = Inner(port=587)
        """the inner part"""
        hosts: list[Inner] = Field(default_factory=list)
        bare: int = 3

    assert paramref.undocumented(Outer) == ["hosts", "bare"]
    text = paramref.reference(Outer)
    assert "| `when` | `\"daily\"` or `\"weekly\"` | `daily` | how often |" in text
    assert "## inner\n\nWhat inner is for." in text
    assert "| `port` | port | `587` | the port |" in text      # the parent's default instance
    assert "## hosts[]" in text and "| `port` | port | `25` | the port |" in text


def test_type_names_read_as_a_reader_says_them():
    assert paramref.type_text(list[Address]) == "list of mail address"
    assert paramref.type_text(Annotated[int, Field(ge=1, le=60)]) == "integer, ≥ 1, ≤ 60"
    assert paramref.type_text(ipaddress.IPv4Address | None) == "IPv4 address (optional)"
    assert paramref.type_text(dict[str, Port]) == "mapping of string to port"


def test_the_readme_is_a_page_a_newcomer_reads():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "bash bin/workbook lab" in readme and "bash bin/workbook test" in readme
    first_block = readme.split("```", 2)[1]
    assert "bin/workbook lab" in first_block and "bin/workbook test" in first_block
    assert "exec bash bin/workbook test" in (ROOT / ".ci" / "run").read_text()


def test_every_figure_the_readme_quotes_is_in_the_benchmarks_page():
    readme = (ROOT / "README.md").read_text()
    figures = set(re.findall(r"\d+(?:\.\d+)?(?:–\d+(?:\.\d+)?)?×", readme))
    assert figures, "the README quotes no ratio"
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert sorted(f for f in figures if f not in page) == []


def test_every_docs_page_starts_with_what_it_is_for():
    """A title, then a paragraph of prose (not a table, list, code or another heading)."""
    for page in PAGES[1:]:
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# "), page.name
        first = next(line for line in lines[1:] if line.strip())
        assert not first.startswith(("#", "|", "```", "- ", "* ")), page.name


def test_relative_links_lead_to_files_and_headings_that_exist():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out
