"""Gate `champion_scoring`: the champion must score the holdout to be compared with.

It cannot be turned off; a schema change (the champion needs a column the data no longer
has) has a path: declare it (``declared_schema_change: true``) and run with ``force``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from tasks.gates.base import BaseGate
from tasks.reports import GateResult

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence


class ChampionScoringParams(BaseModel):
    """No ``enabled``: this gate cannot be turned off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    declared_schema_change: bool = False  # true: a changed feature set is intended


class ChampionScoringGate(BaseGate):
    name = "champion_scoring"
    Params = ChampionScoringParams
    order = 0

    def evaluate(self, evidence: Evidence) -> list[GateResult]:
        params = self.params
        assert isinstance(params, ChampionScoringParams)
        problem = evidence.champion_problem
        if problem is None:
            if evidence.champion is None:
                return [self.result("skipped", "no champion to compare with")]
            return [self.result("passed", "the champion scored the same held-out rows")]
        if params.declared_schema_change and evidence.force:
            why = (
                f"{problem}; declared in gates.champion_scoring.declared_schema_change and "
                "allowed by force=True: gates comparing with the champion are skipped"
            )
            return [self.result("skipped", why)]
        if not params.declared_schema_change:
            todo = (
                "if intended, set gates.champion_scoring.declared_schema_change: true "
                "and run with force"
            )
        else:
            todo = "declared in params: run with force to promote across the schema change"
        return [self.result("failed", f"{problem}; {todo}")]
