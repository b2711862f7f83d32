"""Gate `prediction_parity`: the candidate against the champion on the same rows.

PSI between the two models' scores (binary), decided classes (multiclass) or predictions
(regression), and the decisions that flip. Judged against the truth by default: a flip
counts against the candidate only where the champion was right and the candidate is wrong,
and a large PSI is accepted when the candidate is better on the labels (lower per-row loss
and at least as many flips towards the truth as away from it) -- a sharper, better model is
not a different one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from tasks.gates.base import BaseGate, GateRule
from tasks.metrics import category_psi, decisions, psi, row_loss
from tasks.reports import GateResult, Status

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence


class PredictionParityParams(GateRule):
    max_psi: float | None = Field(0.25, ge=0)
    max_flip_rate: float | None = Field(0.2, ge=0, le=1)
    judge_against_truth: bool = True  # false: every flip and any PSI count, labels or not


class PredictionParityGate(BaseGate):
    name = "prediction_parity"
    Params = PredictionParityParams
    order = 70

    def evaluate(self, evidence: Evidence) -> list[GateResult]:
        rule = self.params
        assert isinstance(rule, PredictionParityParams)
        cand, champ, y = evidence.candidate_scores, evidence.champion_scores, evidence.y
        if champ is None:
            return [self.result("skipped", "no champion to compare with")]
        task = evidence.task
        loss_c, loss_h = (float(np.mean(row_loss(y, s, task))) for s in (cand, champ))
        truth = rule.judge_against_truth
        problems, facts = [], []
        if task == "regression":
            value = psi(champ, cand)
            better_on_truth = loss_c < loss_h
            facts.append(
                f"prediction PSI {value:.4f}, mean squared error {loss_h:.4g} -> {loss_c:.4g}"
            )
        else:
            dc, dh = decisions(cand, evidence.threshold), decisions(champ, evidence.threshold)
            if task == "multiclass":
                value = category_psi(dh, dc, cand.shape[1])
                what = "decided-class PSI"
            else:
                value, what = psi(champ, cand), "score PSI"
            flips = float(np.mean(dc != dh))
            against = float(np.mean((dh == y) & (dc != y)))
            towards = float(np.mean((dc == y) & (dh != y)))
            better_on_truth = loss_c < loss_h and towards >= against
            judged, kind = (against, "against the truth") if truth else (flips, "")
            if rule.max_flip_rate is not None and judged > rule.max_flip_rate:
                problems.append(
                    f"{100 * judged:.1f}% of decisions flip{' ' + kind if kind else ''}, "
                    f"above {100 * rule.max_flip_rate}%"
                )
            facts.append(
                f"{what} {value:.4f}, {100 * flips:.2f}% of decisions flip "
                f"({100 * towards:.2f}% towards the truth, {100 * against:.2f}% against)"
            )
        if rule.max_psi is not None and value > rule.max_psi:
            if truth and better_on_truth:
                facts.append(
                    f"PSI above {rule.max_psi} accepted: the candidate is better on the labels"
                )
            else:
                problems.append(
                    f"PSI {value:.4f} above {rule.max_psi}"
                    + (" and the candidate is not better on the labels" if truth else "")
                )
        reason = "; ".join(problems + facts)
        status: Status = "failed" if problems else "passed"
        return [self.result(status, reason, "psi", value, threshold=rule.max_psi)]
