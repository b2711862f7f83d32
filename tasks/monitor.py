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
from tasks.drift import DriftReport, detect_drift, should_retrain
from tasks.inference_log import LabelledPredictions, LogWindow
from tasks.metrics import HIGHER_IS_BETTER, TaskType
from tasks.monitor_metrics import (
    MetricEstimate,
    ScoreDrift,
    class_drift,
    live_metric,
    metric_by_day,
    score_drift,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


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
    task: TaskType = "binary"
    classes: tuple[str, ...] = ()  # classification: the model's classes, in its order
    # multiclass: the class probabilities on the holdout (holdout_scores: the decided one's)
    holdout_proba: np.ndarray | None = None
    model: Any = None  # multiclass: re-scores the logged records for the class probabilities


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
    task: str = "binary"

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
            what = {"regression": "prediction"}.get(self.task, "score")
            lines.append(
                f"- {what} distribution: {s.describe()} -> {'drifted' if s.drifted else 'stable'}"
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
    """Everything the monitor measures over one window; odd input becomes notes, never raises.

    The task is the champion's: binary and regression compare the logged scores (P(positive),
    the predicted value); multiclass re-scores the champion's logged records for the class
    probabilities the log does not keep (the serving app logs the decided class's only)."""
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
    if window.rows == 0:
        notes.append(
            f"empty window: no predictions by {model_name} between {window.start} and "
            f"{window.end}; nothing judged"
        )
    if champion is None:
        notes.append(f"{model_name} has no champion: nothing to compare production with")
        return MonitorReport(champion_version=None, champion_rows=0, notes=tuple(notes), **base)
    task = champion.task
    mine = (window.log["model_version"].astype(str) == champion.version).to_numpy()
    others = window.rows - int(mine.sum())
    if others:
        notes.append(
            f"{others} predictions by other versions than the champion v{champion.version}"
        )
    proba = None  # multiclass: class probabilities of the window's rows (NaN: not the champion)
    if task == "multiclass" and mine.any():
        proba, problem = rescore(champion, window, mine, data)
        if problem:
            notes.append(problem)
    feature_report: DriftReport | None = None
    scores: ScoreDrift | None = None
    if window.rows < policy.min_rows:
        if window.rows:
            notes.append(
                f"only {window.rows} predictions in the window (monitor.min_rows "
                f"{policy.min_rows}): drift not judged"
            )
    else:
        feature_report = detect_drift(champion.training_rows, window.inputs, data, drift)
        if should_retrain(feature_report, drift):
            drifted = feature_report.drifted
            listed = ", ".join(f.feature for f in drifted)
            reasons.append(f"input drift in {len(drifted)} features: {listed}")
        if int(mine.sum()) >= policy.min_rows:
            if task == "multiclass":
                if proba is not None and champion.holdout_proba is not None:
                    scores = class_drift(
                        champion.holdout_proba, proba[mine], champion.classes, policy
                    )
            else:
                scores = score_drift(
                    champion.holdout_scores, window.log["score"].to_numpy(float)[mine], policy
                )
            if scores is not None and scores.drifted:
                what = "prediction" if task == "regression" else "score"
                reasons.append(f"{what} distribution drifted: {scores.describe()}")
        else:
            notes.append(f"only {int(mine.sum())} champion predictions: score drift not judged")
    live: MetricEstimate | None = None
    by_day: tuple[tuple[str, float, int], ...] = ()
    labels_read, unmatched = 0, 0
    if labelled is not None:
        notes.extend(labelled.notes)
        labels_read, unmatched = labelled.labels, labelled.unmatched
        frame = labelled.frame[labelled.frame["model_version"].astype(str) == champion.version]
        if task == "multiclass":  # only rows the champion could re-score
            rows = frame["log_row"].to_numpy(dtype=int)
            ok = np.zeros(len(rows), bool) if proba is None else np.isfinite(proba[rows, 0])
            frame = frame[ok]
        if len(frame) < policy.min_labelled_rows:
            notes.append(
                f"only {len(frame)} labelled champion predictions "
                f"(monitor.min_labelled_rows {policy.min_labelled_rows}): live metric not judged"
            )
        else:
            y = frame["y"].to_numpy()
            if task == "multiclass":
                assert proba is not None
                s = proba[frame["log_row"].to_numpy(dtype=int)]
            else:
                s = frame["score"].to_numpy(dtype=float)
            live = live_metric(metric, y, s, champion.threshold, policy, task)
            by_day = metric_by_day(metric, frame, s, champion.threshold, task)
            reason = _metric_reason(live, champion.holdout_metric, policy)
            if reason:
                reasons.append(reason)
            if not math.isfinite(live.value):
                notes.append(f"live {metric} is undefined on these labelled rows (one class?)")
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
        task=task,
        **base,
    )


def rescore(
    champion: ChampionReference, window: LogWindow, mine: np.ndarray, data: DataParams
) -> tuple[np.ndarray | None, str | None]:
    """The champion's class probabilities for its logged records (rows of the window; NaN
    for other versions' rows), or None and why the records cannot be scored."""
    if champion.model is None:
        return None, "no champion model to re-score the logged records: class drift not judged"
    missing = sorted(set(data.features) - set(window.inputs.columns))
    if missing:
        return None, f"the logged records lack features {missing}: class drift not judged"
    try:
        scored = np.asarray(
            champion.model.predict_proba(window.inputs.loc[mine, data.features]), dtype=float
        )
    except (ValueError, TypeError, KeyError) as exc:
        return None, (
            f"the champion cannot re-score its logged records ({type(exc).__name__}: {exc}): "
            "class drift and live metric not judged"
        )
    proba = np.full((window.rows, scored.shape[1]), np.nan)
    proba[mine] = scored
    return proba, None


SCALED = frozenset({"rmse", "mae"})  # in the label's units: the drop is judged relative


def _metric_reason(
    live: MetricEstimate, holdout: float | None, policy: MonitorParams
) -> str | None:
    """A drop beyond ``max_metric_drop`` whose interval's best end is still worse than
    holdout. For RMSE and MAE, in the label's units, the drop is a share of the holdout value
    (0.05: 5 % worse); for the other metrics it is in the metric's own units."""
    if holdout is None or not math.isfinite(live.value):
        return None
    drop = _worse_by(live.metric, live.value, holdout)
    best = live.high if HIGHER_IS_BETTER[live.metric] else live.low
    significant = math.isfinite(best) and _worse_by(live.metric, best, holdout) > 0
    relative = live.metric in SCALED
    limit = policy.max_metric_drop * (abs(holdout) if relative else 1.0)
    if drop > limit and significant:
        side = "below" if HIGHER_IS_BETTER[live.metric] else "above"
        share = f" ({drop / abs(holdout):.1%})" if relative and holdout else ""
        of = " of the holdout value" if relative else ""
        return (
            f"live {live.metric} {live.value:.4f} [{live.low:.4f}, {live.high:.4f}] is "
            f"{drop:.4f}{share} {side} its holdout {holdout:.4f} (monitor.max_metric_drop "
            f"{policy.max_metric_drop}{of})"
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


__all__ = [  # the measures live in tasks.monitor_metrics, re-exported for callers of old
    "ChampionReference",
    "MetricEstimate",
    "MonitorReport",
    "ScoreDrift",
    "analyse_window",
    "live_metric",
    "rescore",
    "score_drift",
]
