"""The production monitor's measures, for every task: score drift and the live metric.

What a score is follows the task (``tasks.metrics``): binary, P(positive); regression, the
predicted value; multiclass, the class probabilities (n x k, classes 0..k-1 in the model's
order), of which the serving app logs the decided class's. Score drift compares the logged
scores with the champion's on its holdout (PSI, KS); for multiclass it compares the shares of
the decided classes, by class name (PSI), and the confidence (KS). The live metric has a
percentile bootstrap interval: Poisson row weights on per-row terms where the metric is a mean
of them (ROC AUC by its DeLong placements), rows resampled otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tasks.config import MonitorParams
from tasks.drift import ks_sorted, psi_numeric
from tasks.metrics import TaskType, category_psi, metric_value

if TYPE_CHECKING:
    import pandas as pd

CI_MAX_ROWS = 20_000  # rows per bootstrap resample of the live metric (wider, never narrower)
MIN_DAY_ROWS = 20
CELLS = 4096  # bootstrap cells above which rows are grouped


@dataclass(frozen=True)
class MetricEstimate:
    metric: str
    value: float
    low: float
    high: float
    rows: int


@dataclass(frozen=True)
class ScoreDrift:
    psi: float
    ks_statistic: float
    p_value: float
    drifted: bool
    reference_rows: int
    current_rows: int
    # multiclass: (class, share of the holdout, share of production) of the decided classes
    classes: tuple[tuple[str, float, float], ...] = ()

    def describe(self) -> str:
        if self.classes:
            shares = ", ".join(f"{c} {h:.0%} -> {p:.0%}" for c, h, p in self.classes)
            return (
                f"decided classes PSI {self.psi:.3f} ({shares}); confidence KS D "
                f"{self.ks_statistic:.3f} (p={self.p_value:.2g})"
            )
        return f"PSI {self.psi:.3f}, KS D {self.ks_statistic:.3f} (p={self.p_value:.2g})"


def score_drift(
    reference: np.ndarray, current: np.ndarray, policy: MonitorParams
) -> ScoreDrift | None:
    """PSI and KS of the production scores against the champion's holdout scores (binary:
    P(positive); regression: the predictions)."""
    ref = np.sort(np.asarray(reference, dtype=float)[np.isfinite(reference)])
    cur = np.sort(np.asarray(current, dtype=float)[np.isfinite(current)])
    if len(ref) == 0 or len(cur) == 0:
        return None
    value = psi_numeric(ref, cur)
    d, p = ks_sorted(ref, cur)
    drifted = value > policy.score_psi_threshold or p < policy.score_ks_pvalue
    return ScoreDrift(value, d, p, bool(drifted), len(ref), len(cur))


def class_drift(
    reference: np.ndarray, current: np.ndarray, classes: Sequence[str], policy: MonitorParams
) -> ScoreDrift | None:
    """Multiclass: PSI of the decided classes' shares, KS of the confidence (the decided
    class's probability), production against the holdout. Rows are class probabilities."""
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    ref = ref[np.isfinite(ref).all(axis=1)]
    cur = cur[np.isfinite(cur).all(axis=1)]
    if len(ref) == 0 or len(cur) == 0:
        return None
    k = ref.shape[1]
    ref_decided, cur_decided = ref.argmax(axis=1), cur.argmax(axis=1)
    value = category_psi(ref_decided, cur_decided, k)
    d, p = ks_sorted(np.sort(ref.max(axis=1)), np.sort(cur.max(axis=1)))
    ref_share = np.bincount(ref_decided, minlength=k) / len(ref)
    cur_share = np.bincount(cur_decided, minlength=k) / len(cur)
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    shares = tuple((names[i], float(ref_share[i]), float(cur_share[i])) for i in range(k))
    drifted = value > policy.score_psi_threshold or p < policy.score_ks_pvalue
    return ScoreDrift(value, d, p, bool(drifted), len(ref), len(cur), shares)


def live_metric(
    metric: str,
    y: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    policy: MonitorParams,
    task: TaskType = "binary",
) -> MetricEstimate:
    """The metric on labelled predictions with a percentile bootstrap interval at ``alpha``."""
    y = np.asarray(y, dtype=float) if task == "regression" else np.asarray(y).astype(int)
    scores = np.asarray(scores, dtype=float)
    value = metric_value(metric, y, scores, threshold, task)
    rng = np.random.default_rng(policy.seed)
    replicates = bootstrap_metric(metric, y, scores, threshold, policy.resamples, rng, task)
    replicates = replicates[np.isfinite(replicates)]
    if len(replicates) == 0:
        return MetricEstimate(metric, value, math.nan, math.nan, len(y))
    low, high = np.quantile(replicates, [policy.alpha / 2, 1 - policy.alpha / 2])
    return MetricEstimate(metric, value, float(low), float(high), len(y))


def per_row_terms(
    metric: str, y: np.ndarray, s: np.ndarray, threshold: float, task: TaskType
) -> np.ndarray | None:
    """Per-row terms whose mean is ``metric`` (rmse: of its square), or None if it has none."""
    if task == "regression":
        error = np.asarray(s, dtype=float) - y
        return {"mae": np.abs(error), "rmse": error**2}.get(metric)
    if task == "multiclass":
        p = np.clip(s[np.arange(len(y)), y], 1e-15, 1.0)
        terms = {
            "accuracy": lambda: (s.argmax(axis=1) == y).astype(float),
            "log_loss": lambda: -np.log(p),
        }
        return terms[metric]() if metric in terms else None
    p = np.clip(s, 1e-15, 1 - 1e-15)
    binary = {
        "accuracy": lambda: ((p >= threshold).astype(int) == y).astype(float),
        "brier": lambda: (p - y) ** 2,
        "log_loss": lambda: -(y * np.log(p) + (1 - y) * np.log(1 - p)),
    }
    return binary[metric]() if metric in binary else None


def bootstrap_metric(
    metric: str,
    y: np.ndarray,
    s: np.ndarray,
    threshold: float,
    resamples: int,
    rng: np.random.Generator,
    task: TaskType = "binary",
) -> np.ndarray:
    """Bootstrap replicates of ``metric``: Poisson row weights on per-row terms (ROC AUC by
    its DeLong placements, the losses, errors and accuracy by their per-row values; RMSE the
    root of the weighted mean squared error); F1, PR AUC and R² by resampling rows (at most
    ``CI_MAX_ROWS`` per resample, the spread rescaled to ``n``)."""
    if task == "binary" and metric == "roc_auc":
        if y.min() == y.max():
            return np.full(resamples, np.nan)
        v10, v01 = placements(y, s)
        return (
            _weighted_means(v10, rng, resamples) + _weighted_means(v01, rng, resamples) - v10.mean()
        )
    terms = per_row_terms(metric, y, s, threshold, task)
    if terms is not None:
        means = _weighted_means(terms, rng, resamples)
        return np.sqrt(means) if metric == "rmse" else means
    n = len(y)
    size = min(n, CI_MAX_ROWS)
    out = np.empty(resamples)
    for i in range(resamples):
        pick = rng.integers(0, n, size)
        out[i] = metric_value(metric, y[pick], s[pick], threshold, task)
    if size < n:  # a smaller resample widens the spread by sqrt(n / size): scale it back
        centre = float(np.nanmean(out))
        out = centre + (out - centre) * math.sqrt(size / n)
    return out


def placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong placement values: per positive, the share of negatives it outranks; per
    negative, the share of positives that outrank it (ties count half). Both average to AUC."""
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    s_pos, s_neg = s[y == 1], s[y == 0]
    below = np.searchsorted(neg, s_pos, side="left")
    ties = np.searchsorted(neg, s_pos, side="right") - below
    above = len(pos) - np.searchsorted(pos, s_neg, side="right")
    ties_n = np.searchsorted(pos, s_neg, side="right") - np.searchsorted(pos, s_neg, side="left")
    return (below + 0.5 * ties) / len(neg), (above + 0.5 * ties_n) / len(pos)


def _weighted_means(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Means of ``values`` under Poisson(1) row weights, one per resample.

    Above ``CELLS`` rows, rows are grouped into equal-count cells of sorted values and each
    cell's weight is Poisson(cell size), what per-row weights sum to: the cost is resamples x
    cells, whatever the number of rows (as the gates' paired bootstrap does).
    """
    if len(values) > CELLS:
        ordered = np.sort(values)
        edges = np.linspace(0, len(values), CELLS + 1).astype(int)
        counts = np.diff(edges).astype(float)
        means = np.add.reduceat(ordered, edges[:-1]) / counts
    else:
        means, counts = np.asarray(values, dtype=float), np.ones(len(values))
    weights = rng.poisson(counts, size=(resamples, len(counts))).astype(float)
    total = weights.sum(axis=1)
    total[total == 0] = np.nan
    result: np.ndarray = (weights @ means) / total
    return result


def metric_by_day(
    metric: str,
    labelled: pd.DataFrame,
    scores: np.ndarray,
    threshold: float,
    task: TaskType = "binary",
) -> tuple[tuple[str, float, int], ...]:
    """The live metric per day of prediction, for days with enough labelled rows; ``scores``
    are aligned with ``labelled``'s rows."""
    out = []
    days = labelled["time"].dt.strftime("%Y-%m-%d").to_numpy()
    y = labelled["y"].to_numpy()
    for day in sorted(set(days)):
        at = days == day
        if at.sum() >= MIN_DAY_ROWS:
            value = metric_value(metric, y[at], scores[at], threshold, task)
            if math.isfinite(value):
                out.append((str(day), value, int(at.sum())))
    return tuple(out)
