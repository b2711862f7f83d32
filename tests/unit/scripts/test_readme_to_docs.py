"""README sections land in the docs pages that mark them, nothing is left behind, and links
between sections still lead somewhere (issue 23, item 8)."""

from __future__ import annotations

import pytest

from scripts.readme_to_docs import migrate

README = """# tool

Intro.

## Setup
Set it up; see [Gates](#promotion-gates).

### Your data
Data text.

```python
# a comment, not a heading
```

## Promotion gates
Gates text.

### Your own gates
Custom text, back to [setup](#setup).
"""


def block(key: str) -> str:
    return f"<!-- readme: {key} -->\n<!-- /readme -->\n"


@pytest.fixture
def docs(tmp_path):
    (tmp_path / "README.md").write_text(README)
    docs = tmp_path / "docs"
    (docs / "how-to").mkdir(parents=True)
    (docs / "index.md").write_text("# tool\n\n" + block("# tool"))
    (docs / "setup.md").write_text("# Setup\n\n" + block("## Setup"))
    (docs / "how-to" / "data.md").write_text("# Your data\n\n" + block("### Your data"))
    (docs / "gates.md").write_text("# Promotion gates\n\n" + block("## Promotion gates"))
    return docs


def test_each_block_gets_its_section_without_the_ones_taken_elsewhere(docs):
    pages = {
        p.relative_to(docs).as_posix(): text
        for p, text in migrate(docs.parent / "README.md", docs).items()
    }
    assert "Intro." in pages["index.md"] and "Setup" not in pages["index.md"]
    assert "Set it up" in pages["setup.md"] and "Data text" not in pages["setup.md"]
    assert "Data text." in pages["how-to/data.md"]
    assert "# a comment, not a heading" in pages["how-to/data.md"]  # code is not re-levelled
    # the subsection moves up under the page's title; links follow the headings
    assert "## Your own gates\nCustom text, back to [setup](setup.md)." in pages["gates.md"]
    assert "see [Gates](gates.md)." in pages["setup.md"]


def test_a_section_no_page_takes_is_named(docs):
    (docs / "gates.md").unlink()  # "### Your data" stays inside "## Setup"'s page
    with pytest.raises(SystemExit, match=r"\['## Promotion gates', '### Your own gates'\]"):
        migrate(docs.parent / "README.md", docs)
