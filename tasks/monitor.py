"""Stage `monitor`: production against what the champion was promoted on.

Over a window of the inference log: drift of the production inputs against the champion's
training rows (the drift stage's per-feature statistics and correction), drift of the score
distribution against the champion's scores on its holdout, and the champion's live primary
metric on labelled predictions, with a bootstrap interval, against its holdout metric at
promotion. ``MonitorReport.reasons`` says why a retraining should start, if it should.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.config import DataParams, DriftParams, MonitorParams
from tasks.drift import DriftReport, detect_drift, ks_sorted, psi_numeric, should_retrain
from tasks.inference_log import LabelledPredictions, LogWindow
from tasks.metrics import HIGHER_IS_BETTER, metric_value

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ChampionReference:
    """What the champion was promoted on: its training rows, holdout scores and metric."""

    model_name: str
    version: str
    run_id: str
    data_md5: str
    training_rows: pd.DataFrame
    holdout_scores: np.ndarray
    holdout_metric: float | None
    threshold: float


@dataclass(frozen=True)
class MonitorReport:
    model_name: str
    champion_version: str | None
    window_start: str
    window_end: str
    rows: int
    champion_rows: int
    versions: dict[str, int]
    metric: str
    feature_drift: DriftReport | None = None
    score_drift: ScoreDrift | None = None
    live: MetricEstimate | None = None
    holdout_metric: float | None = None
    live_by_day: tuple[tuple[str, float, int], ...] = ()
    labels_read: int = 0
    labels_unmatched: int = 0
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def retrain(self) -> bool:
        return bool(self.reasons)

    @property
    def metric_drop(self) -> float | None:
        """How much worse live is than holdout (positive: worse), whatever the direction."""
        if self.live is None or self.holdout_metric is None:
            return None
        return _worse_by(self.metric, self.live.value, self.holdout_metric)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.feature_drift is not None:
            out["feature_drift"] = {
                "reference_rows": self.feature_drift.reference_rows,
                "current_rows": self.feature_drift.current_rows,
                "drifted": [f.feature for f in self.feature_drift.drifted],
                "features": self.feature_drift.table_rows(),
                "notes": list(self.feature_drift.notes),
            }
        out["retrain"] = self.retrain
        return _finite(out)

    def summary(self) -> str:
        head = f"{self.model_name} v{self.champion_version or '?'} in production"
        if self.retrain:
            return f"{head}: retraining requested ({'; '.join(self.reasons)})"
        return f"{head}: {self.rows} predictions, nothing passed a threshold"

    def to_markdown(self) -> str:
        lines = [
            f"# Production monitor: {self.summary()}",
            "",
            f"Window {self.window_start} .. {self.window_end}: {self.rows} predictions "
            f"({self.champion_rows} by the champion); versions {self.versions or '{}'}",
            "",
        ]
        if self.score_drift is not None:
            s = self.score_drift
            lines.append(
                f"- score distribution: PSI {s.psi:.3f}, KS D {s.ks_statistic:.3f} "
                f"(p={s.p_value:.2g}) -> {'drifted' if s.drifted else 'stable'}"
            )
        if self.feature_drift is not None:
            drifted = self.feature_drift.drifted
            lines.append(
                f"- input drift: {len(drifted)} of {len(self.feature_drift.features)} features"
                + "".join(f"\n  - {f.feature}: {f.reason()}" for f in drifted)
            )
        if self.live is not None:
            holdout = "unknown" if self.holdout_metric is None else f"{self.holdout_metric:.4f}"
            lines.append(
                f"- live {self.metric}: {self.live.value:.4f} [{self.live.low:.4f}, "
                f"{self.live.high:.4f}] on {self.live.rows} labelled predictions; "
                f"holdout at promotion {holdout}"
            )
        lines.append(
            f"- labels read {self.labels_read}, for ids never predicted {self.labels_unmatched}"
        )
        lines += ["", "## Reasons to retrain", *(f"- {r}" for r in self.reasons or ["none"])]
        lines += ["", "## Notes", *(f"- {n}" for n in self.notes or ["none"])]
        return "\n".join(lines)


def score_drift(
    reference: np.ndarray, current: np.ndarray, policy: MonitorParams
) -> ScoreDrift | None:
    """PSI and KS of the production scores against the champion's holdout scores."""
    ref = np.sort(np.asarray(reference, dtype=float)[np.isfinite(reference)])
    cur = np.sort(np.asarray(current, dtype=float)[np.isfinite(current)])
    if len(ref) == 0 or len(cur) == 0:
        return None
    value = psi_numeric(ref, cur)
    d, p = ks_sorted(ref, cur)
    drifted = value > policy.score_psi_threshold or p < policy.score_ks_pvalue
    return ScoreDrift(value, d, p, bool(drifted), len(ref), len(cur))


def live_metric(
    metric: str, y: np.ndarray, scores: np.ndarray, threshold: float, policy: MonitorParams
) -> MetricEstimate:
    """The metric on labelled predictions with a percentile bootstrap interval at ``alpha``."""
    y, scores = np.asarray(y).astype(int), np.asarray(scores, dtype=float)
    value = metric_value(metric, y, scores, threshold)
    rng = np.random.default_rng(policy.seed)
    replicates = bootstrap_metric(metric, y, scores, threshold, policy.resamples, rng)
    replicates = replicates[np.isfinite(replicates)]
    if len(replicates) == 0:
        return MetricEstimate(metric, value, math.nan, math.nan, len(y))
    low, high = np.quantile(replicates, [policy.alpha / 2, 1 - policy.alpha / 2])
    return MetricEstimate(metric, value, float(low), float(high), len(y))


def bootstrap_metric(
    metric: str,
    y: np.ndarray,
    s: np.ndarray,
    threshold: float,
    resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Bootstrap replicates of ``metric``: Poisson row weights on per-row terms (ROC AUC by
    its DeLong placements, the losses and accuracy by their per-row values); F1 and PR AUC by
    resampling rows (at most ``CI_MAX_ROWS`` per resample, the spread rescaled to ``n``)."""
    p = np.clip(s, 1e-15, 1 - 1e-15)
    if metric == "roc_auc":
        if y.min() == y.max():
            return np.full(resamples, np.nan)
        v10, v01 = placements(y, s)
        return (
            _weighted_means(v10, rng, resamples) + _weighted_means(v01, rng, resamples) - v10.mean()
        )
    per_row = {
        "accuracy": lambda: ((p >= threshold).astype(int) == y).astype(float),
        "brier": lambda: (p - y) ** 2,
        "log_loss": lambda: -(y * np.log(p) + (1 - y) * np.log(1 - p)),
    }
    if metric in per_row:
        return _weighted_means(per_row[metric](), rng, resamples)
    n = len(y)
    size = min(n, CI_MAX_ROWS)
    out = np.empty(resamples)
    for i in range(resamples):
        pick = rng.integers(0, n, size)
        out[i] = metric_value(metric, y[pick], s[pick], threshold)
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
    metric: str, labelled: pd.DataFrame, threshold: float
) -> tuple[tuple[str, float, int], ...]:
    """The live metric per day of prediction, for days with enough labelled rows."""
    out = []
    days = labelled["time"].dt.strftime("%Y-%m-%d")
    for day, group in labelled.groupby(days):
        if len(group) >= MIN_DAY_ROWS:
            value = metric_value(
                metric, group["y"].to_numpy(), group["score"].to_numpy(), threshold
            )
            if math.isfinite(value):
                out.append((str(day), value, len(group)))
    return tuple(out)


def analyse_window(
    window: LogWindow,
    champion: ChampionReference | None,
    labelled: LabelledPredictions | None,
    data: DataParams,
    drift: DriftParams,
    policy: MonitorParams,
    metric: str,
    model_name: str,
    missing_versions: tuple[str, ...] = (),
) -> MonitorReport:
    """Everything the monitor measures over one window; odd input becomes notes, never raises."""
    notes = list(window.notes)
    reasons: list[str] = []
    versions = {str(k): int(v) for k, v in window.log["model_version"].value_counts().items()}
    for version in missing_versions:
        notes.append(
            f"the log holds {versions.get(version, 0)} predictions by {model_name} v{version}, "
            "which the registry no longer has: counted as production inputs only"
        )
    base: dict[str, Any] = dict(
        model_name=model_name,
        window_start=str(window.start),
        window_end=str(window.end),
        rows=window.rows,
        versions=versions,
        metric=metric,
    )
    if champion is None:
        notes.append(f"{model_name} has no champion: nothing to compare production with")
        return MonitorReport(champion_version=None, champion_rows=0, notes=tuple(notes), **base)
    mine = (window.log["model_version"].astype(str) == champion.version).to_numpy()
    others = window.rows - int(mine.sum())
    if others:
        notes.append(
            f"{others} predictions by other versions than the champion v{champion.version}"
        )
    feature_report: DriftReport | None = None
    scores: ScoreDrift | None = None
    if window.rows < policy.min_rows:
        notes.append(
            f"only {window.rows} predictions in the window (monitor.min_rows {policy.min_rows}): "
            "drift not judged"
        )
    else:
        feature_report = detect_drift(champion.training_rows, window.inputs, data, drift)
        if should_retrain(feature_report, drift):
            drifted = feature_report.drifted
            listed = ", ".join(f.feature for f in drifted)
            reasons.append(f"input drift in {len(drifted)} features: {listed}")
        if int(mine.sum()) >= policy.min_rows:
            scores = score_drift(
                champion.holdout_scores, window.log["score"].to_numpy()[mine], policy
            )
            if scores is not None and scores.drifted:
                reasons.append(
                    f"score distribution drifted: PSI {scores.psi:.3f}, KS p={scores.p_value:.2g}"
                )
        else:
            notes.append(f"only {int(mine.sum())} champion predictions: score drift not judged")
    live: MetricEstimate | None = None
    by_day: tuple[tuple[str, float, int], ...] = ()
    labels_read, unmatched = 0, 0
    if labelled is not None:
        notes.extend(labelled.notes)
        labels_read, unmatched = labelled.labels, labelled.unmatched
        frame = labelled.frame[labelled.frame["model_version"].astype(str) == champion.version]
        if len(frame) < policy.min_labelled_rows:
            notes.append(
                f"only {len(frame)} labelled champion predictions "
                f"(monitor.min_labelled_rows {policy.min_labelled_rows}): live metric not judged"
            )
        else:
            y, s = frame["y"].to_numpy(), frame["score"].to_numpy()
            live = live_metric(metric, y, s, champion.threshold, policy)
            by_day = metric_by_day(metric, frame, champion.threshold)
            reason = _metric_reason(live, champion.holdout_metric, policy)
            if reason:
                reasons.append(reason)
            if not math.isfinite(live.value):
                notes.append(f"live {metric} is undefined: the labelled rows hold one class")
    if champion.holdout_metric is None:
        notes.append(f"the champion's run has no holdout_{metric}: live drop not judged")
    return MonitorReport(
        champion_version=champion.version,
        champion_rows=int(mine.sum()),
        feature_drift=feature_report,
        score_drift=scores,
        live=live,
        holdout_metric=champion.holdout_metric,
        live_by_day=by_day,
        labels_read=labels_read,
        labels_unmatched=unmatched,
        reasons=tuple(reasons),
        notes=tuple(notes),
        **base,
    )


def _metric_reason(
    live: MetricEstimate, holdout: float | None, policy: MonitorParams
) -> str | None:
    """A drop beyond ``max_metric_drop`` whose interval's best end is still below holdout."""
    if holdout is None or not math.isfinite(live.value):
        return None
    drop = _worse_by(live.metric, live.value, holdout)
    best = live.high if HIGHER_IS_BETTER[live.metric] else live.low
    significant = math.isfinite(best) and _worse_by(live.metric, best, holdout) > 0
    if drop > policy.max_metric_drop and significant:
        return (
            f"live {live.metric} {live.value:.4f} [{live.low:.4f}, {live.high:.4f}] is "
            f"{drop:.4f} below its holdout {holdout:.4f} (monitor.max_metric_drop "
            f"{policy.max_metric_drop})"
        )
    return None


def _worse_by(metric: str, value: float, reference: float) -> float:
    return reference - value if HIGHER_IS_BETTER[metric] else value - reference


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


__all__ = [
    "ChampionReference",
    "MetricEstimate",
    "MonitorReport",
    "ScoreDrift",
    "analyse_window",
    "live_metric",
    "score_drift",
]
