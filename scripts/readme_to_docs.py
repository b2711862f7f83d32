"""Copy the README's sections into the docs pages that take them over (issue 23, item 8).

    python -m scripts.readme_to_docs [--readme README.md]

Each page under ``docs/`` marks where a README section lands::

    ## A heading written in the page
    <!-- readme: ### Your data -->
    ...filled from the README...
    <!-- /readme -->

The block gets the section's text without its own heading and without the subsections another
block takes; its subheadings are shifted to sit under the page heading above the marker, and
links to README anchors become links to the page (and anchor) where that heading now lives.
It fails naming any README section that no block takes and that is not in :data:`NOT_COPIED`,
so nothing is lost when the README shrinks. Run once, when the README's text moves into
``docs/``; after that the pages are edited by hand.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKER = re.compile(r"^<!-- readme: (#{1,6} .+?) -->\n(.*?)^<!-- /readme -->$", re.M | re.S)
HEADING = re.compile(r"^(#{1,6}) (.+)$")
# README sections whose content the docs get another way.
NOT_COPIED = {"## params.yaml reference": "generated: docs/reference/params.md"}


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    line: int


def headings(lines: list[str]) -> list[Heading]:
    """Markdown headings of ``lines``, outside fenced code."""
    found, fenced = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            found.append(Heading(len(m.group(1)), m.group(2).strip(), i))
    return found


def github_slug(text: str) -> str:
    """The anchor GitHub gives a heading (how the README links to its own sections)."""
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def section_body(lines: list[str], marks: list[Heading], key: str, taken: set[str]) -> list[str]:
    """The text under heading ``key``, without the subsections ``taken`` by other blocks (under
    the README's title: its intro only)."""
    index = next(i for i, h in enumerate(marks) if f"{'#' * h.level} {h.text}" == key)
    own = marks[index]
    body: list[str] = []
    skip_below: int | None = None
    # the title's block is the intro alone: a section left out must not hide inside it
    ends = [h for h in marks[index + 1 :] if h.level <= own.level or own.level == 1]
    stop = ends[0].line if ends else len(lines)
    inner = {h.line: h for h in marks[index + 1 :] if h.line < stop}
    for n in range(own.line + 1, stop):
        if n in inner:
            h = inner[n]
            if skip_below is not None and h.level <= skip_below:
                skip_below = None
            if skip_below is None and f"{'#' * h.level} {h.text}" in taken:
                skip_below = h.level
        if skip_below is None:
            body.append(lines[n])
    return body


def _level_above(page: str, offset: int) -> int:
    above = headings(page[:offset].splitlines())
    return above[-1].level if above else 1


def migrate(readme: Path, docs: Path = DOCS) -> dict[Path, str]:
    """Every page with its blocks filled; raises naming README sections left behind."""
    lines = readme.read_text().splitlines()
    marks = headings(lines)
    pages = {p: p.read_text() for p in sorted(docs.rglob("*.md"))}
    blocks = [(p, m) for p, text in pages.items() for m in MARKER.finditer(text)]
    taken = {m.group(1) for _, m in blocks}
    skipped = taken | set(NOT_COPIED)  # what a block leaves out of the section it copies
    keys = {f"{'#' * h.level} {h.text}" for h in marks}
    if unknown := sorted(taken - keys):
        raise SystemExit(f"blocks name sections the README does not have: {unknown}")
    inside = {
        f"{'#' * (h.level)} {h.text}"
        for key in taken
        for h in headings(section_body(lines, marks, key, skipped - {key}))
    }
    if left := sorted(keys - taken - inside - set(NOT_COPIED)):
        raise SystemExit(f"README sections no docs page takes: {left}")
    # where each README heading lands: (page, anchor or "" for the block's own heading)
    shift = {
        m.group(1): _level_above(pages[p], m.start()) - m.group(1).index(" ") for p, m in blocks
    }
    home = {m.group(1): p for p, m in blocks}
    target: dict[str, tuple[Path, str]] = {}
    for key, page in home.items():
        target[github_slug(key.lstrip("# "))] = (page, "")
        for h in headings(section_body(lines, marks, key, skipped - {key})):
            target[github_slug(h.text)] = (page, slugify(h.text.replace("`", ""), "-"))

    def fill(page: Path, m: re.Match[str]) -> str:
        key = m.group(1)
        body = section_body(lines, marks, key, skipped - {key})
        for h in headings(body):
            body[h.line] = f"{'#' * max(1, min(h.level + shift[key], 6))} {h.text}"
        link = re.compile(r"\]\(#([^)]+)\)")
        text = "\n".join(link.sub(lambda a: _link(page, target, a.group(1)), b) for b in body)
        return f"<!-- readme: {key} -->\n\n{text.strip()}\n\n<!-- /readme -->"

    return {p: MARKER.sub(functools.partial(fill, p), text) for p, text in pages.items()}


def _link(page: Path, target: dict[str, tuple[Path, str]], anchor: str) -> str:
    if anchor not in target:
        raise SystemExit(f"{page}: README link #{anchor} names no copied heading")
    dest, fragment = target[anchor]
    return f"]({os.path.relpath(dest, page.parent)}{'#' + fragment if fragment else ''})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    for path, text in migrate(args.readme).items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"filled {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
