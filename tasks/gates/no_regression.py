"""Gate `no_regression`: the primary metric may not drop more than a tolerance."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from tasks.gates.base import BaseGate, GateRule
from tasks.metrics import better
from tasks.reports import GateResult, Status

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence

DEFAULT_TOLERANCE = 0.002


class NoRegressionParams(GateRule):
    """The tolerated drop: ``tolerance`` (absolute, in the metric's units) or
    ``relative_tolerance`` (a share of the champion's value); without either, the task's
    default (tasks/config/defaults.py), else an absolute 0.002."""

    tolerance: float | None = Field(None, ge=0.0)
    relative_tolerance: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_kind(self) -> NoRegressionParams:
        if self.tolerance is not None and self.relative_tolerance is not None:
            raise ValueError("set tolerance (absolute) or relative_tolerance, not both")
        return self

    def allowed_drop(self, champion: float) -> tuple[float, str]:
        """The tolerated drop against a champion scoring ``champion``, and how it was set."""
        if self.relative_tolerance is not None:
            drop = self.relative_tolerance * abs(champion)
            return drop, f"{drop:.4g} ({100 * self.relative_tolerance:g}% of the champion's)"
        drop = DEFAULT_TOLERANCE if self.tolerance is None else self.tolerance
        return drop, f"{drop:g}"


class NoRegressionGate(BaseGate):
    name = "no_regression"
    Params = NoRegressionParams
    force_skippable = True
    order = 20

    def evaluate(self, evidence: Evidence) -> list[GateResult]:
        rule, metric = self.params, evidence.primary_metric
        assert isinstance(rule, NoRegressionParams)
        champ = evidence.champion_metrics
        if champ is None:
            return [self.result("skipped", "no champion to compare with", metric)]
        c, h = evidence.candidate_metrics[metric], champ[metric]
        if math.isnan(c) or math.isnan(h):
            return [self.result("failed", f"{metric} is undefined here", metric, c, h)]
        gain = better(metric, c, h)
        drop, said = rule.allowed_drop(h)
        status: Status = "passed" if gain >= -drop else "failed"
        reason = f"{metric} changed by {gain:+.4f}; tolerated drop {said}"
        return [self.result(status, reason, metric, c, h, -drop)]
