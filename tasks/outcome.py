"""What a run or an operator decided: the outcome every flow returns, records and notifies."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tasks.evaluate import GateReport

Kind = Literal[
    "promoted",
    "rejected",
    "failed",
    "skipped",
    "dry-run",
    "drift",
    "no-drift",
    "recovered",
    "rolled-back",
    "frozen",
]


@dataclass(frozen=True)
class RunOutcome:
    """What one continuous-training run decided, for people and for the demo's output."""

    kind: Kind
    model_name: str
    data_md5: str = ""
    version: str | None = None
    previous_version: str | None = None
    run_id: str | None = None
    metric: str = ""
    candidate: float | None = None
    champion: float | None = None
    failed_gates: tuple[str, ...] = ()
    step: str | None = None
    error: str | None = None
    deploy: str | None = None
    flow_run: str | None = None
    report: str | None = None
    actor: str | None = None  # who acted, for operator actions (promote, rollback by hand)
    redecided: str | None = None  # a re-decision (`ctflows run --redecide`): who asked, of what

    def with_report(self, report: GateReport) -> RunOutcome:
        """This outcome with the primary metric of both models and the failed gates."""
        return replace(
            self,
            metric=report.primary_metric,
            candidate=report.candidate_primary,
            champion=report.champion_primary,
            failed_gates=tuple(f"{g.name}: {g.reason}" for g in report.failed),
            report=(
                f"MLflow run `{self.run_id}`, artifacts `gates/` (report.json, report.md, plots); "
                "Prefect artifacts `gate-report` and `gate-summary`"
            ),
        )

    def line(self) -> str:
        parts = [f"{self.kind:<8}", f"data={self.data_md5[:10] or '-':<10}"]
        if self.candidate is not None:
            parts.append(f"{self.metric}={self.candidate:.4f}")
            champ = "none" if self.champion is None else f"{self.champion:.4f}"
            parts.append(f"champion={champ}")
        if self.version:
            parts.append(f"model={self.model_name} v{self.version}")
        if self.failed_gates:
            parts.append("failed=" + ",".join(self.failed_gates))
        if self.error:  # a failure's step and error, or an operator's reason
            step = f"[{self.step}] " if self.step else ""
            parts.append(f"{step}{self.error.splitlines()[0][:160]}")
        if self.deploy:
            parts.append(f"deploy={self.deploy}")
        return "  ".join(parts)
