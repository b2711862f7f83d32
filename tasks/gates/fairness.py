"""Gate `fairness`: the primary metric per slice, the positive-decision rate over the
sensitive column, and how much either gap widens against the champion.

Only slices with at least ``min_slice_rows`` rows are gated (metric gap, demographic parity
and gap widening alike); smaller ones are reported. Without a sensitive column (neither
``gates.fairness.sensitive_column`` nor ``data.sensitive_column``) the gate is skipped."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from tasks.gates.base import BaseGate, GateRule, bound_result
from tasks.metrics import decisions, metric_value
from tasks.reports import GateResult

if TYPE_CHECKING:
    import pandas as pd

    from tasks.gates.evidence import Evidence

SCALED_METRICS = {"rmse", "mae"}  # in the label's units: slice gaps are judged relative
SliceTable = dict[str, dict[str, dict[str, float]]]  # column -> value -> {rows, metric, ...}


class FairnessParams(GateRule):
    sensitive_column: str | None = None  # default: data.sensitive_column
    slice_columns: list[str] = Field(default_factory=list)
    min_slice_rows: int = Field(50, ge=1)
    max_slice_gap: float | None = Field(0.15, ge=0)
    max_parity_difference: float | None = Field(0.2, ge=0)
    max_gap_widening: float | None = Field(0.02, ge=0)


def slice_metrics(
    holdout: pd.DataFrame,
    scores: np.ndarray,
    y: np.ndarray,
    column: str,
    metric: str,
    threshold: float,
    min_rows: int,
    task: Any = None,
) -> dict[str, dict[str, float]]:
    """Per value of ``column``: rows, whether it is gated, the metric, the positive rate."""
    out: dict[str, dict[str, float]] = {}
    values = holdout[column].astype(str).to_numpy()
    positive = decisions(scores, threshold) if task != "regression" else None
    for value in np.unique(values):
        mask = values == value
        rows = int(mask.sum())
        gated = rows >= min_rows
        entry = {"rows": float(rows), "gated": float(gated)}
        if positive is not None and np.ndim(scores) == 1:
            entry["positive_rate"] = float(np.mean(positive[mask]))
        entry[metric] = (
            metric_value(metric, y[mask], scores[mask], threshold, task) if gated else math.nan
        )
        out[str(value)] = entry
    return out


def gaps(slices: SliceTable, metric: str, sensitive: str) -> tuple[float, str, float, list[str]]:
    """Widest metric gap over gated slices (and where), parity difference over gated slices
    of the sensitive column, gated slices where the metric is undefined."""
    worst, where, undefined = 0.0, "", []
    for column, groups in slices.items():
        values = {
            g: e[metric] for g, e in groups.items() if e["gated"] and not math.isnan(e[metric])
        }
        undefined += [
            f"{column}={g}" for g, e in groups.items() if e["gated"] and math.isnan(e[metric])
        ]
        if len(values) >= 2:
            gap = max(values.values()) - min(values.values())
            if gap > worst:
                lo, hi = min(values, key=values.__getitem__), max(values, key=values.__getitem__)
                worst, where = gap, f"{column}: {hi} vs {lo}"
    rates = [
        e["positive_rate"]
        for e in slices.get(sensitive, {}).values()
        if e["gated"] and "positive_rate" in e
    ]
    parity = (max(rates) - min(rates)) if len(rates) >= 2 else 0.0
    return worst, where, parity, undefined


class FairnessGate(BaseGate):
    name = "fairness"
    Params = FairnessParams
    order = 60

    def evaluate(self, evidence: Evidence) -> list[GateResult]:
        rule, metric = self.params, evidence.primary_metric
        assert isinstance(rule, FairnessParams)
        sensitive = rule.sensitive_column or getattr(evidence.data, "sensitive_column", None)
        if not sensitive:
            why = "fairness skipped: no sensitive column (data.sensitive_column is null)"
            return [self.result("skipped", why)]
        columns = list(dict.fromkeys([sensitive, *rule.slice_columns]))
        missing = [c for c in columns if c not in evidence.holdout.columns]
        if missing:
            return [self.result("failed", f"slice columns {missing} are not in the holdout")]

        def measure(scores: np.ndarray) -> SliceTable:
            return {
                c: slice_metrics(
                    evidence.holdout,
                    scores,
                    evidence.y,
                    c,
                    metric,
                    evidence.threshold,
                    rule.min_slice_rows,
                    evidence.task,
                )
                for c in columns
            }

        cand_slices = measure(evidence.candidate_scores)
        c_gap, c_where, c_parity, undefined = gaps(cand_slices, metric, sensitive)
        # errors in the label's units (rmse, mae) are gated relative to the whole holdout's
        scale = abs(evidence.candidate_metrics[metric]) if metric in SCALED_METRICS else 1.0
        scale = scale if scale > 0 else 1.0
        c_gap /= scale
        evidence.artifacts["slices"] = {"candidate": cand_slices}
        out: list[GateResult] = []
        if undefined:
            reason = f"{metric} undefined (one class only) in slices {undefined[:5]}"
            out.append(self.result("failed", reason, metric, name="slice_metric"))
        if rule.max_slice_gap is not None:
            reason = (
                f"widest {metric} gap {c_gap:.4f}{' (relative)' if scale != 1.0 else ''} "
                f"({c_where or 'single slice'}) over slices of "
                f"at least {rule.min_slice_rows} rows"
            )
            out.append(
                bound_result(self.name, "slice_gap", c_gap, rule.max_slice_gap, reason, metric)
            )
        binary = evidence.task == "binary"
        if rule.max_parity_difference is not None:
            if not binary:
                why = f"positive-decision rates are defined for binary tasks, not {evidence.task}"
                out.append(self.result("skipped", why, name="demographic_parity"))
            else:
                reason = (
                    f"positive-decision rate gap over {sensitive}: {c_parity:.4f} (slices of at "
                    f"least {rule.min_slice_rows} rows)"
                )
                out.append(
                    bound_result(
                        self.name,
                        "demographic_parity",
                        c_parity,
                        rule.max_parity_difference,
                        reason,
                        "parity_difference",
                    )
                )
        if rule.max_gap_widening is not None:
            if evidence.champion_scores is None:
                out.append(
                    self.result("skipped", "no champion to compare with", name="gap_widening")
                )
            else:
                champ_slices = measure(evidence.champion_scores)
                evidence.artifacts["slices"]["champion"] = champ_slices
                h_gap, _, h_parity, _ = gaps(champ_slices, metric, sensitive)
                if evidence.champion_metrics is not None and scale != 1.0:
                    h_scale = abs(evidence.champion_metrics[metric]) or 1.0
                    h_gap /= h_scale
                widening = max(c_gap - h_gap, (c_parity - h_parity) if binary else 0.0)
                reason = f"slice gap {h_gap:.4f} -> {c_gap:.4f}" + (
                    f", parity gap {h_parity:.4f} -> {c_parity:.4f}" if binary else ""
                )
                out.append(
                    bound_result(
                        self.name, "gap_widening", widening, rule.max_gap_widening, reason, metric
                    )
                )
        return out
