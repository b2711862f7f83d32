"""Gate `no_regression`: the primary metric may not drop more than a tolerance."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from tasks.gates.base import BaseGate, GateRule
from tasks.metrics import better
from tasks.reports import GateResult, Status

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence


class NoRegressionParams(GateRule):
    tolerance: float = Field(0.002, ge=0.0)


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
        status: Status = "passed" if gain >= -rule.tolerance else "failed"
        reason = f"{metric} changed by {gain:+.4f}; tolerated drop {rule.tolerance}"
        return [self.result(status, reason, metric, c, h, -rule.tolerance)]
