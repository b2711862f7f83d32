"""The gate report: one result per gate, the decision, and how it is rendered (markdown,
JSON, Prefect table). The named errors of the evaluate stage live here too."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tasks.errors import CtflowsError, ErrorKind

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence

Decision = Literal["promote", "reject"]
Status = Literal["passed", "failed", "skipped"]


class EvaluationError(CtflowsError, ValueError):
    """The holdout or a model cannot be evaluated; the message names the cause."""

    kind = ErrorKind.BAD_INPUT


class GateError(CtflowsError, RuntimeError):
    """A gate could not measure (it raised, or its measurement was disturbed).

    Not a decision: the run fails with this error and can be run again."""

    def __init__(self, gate: str, cause: str) -> None:
        self.gate, self.cause = gate, cause
        super().__init__(
            f"gate {gate!r} could not measure: {cause}; no decision was taken, "
            "fix the cause and run again"
        )


class GateRejected(CtflowsError, RuntimeError):
    """Raised only when the policy says a rejection fails the run."""

    def __init__(self, report: GateReport) -> None:
        self.report = report
        names = ", ".join(g.name for g in report.failed)
        super().__init__(f"candidate rejected by gates: {names}")


@dataclass(frozen=True)
class GateResult:
    """One measured check: passed, failed or skipped, with its values and the reason."""

    name: str
    status: Status
    reason: str
    metric: str | None = None
    candidate: float | None = None
    champion: float | None = None
    threshold: float | None = None
    gate: str = ""  # the gate (params key, or custom path) that produced it


Gate = GateResult  # the name this result had before gates became units of their own


@dataclass(frozen=True)
class GateReport:
    decision: Decision
    primary_metric: str
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    gates: tuple[GateResult, ...] = field(default_factory=tuple)
    holdout_rows: int = 0
    evidence: Evidence | None = field(default=None, compare=False, repr=False)
    task: str = "binary"
    notes: tuple[str, ...] = ()  # what a reader must know before the table (small holdout, ...)

    @property
    def candidate_primary(self) -> float:
        return self.candidate_metrics[self.primary_metric]

    @property
    def champion_primary(self) -> float | None:
        return (self.champion_metrics or {}).get(self.primary_metric)

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if g.status == "failed"]

    def gate(self, name: str) -> GateResult:
        return next(g for g in self.gates if g.name == name)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("evidence")
        if self.evidence is not None:
            out["slices"] = self.evidence.slices
        return finite(out)

    def to_markdown(self) -> str:
        lines = [
            f"**Decision: {self.decision}** on {self.holdout_rows} held-out rows "
            f"({self.task}, primary metric `{self.primary_metric}`)",
            "",
            *[f"> {note}" for note in self.notes],
            *([""] if self.notes else []),
            "| gate | status | metric | candidate | champion | threshold | reason |",
            "|---|---|---|---|---|---|---|",
        ]
        for g in self.gates:
            lines.append(
                f"| {g.name} | {g.status} | {g.metric or ''} | {fmt(g.candidate)} | "
                f"{fmt(g.champion)} | {fmt(g.threshold)} | {g.reason} |"
            )
        return "\n".join(lines)

    def table_rows(self) -> list[dict[str, Any]]:
        return [
            {k: (fmt(v) if isinstance(v, float) else v) for k, v in asdict(g).items()}
            for g in self.gates
        ]


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if abs(value) >= 1000 else f"{value:.4f}"


def finite(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj
