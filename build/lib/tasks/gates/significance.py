"""Gate `significance`: the paired bootstrap's lower bound of the gain must clear a margin.

Before judging, it reports what this holdout can detect: the smallest gain that would pass
at this size, and whether even a perfect model could pass (on a small holdout it cannot)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from tasks.gates.base import BaseGate, GateRule
from tasks.metrics import better
from tasks.reports import GateResult, Status
from tasks.resampling import bootstrap_gain

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence


class SignificanceParams(GateRule):
    min_improvement: float = Field(0.0, ge=0.0)
    resamples: int = Field(1000, ge=50, le=100_000)
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    seed: int = 0


def oracle_scores(evidence: Evidence) -> np.ndarray:
    """What a perfect model would answer on these rows."""
    y = evidence.y
    if evidence.task == "regression":
        return np.asarray(y, dtype=float)
    if evidence.task == "multiclass":
        k = evidence.candidate_scores.shape[1]
        out: np.ndarray = np.eye(k)[y.astype(int)]
        return out
    return np.asarray(y, dtype=float)


class SignificanceGate(BaseGate):
    name = "significance"
    Params = SignificanceParams
    force_skippable = True
    order = 30

    def _gains(self, evidence: Evidence, cand: np.ndarray) -> np.ndarray:
        rule = self.params
        assert isinstance(rule, SignificanceParams) and evidence.champion_scores is not None
        return bootstrap_gain(
            evidence.primary_metric,
            evidence.y,
            cand,
            evidence.champion_scores,
            evidence.threshold,
            rule.resamples,
            rule.seed,
            regression=evidence.task == "regression",
        )

    def evaluate(self, evidence: Evidence) -> list[GateResult]:
        rule, metric = self.params, evidence.primary_metric
        assert isinstance(rule, SignificanceParams)
        champ = evidence.champion_metrics
        if evidence.champion_scores is None or champ is None:
            return [self.result("skipped", "no champion to compare with", metric)]
        c, h = evidence.candidate_metrics[metric], champ[metric]
        if math.isnan(c) or math.isnan(h):
            return [self.result("failed", f"{metric} is undefined here", metric, c, h)]
        gain = better(metric, c, h)
        boot = self._gains(evidence, evidence.candidate_scores)
        evidence.artifacts["bootstrap_gains"] = boot
        lo, hi = (float(q) for q in np.nanquantile(boot, [rule.alpha, 1 - rule.alpha]))
        detectable = rule.min_improvement + max(gain - lo, 0.0)
        rows = len(evidence.y)
        evidence.notes.append(
            f"significance: on these {rows} held-out rows, a {metric} gain must be about "
            f"{detectable:+.4f} or more to clear the {100 * (1 - rule.alpha):.0f}% lower bound "
            f"(smaller gains cannot be told from noise here)"
        )
        perfect = self._gains(evidence, oracle_scores(evidence))
        perfect_lo = float(np.nanquantile(perfect, rule.alpha))
        never = not perfect_lo > rule.min_improvement
        if never:
            evidence.notes.append(
                f"WARNING significance can never pass on this holdout: even a perfect model's "
                f"lower bound is {perfect_lo:+.4f} against the champion (needs > "
                f"{rule.min_improvement}); hold out more rows (data.holdout_fraction), lower "
                "significance.alpha, or pick a more sensitive primary metric (see the README)"
            )
        ok = gain > rule.min_improvement and lo > rule.min_improvement
        reason = (
            f"gain {gain:+.4f}, {100 * (1 - 2 * rule.alpha):.0f}% CI [{lo:+.4f}, {hi:+.4f}] "
            f"over {rule.resamples} paired resamples; the lower bound must exceed "
            f"{rule.min_improvement} (a tie never promotes); "
            f"detectable gain here ~{detectable:+.4f}"
            + ("; a perfect model could not pass on this holdout" if never else "")
        )
        status: Status = "passed" if ok else "failed"
        return [self.result(status, reason, metric, c, h, rule.min_improvement)]
