"""Gate `reproducibility`: retraining on the same data and params gives the same predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from tasks.gates.base import BaseGate, GateRule
from tasks.reports import GateResult, Status

if TYPE_CHECKING:
    import pandas as pd

    from tasks.gates.evidence import Evidence


class ReproducibilityParams(GateRule):
    enabled: bool = False  # costs one more training run
    tolerance: float = Field(0.0, ge=0)


def reproducibility_result(
    model: Any, retrained: Any, holdout: pd.DataFrame, tolerance: float, task: Any = "binary"
) -> GateResult:
    from tasks.gates.evidence import score

    a = score(model, holdout, "candidate", task)
    b = score(retrained, holdout, "retrained candidate", task)
    diff = float(np.max(np.abs(a - b))) if len(a) else 0.0
    reason = f"max |prediction difference| after retraining {diff:.3g}, allowed {tolerance}"
    status: Status = "passed" if diff <= tolerance else "failed"
    return GateResult(
        "reproducibility",
        status,
        reason,
        "max_abs_diff",
        diff,
        threshold=tolerance,
        gate="reproducibility",
    )


class ReproducibilityGate(BaseGate):
    name = "reproducibility"
    Params = ReproducibilityParams
    order = 80

    def evaluate(self, evidence: Evidence) -> list[GateResult]:
        rule = self.params
        assert isinstance(rule, ReproducibilityParams)
        if evidence.retrain is None:
            return [self.result("skipped", "no training function given to retrain with")]
        return [
            reproducibility_result(
                evidence.candidate,
                evidence.retrain(),
                evidence.holdout,
                rule.tolerance,
                evidence.task,
            )
        ]
