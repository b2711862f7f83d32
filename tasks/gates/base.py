"""What a gate is: a name, a params model, ``evaluate(evidence) -> list[GateResult]``, and
whether ``force`` may skip it. Built-in gates and custom gates (``gates.custom``) are alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from tasks.reports import GateResult, Status

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence


class GateRule(BaseModel):
    """Params every gate has; a gate's own params model extends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True


@runtime_checkable
class Gate(Protocol):
    """One gate. ``Params`` validates its section of ``params.yaml`` at load; the runner
    builds the gate with those params and calls ``evaluate`` once per comparison.

    ``evaluate`` returns measured results; it raises when it cannot measure (the run then
    fails with that error: an error is never a decision)."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    force_skippable: ClassVar[bool]

    def __init__(self, params: BaseModel) -> None: ...

    def evaluate(self, evidence: Evidence) -> list[GateResult]: ...


class BaseGate:
    """Convenience base: keeps the params; subclasses set ``name``, ``Params``, ``evaluate``."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = GateRule
    force_skippable: ClassVar[bool] = False
    # measures the machine the run is on (timing, memory) rather than the model's predictions:
    # a rejection by such gates alone may be re-decided (`ctflows run --redecide`)
    measures_machine: ClassVar[bool] = False
    order: ClassVar[int] = 100  # position of built-in gates in the report

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def evaluate(self, evidence: Evidence) -> list[GateResult]:  # pragma: no cover - abstract
        raise NotImplementedError

    def result(
        self,
        status: Status,
        reason: str,
        metric: str | None = None,
        candidate: float | None = None,
        champion: float | None = None,
        threshold: float | None = None,
        name: str | None = None,
    ) -> GateResult:
        return GateResult(
            name or self.name, status, reason, metric, candidate, champion, threshold, self.name
        )


def bound_result(
    gate: str, name: str, value: float, bound: float, reason: str, metric: str
) -> GateResult:
    """A result that passes while ``value`` stays within ``bound``."""
    status: Status = "passed" if value <= bound else "failed"
    return GateResult(
        name, status, f"{reason}; allowed {bound}", metric, value, threshold=bound, gate=gate
    )
