"""Gate `minimums`: absolute floors (ceilings for losses) on the candidate's metrics."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import RootModel

from tasks.gates.base import BaseGate
from tasks.metrics import HIGHER_IS_BETTER, better
from tasks.reports import GateResult, Status

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence


class MinimumsParams(RootModel[dict[str, float]]):
    """``{metric: floor}``; the metrics are checked against the task when params load."""

    model_config = {"frozen": True}


class MinimumsGate(BaseGate):
    name = "minimums"
    Params = MinimumsParams
    order = 10

    def evaluate(self, evidence: Evidence) -> list[GateResult]:
        assert isinstance(self.params, MinimumsParams)
        if not self.params.root:
            return [self.result("skipped", "no minimums in params")]
        out = []
        for metric, floor in self.params.root.items():
            value = evidence.candidate_metrics[metric]
            name = f"minimum_{metric}"
            if math.isnan(value):
                reason = f"{metric} is undefined on this holdout"
                out.append(self.result("failed", reason, metric, name=name))
                continue
            word = "at least" if HIGHER_IS_BETTER[metric] else "at most"
            status: Status = "passed" if better(metric, value, floor) >= 0 else "failed"
            reason = f"{metric} {value:.4f} must be {word} {floor}"
            out.append(self.result(status, reason, metric, value, threshold=floor, name=name))
        return out
