"""The gate registry: built-in gates found in this package, keyed by their name in
``params.yaml``; custom gates loaded by import path; the runner that applies them."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from tasks.errors import CtflowsError, ErrorKind
from tasks.gates.base import BaseGate
from tasks.reports import EvaluationError, GateError, GateResult

if TYPE_CHECKING:
    from tasks.config import GateParams
    from tasks.gates.evidence import Evidence

NOT_GATES = {"base", "evidence", "registry", "memory_probe", "timing", "infra_validation"}


class GateLoadError(CtflowsError, ValueError):
    """A gate in params cannot be used: bad import path, not a gate, invalid params."""

    kind = ErrorKind.BAD_INPUT


@functools.cache
def builtin_gates() -> dict[str, type[BaseGate]]:
    """Every gate module in this package, in report order: adding a module adds a gate."""
    import tasks.gates as package

    found: list[type[BaseGate]] = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in NOT_GATES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseGate) and obj.__module__ == module.__name__ and obj.name:
                found.append(obj)
    return {cls.name: cls for cls in sorted(found, key=lambda c: (c.order, c.name))}


def load_gate_class(path: str) -> type[Any]:
    """``package.module:Class`` (or ``package.module.Class``) checked against the protocol."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise GateLoadError(f"{path!r} is not an import path like 'mypkg.gates:RevenueGate'")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise GateLoadError(f"{path!r} does not import: {type(exc).__name__}: {exc}") from exc
    except AttributeError as exc:
        raise GateLoadError(f"{path!r}: module {module_name} has no {attr!r}") from exc
    problems = []
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        problems.append("a non-empty class attribute `name`")
    params = getattr(cls, "Params", None)
    if not (inspect.isclass(params) and issubclass(params, BaseModel)):
        problems.append("`Params`, a pydantic model of its params")
    if not callable(getattr(cls, "evaluate", None)):
        problems.append("a method `evaluate(evidence) -> list[GateResult]`")
    if problems:
        raise GateLoadError(f"{path!r} is not a gate: it needs {', '.join(problems)}")
    return cls


def validate_custom(entries: list[dict[str, Any]], builtin: set[str]) -> list[dict[str, Any]]:
    """Each ``{path, ...params}`` imports, is a gate with a unique name, and its params fit."""
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"custom[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise GateLoadError(f"{where}: expected a mapping with `path: module:Class`")
        cls = load_gate_class(entry["path"])
        if cls.name in builtin or cls.name in seen:
            raise GateLoadError(f"{where}: gate name {cls.name!r} is already taken")
        seen.add(cls.name)
        try:
            cls.Params.model_validate({k: v for k, v in entry.items() if k != "path"})
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise GateLoadError(f"{where} ({cls.name}).{key}: {first['msg']}") from exc
    return entries


def build_gates(policy: GateParams) -> list[Any]:
    """Gate objects for this policy: every built-in gate, then the custom ones in order."""
    gates: list[Any] = [cls(policy.rule(name)) for name, cls in builtin_gates().items()]
    for entry in policy.custom:
        cls = load_gate_class(entry["path"])
        gates.append(
            cls(cls.Params.model_validate({k: v for k, v in entry.items() if k != "path"}))
        )
    return gates


def run_gates(gates: list[Any], evidence: Evidence) -> list[GateResult]:
    """Apply each gate once. Disabled: skipped. ``force`` skips the gates that allow it. A gate
    that raises is a GateError naming it: no decision is taken on an error."""
    results: list[GateResult] = []
    for gate in gates:
        params = getattr(gate, "params", None)
        if not getattr(params, "enabled", True):
            results.append(GateResult(gate.name, "skipped", "disabled in params", gate=gate.name))
            continue
        if evidence.force and getattr(gate, "force_skippable", False):
            why = "skipped by force=True (manual override)"
            results.append(
                GateResult(gate.name, "skipped", why, evidence.primary_metric, gate=gate.name)
            )
            continue
        try:
            produced = gate.evaluate(evidence)
        except (GateError, EvaluationError):
            raise
        except Exception as exc:  # a gate's own failure names the gate, never passes silently
            raise GateError(gate.name, f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(produced, list) or not all(isinstance(r, GateResult) for r in produced):
            raise GateError(
                gate.name, f"evaluate returned {type(produced).__name__}, not list[GateResult]"
            )
        if not produced:
            raise GateError(gate.name, "evaluate returned no result")
        results.extend(r if r.gate else replace(r, gate=gate.name) for r in produced)
    return results
