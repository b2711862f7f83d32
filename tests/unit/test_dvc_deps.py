"""Each dvc.yaml stage lists every project module its command imports (issue 23, item 7).

`dvc repro` decides whether a stage is stale from the md5s of its `deps`. A module the stage
imports but does not list (``train`` used ``tasks.data.split_holdout`` unlisted) can change
without DVC noticing, and `dvc repro` then serves stale metrics. The list is derived here from
the code itself: for a stage whose command is ``python -m <module>``, every module of this
repository that module imports, transitively, at the top of a file or inside a function
(imports under ``if TYPE_CHECKING:`` never run and are not followed), with the packages whose
``__init__.py`` Python runs on the way.
"""

from __future__ import annotations

import ast
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PIPELINE: dict[str, dict] = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
LOCK: dict[str, dict] = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The file in this repository that module ``name`` is, or None (third party, attribute)."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _scanned_package(call: ast.Call, aliases: dict[str, str], where: str) -> str:
    """The package a plug-in scan ``pkgutil.iter_modules(pkg.__path__)`` walks."""
    arg = call.args[0] if call.args else None
    if not (
        isinstance(arg, ast.Attribute)
        and arg.attr == "__path__"
        and isinstance(arg.value, ast.Name)
        and arg.value.id in aliases
    ):
        raise AssertionError(f"{where}: cannot tell which package iter_modules scans")
    return aliases[arg.value.id]


def imported_names(name: str, path: Path) -> set[str]:
    """Dotted names module ``name`` (source at ``path``) imports; ``from a import b`` gives
    both ``a`` and ``a.b`` (``b`` may be a submodule), relative imports made absolute. A
    plug-in scan (``pkgutil.iter_modules(pkg.__path__)``, as the gate registry does) imports
    every module of ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    aliases: dict[str, str] = {}
    scans: list[ast.Call] = []
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "iter_modules":
                scans.append(node)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            aliases.update({a.asname: a.name for a in node.names if a.asname})
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
            aliases.update({a.asname or a.name: f"{base}.{a.name}" for a in node.names})
    for call in scans:
        scanned = _scanned_package(call, aliases, f"{path}:{call.lineno}")
        folder = ROOT.joinpath(*scanned.split("."))
        names.update(f"{scanned}.{p.stem}" for p in folder.glob("*.py"))
    return names


def project_imports(module: str) -> set[Path]:
    """Files of this repository that ``python -m module`` runs, transitively (empty package
    markers hold no code: DVC warns on an empty dep, so they are left out)."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for prefix in (".".join(parts[: i + 1]) for i in range(len(parts))):
            if prefix in seen:
                continue
            seen.add(prefix)
            path = module_file(prefix)
            if path is not None:
                if path.stat().st_size:
                    files.add(path)
                todo.extend(imported_names(prefix, path))
    return files


def stage_module(cmd: str) -> str | None:
    words = shlex.split(cmd)
    return words[2] if words[:2] == ["python", "-m"] and len(words) > 2 else None


def covered(path: str, deps: list[str]) -> bool:
    """``path`` is listed, or lies in a listed directory (DVC hashes a directory's files)."""
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


PYTHON_STAGES = sorted(s for s in PIPELINE if stage_module(PIPELINE[s]["cmd"]))


def test_the_pipeline_has_python_stages_to_check():
    assert {"prepare", "validate", "train", "evaluate"} <= set(PYTHON_STAGES)


@pytest.mark.parametrize("stage", PYTHON_STAGES)
def test_each_stage_lists_every_module_its_command_imports(stage):
    module = stage_module(PIPELINE[stage]["cmd"])
    assert module is not None and module_file(module) is not None, f"{stage}: no {module}"
    deps = [str(d) for d in PIPELINE[stage].get("deps", [])]
    needed = sorted(str(p.relative_to(ROOT)) for p in project_imports(module))
    missing = [path for path in needed if not covered(path, deps)]
    assert not missing, f"dvc.yaml stage {stage!r} ({module}) imports but omits from deps: " + (
        ", ".join(missing)
    )


def test_the_import_walk_follows_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The walk itself, on a tiny package: what it must follow and what it must not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")  # empty: not a dep
    (pkg / "top.py").write_text(
        "from typing import TYPE_CHECKING\nimport json\nfrom . import rel\n"
        "if TYPE_CHECKING:\n    from pkg import typing_only\n"
        "def f():\n    from pkg.inner import g\n"
        "def plugins():\n    import pkg.plugins as found\n"
        "    return pkgutil.iter_modules(found.__path__)\n"
    )
    (pkg / "plugins").mkdir()
    (pkg / "plugins" / "__init__.py").write_text('"""Plug-ins."""')
    (pkg / "plugins" / "one.py").write_text("X = 1\n")
    for leaf in ("rel", "typing_only"):
        (pkg / f"{leaf}.py").write_text("X = 1\n")
    (pkg / "inner.py").write_text("import pkg.deep\n")
    (pkg / "deep.py").write_text("X = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = {str(p.relative_to(tmp_path)) for p in project_imports("pkg.top")}
    assert found == {
        "pkg/top.py",
        "pkg/rel.py",
        "pkg/inner.py",
        "pkg/deep.py",
        "pkg/plugins/__init__.py",
        "pkg/plugins/one.py",
    }


def test_every_listed_dep_exists_or_is_another_stages_output():
    """A module that moved leaves a dep DVC cannot find: `dvc repro` fails on it."""
    outs = {
        next(iter(o)) if isinstance(o, dict) else o
        for stage in PIPELINE.values()
        for key in ("outs", "metrics")
        for o in stage.get(key, [])
    }
    for name, stage in PIPELINE.items():
        for dep in stage.get("deps", []):
            assert dep in outs or (ROOT / dep).exists(), f"{name}: dep {dep} does not exist"


@pytest.mark.parametrize("stage", sorted(PIPELINE))
def test_the_lock_records_the_deps_dvc_yaml_lists(stage):
    listed = {str(d) for d in PIPELINE[stage].get("deps", [])}
    recorded = {d["path"] for d in LOCK[stage].get("deps", [])}
    assert recorded == listed, f"{stage}: dvc.lock is stale: run `dvc commit` and commit dvc.lock"
