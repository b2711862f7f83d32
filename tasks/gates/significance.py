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
from tasks.resampling import bootstrap_gain, bootstrap_gains

if TYPE_CHECKING:
    from tasks.gates.evidence import Evidence


class SignificanceParams(GateRule):
    # > 0: a required gain; 0: any confident gain (a tie never promotes); < 0: a
    # non-inferiority margin (a fresh model not confidently worse by more than it promotes)
    min_improvement: float = 0.0
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

    def _gains(self, evidence: Evidence) -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap replicates of the candidate's gain, and of a perfect model's."""
        rule = self.params
        assert isinstance(rule, SignificanceParams) and evidence.champion_scores is not None
        args = (evidence.threshold, rule.resamples, rule.seed)
        perfect = oracle_scores(evidence)
        if evidence.task == "binary":  # one pass: both share the resampling draws
            boot, best = bootstrap_gains(
                evidence.primary_metric,
                evidence.y,
                [evidence.candidate_scores, perfect],
                evidence.champion_scores,
                *args,
            )
            return boot, best
        regression = evidence.task == "regression"
        boot, best = (
            bootstrap_gain(
                evidence.primary_metric,
                evidence.y,
                scores,
                evidence.champion_scores,
                *args,
                regression=regression,
            )
            for scores in (evidence.candidate_scores, perfect)
        )
        return boot, best

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
        boot, perfect = self._gains(evidence)
        evidence.artifacts["bootstrap_gains"] = boot
        lo, hi = (float(q) for q in np.nanquantile(boot, [rule.alpha, 1 - rule.alpha]))
        detectable = rule.min_improvement + max(gain - lo, 0.0)
        rows = len(evidence.y)
        evidence.notes.append(
            f"significance: on these {rows} held-out rows, a {metric} gain must be about "
            f"{detectable:+.4f} or more to clear the {100 * (1 - rule.alpha):.0f}% lower bound "
            f"(smaller gains cannot be told from noise here)"
        )
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
