"""Gate `model_size`: the serialized model (cloudpickle, as MLflow logs it) within a budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from tasks.gates.base import BaseGate, GateRule
from tasks.reports import GateResult, Status

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence


class ModelSizeParams(GateRule):
    max_bytes: int | None = Field(50_000_000, gt=0)


def model_bytes(model: Any) -> int:
    import cloudpickle

    return len(cloudpickle.dumps(model))


class ModelSizeGate(BaseGate):
    name = "model_size"
    Params = ModelSizeParams
    order = 50

    def evaluate(self, evidence: Evidence) -> list[GateResult]:
        rule = self.params
        assert isinstance(rule, ModelSizeParams)
        size = float(model_bytes(evidence.candidate))
        if rule.max_bytes is None:
            return [self.result("skipped", "no budget for the serialized model", "bytes", size)]
        status: Status = "passed" if size <= rule.max_bytes else "failed"
        reason = f"serialized model: {size / 1e6:.2f} MB, budget {rule.max_bytes / 1e6:.2f} MB"
        return [self.result(status, reason, "bytes", size, threshold=float(rule.max_bytes))]
