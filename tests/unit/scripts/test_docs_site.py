"""The docs site builds with ``mkdocs build --strict``, and a broken link or anchor fails it
(issue 23, item 8). mkdocs runs as a subprocess, as `make docs` runs it, in a few seconds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from scripts.gen_docs import ROOT


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_site_builds_strictly(tmp_path):
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    for page in ("index", "tutorial", "reference/params", "reference/cli", "benchmark"):
        assert (tmp_path / "site" / f"{page}.html").is_file(), page


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    page = tmp_path / "docs" / "tutorial.md"
    page.write_text(
        page.read_text()
        + "\nSee [gone](how-to/no-such-page.md) and [x](gates.md#no-such-anchor).\n"
    )
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "how-to/no-such-page.md" in done.stderr
    assert "no-such-anchor" in done.stderr
