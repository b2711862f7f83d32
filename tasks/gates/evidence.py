"""The shared evidence every gate reads: both models' scores on the same rows, the labels,
their metrics, and measurements taken once on demand (timings). Built once per comparison."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tasks.gates.timing import time_calls
from tasks.metrics import TaskType, compute_metrics
from tasks.reports import EvaluationError

if TYPE_CHECKING:
    import pandas as pd

    from tasks.config import DataParams, GateParams


class Scorer(Protocol):
    def predict_proba(self, X: pd.DataFrame) -> np.ndarray: ...


def predict(model: Any, X: pd.DataFrame, task: TaskType) -> np.ndarray:
    """What the model answers for its task: P(positive), class probabilities, or values."""
    if task == "regression":
        return np.asarray(model.predict(X), dtype=float)
    if not hasattr(model, "predict_proba"):
        raise EvaluationError(
            f"{type(model).__name__} has no predict_proba: a {task} task needs probabilities"
        )
    proba = np.asarray(model.predict_proba(X), dtype=float)
    if task == "binary" and proba.ndim == 2:
        if proba.shape[1] != 2:
            raise EvaluationError(f"a binary model must give 2 columns, got {proba.shape[1]}")
        return proba[:, 1]
    return proba


def score(model: Any, holdout: pd.DataFrame, who: str, task: TaskType = "binary") -> np.ndarray:
    """The model's scores on ``holdout``; any failure is an EvaluationError naming the model."""
    try:
        scores = predict(model, holdout, task)
    except EvaluationError:
        raise
    except Exception as exc:  # any model failure must name the model, not pass silently
        raise EvaluationError(
            f"the {who} cannot score this data ({type(exc).__name__}: {exc})"
        ) from exc
    if len(scores) != len(holdout) or not np.all(np.isfinite(scores)):
        raise EvaluationError(f"the {who} returned {len(scores)} scores, some not finite")
    return scores


def encode_labels(raw: np.ndarray, model: Any, task: TaskType) -> np.ndarray:
    """Labels as the scores index them: 0/1 (binary), 0..k-1 in the model's class order."""
    if task == "regression":
        return np.asarray(raw, dtype=float)
    classes = getattr(model, "classes_", None)
    if classes is None:
        return np.asarray(raw).astype(int)
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in raw if v not in index})
    if unknown:
        raise EvaluationError(
            f"holdout labels {unknown[:5]} are not classes of the model {classes}"
        )
    return np.array([index[v] for v in raw], dtype=int)


def check_holdout(holdout: pd.DataFrame, data: DataParams) -> None:
    missing = sorted(set([*data.features, data.label]) - set(holdout.columns))
    if missing:
        raise EvaluationError(f"holdout lacks columns {missing}: cannot score or gate")
    if holdout.empty:
        raise EvaluationError("holdout is empty: nothing to score")


def schema_change(model: Any, holdout: pd.DataFrame) -> list[str]:
    """Columns the model was fit on that the holdout no longer has (empty if unknown)."""
    names = getattr(model, "feature_names_in_", None)
    return sorted(set(map(str, names)) - set(holdout.columns)) if names is not None else []


@dataclass
class Evidence:
    """Computed once by ``compare`` and handed to every gate.

    ``champion`` / ``champion_scores`` are None when there is no champion to compare with;
    ``champion_problem`` says why when one exists but cannot score (a schema change).
    Gates put what the plots need in ``artifacts`` and what a reader must know first in
    ``notes``."""

    task: TaskType
    policy: GateParams
    data: DataParams
    holdout: pd.DataFrame
    y: np.ndarray
    candidate: Any
    champion: Any | None
    candidate_scores: np.ndarray
    champion_scores: np.ndarray | None
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    force: bool = False
    champion_problem: str | None = None
    retrain: Callable[[], Any] | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def primary_metric(self) -> str:
        return self.policy.primary_metric

    @property
    def threshold(self) -> float:
        return self.policy.threshold

    @property
    def bootstrap_gains(self) -> np.ndarray | None:
        gains: np.ndarray | None = self.artifacts.get("bootstrap_gains")
        return gains

    @property
    def slices(self) -> dict[str, Any]:
        slices: dict[str, Any] = self.artifacts.get("slices", {})
        return slices

    def batch(self, rows: int) -> pd.DataFrame:
        return self.holdout.head(rows)

    def once(self, key: str, measure: Callable[[], Any]) -> Any:
        """A measurement shared by gates, taken the first time one asks for it."""
        if key not in self._cache:
            self._cache[key] = measure()
        return self._cache[key]

    def predict(self, model: Any, X: pd.DataFrame) -> np.ndarray:
        return predict(model, X, self.task)


def build_evidence(
    candidate: Any,
    champion: Any | None,
    holdout: pd.DataFrame,
    policy: GateParams,
    data: DataParams,
    task: TaskType,
    force: bool = False,
    retrain: Callable[[], Any] | None = None,
    scorer: Callable[[Any, str], np.ndarray] | None = None,
) -> Evidence:
    """Score both models on the same rows. A champion that lacks columns it was trained on
    is a schema change (judged by the ``champion_scoring`` gate); any other failure to
    score it is an EvaluationError: not a decision, the run fails and can be rerun.

    ``scorer(model, who)`` scores ``holdout``'s rows elsewhere (the Dask engine's workers);
    by default the models score them here."""
    check_holdout(holdout, data)

    def scored(model: Any, who: str) -> np.ndarray:
        if scorer is None:
            return score(model, holdout, who, task)
        scores = scorer(model, who)
        if len(scores) != len(holdout):
            raise EvaluationError(
                f"the {who} returned {len(scores)} scores for {len(holdout)} holdout rows"
            )
        return scores

    y = encode_labels(holdout[data.label].to_numpy(), candidate, task)
    cand_s = scored(candidate, "candidate")
    classes = getattr(candidate, "classes_", None)  # multiclass recall named by class
    cand = compute_metrics(y, cand_s, policy.threshold, task, classes)
    champ_s, champ, problem = None, None, None
    if champion is not None:
        dropped = schema_change(champion, holdout)
        try:
            champ_s = scored(champion, "champion")
            champ = compute_metrics(y, champ_s, policy.threshold, task, classes)
        except EvaluationError as exc:
            if not dropped:
                raise
            problem = (
                f"schema change: the champion needs {dropped}, which the data no longer has ({exc})"
            )
            champ_s, champ = None, None
    return Evidence(
        task,
        policy,
        data,
        holdout,
        y,
        candidate,
        champion if champ_s is not None else None,
        cand_s,
        champ_s,
        cand,
        champ,
        force,
        problem,
        retrain,
    )


def measure_latency(
    candidate: Any,
    champion: Any | None,
    batch: pd.DataFrame,
    repeats: int,
    warmup: int,
    task: TaskType = "binary",
) -> tuple[float, float | None]:
    """p95 seconds of one prediction call on ``batch``, both models interleaved after warm-up
    (see :mod:`tasks.gates.timing`: the time spent waiting for a CPU is not counted)."""
    models = [candidate] if champion is None else [candidate, champion]
    timings = time_calls(
        [functools.partial(predict, m, batch, task) for m in models], repeats, warmup
    )
    p95 = [timings.quantile(k, 95) for k in range(len(models))]
    return p95[0], (p95[1] if champion is not None else None)
