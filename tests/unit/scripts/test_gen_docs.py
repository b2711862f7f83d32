"""The generated docs pages are what the code says (issue 23, item 8): the committed ones are
current, every key and command is in them, and the walk reads what a new field declares."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ctflows.cli import build_parser
from scripts.gen_docs import ROOT, generated, render_cli, render_params, stale, walk


def test_the_committed_generated_pages_are_what_the_code_generates():
    old = [str(p.relative_to(ROOT)) for p in stale(generated())]
    assert not old, f"stale: {old}: run `python -m scripts.gen_docs` (or `make docs`)"


def _keys(raw: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in raw.items():
        path = f"{prefix}{key}"
        out += _keys(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return out


def test_every_key_the_repos_params_yaml_sets_is_in_the_reference():
    page = (ROOT / "docs" / "reference" / "params.md").read_text()
    rows = {line.split("`")[1] for line in page.splitlines() if line.startswith("| `")}
    for key in _keys(yaml.safe_load((ROOT / "params.yaml").read_text())):
        # a free-form mapping (train.hyperparameters, gates.minimums) is one key
        parts = key.split(".")
        prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
        assert prefixes & rows, f"params.yaml sets {key}, the reference does not list it"


class _Schedule(BaseModel):
    model_config = ConfigDict(frozen=True)
    cron: str = "0 3 * * 1"


class _Section(BaseModel):
    """A section, introduced by its docstring."""

    model_config = ConfigDict(frozen=True)
    # what the comment above says
    mode: Literal["fast", "exact"] = "fast"
    limit: int | None = Field(None, description="from the description")
    name: str  # beside it
    paths: list[Path] = Field(default_factory=list)
    """From the attribute docstring."""
    schedule: _Schedule = _Schedule(cron="0 6 * * *")


class _Top(BaseModel):
    section: _Section


def test_the_walk_reads_type_default_and_meaning_from_the_model():
    text = render_params(list(walk(_Top, "", None)), "_Top")
    assert "## `section`\n\nA section, introduced by its docstring." in text
    rows = {line.split("`")[1]: line for line in text.splitlines() if line.startswith("| `")}
    assert rows["section.mode"] == (
        "| `section.mode` | one of `fast`, `exact` | `fast` | what the comment above says |"
    )
    assert (
        rows["section.limit"] == "| `section.limit` | int or null | `null` | from the description |"
    )
    assert rows["section.name"] == "| `section.name` | str | required | beside it |"
    assert "| list[Path] | `[]` | From the attribute docstring. |" in rows["section.paths"]
    # a nested section's default is the parent's default instance, not the nested class's
    assert "`0 6 * * *`" in rows["section.schedule.cron"]


def test_the_cli_reference_lists_every_command_argument_and_option():
    parser = argparse.ArgumentParser(prog="tool", description="A tool.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ship = sub.add_parser("ship", help="ship it", description="Ship a model.")
    ship.add_argument("model", metavar="MODEL", help="which")
    ship.add_argument("--to", choices=["prod", "staging"], required=True, help="where")
    text = render_cli(parser)
    assert "## `tool ship`\n\n*ship it.*\n\nShip a model." in text
    assert "| `MODEL` | which |" in text
    assert "| `--to TO` | where; one of `prod`, `staging`; required |" in text
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in commands.choices:
        assert f"## `ctflows {name}`" in page, name
