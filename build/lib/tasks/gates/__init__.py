"""Promotion gates: one module per gate family, found by the registry.

A gate has a ``name`` (its key under ``gates:`` in params.yaml), a ``Params`` model,
``evaluate(evidence) -> list[GateResult]`` and ``force_skippable``. Custom gates are listed
under ``gates.custom`` by import path and behave like the built-in ones."""

from tasks.gates.base import BaseGate, Gate, GateRule, bound_result
from tasks.gates.evidence import Evidence
from tasks.reports import GateError, GateResult

__all__ = ["BaseGate", "Evidence", "Gate", "GateError", "GateResult", "GateRule", "bound_result"]
