"""Metrics by task type: what each task is scored on, in which direction, and how.

Scores are what a model answers for its task: binary, the probability of the positive class
(1-d); multiclass, one probability per class (n x k, labels encoded 0..k-1 in the model's class
order); regression, the predicted value (1-d). A metric undefined on the rows (one class
only) is NaN, never raised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

TaskType = Literal["binary", "multiclass", "regression"]
HIGHER_IS_BETTER = {
    "roc_auc": True,
    "pr_auc": True,
    "f1": True,
    "accuracy": True,
    "log_loss": False,
    "brier": False,
    "macro_f1": True,
    "weighted_f1": True,
    "rmse": False,
    "mae": False,
    "r2": True,
}
METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc", "f1", "accuracy", "log_loss", "brier"),
    "multiclass": ("macro_f1", "weighted_f1", "accuracy", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}
DEFAULT_PRIMARY: dict[str, str] = {
    "binary": "roc_auc",
    "multiclass": "log_loss",
    "regression": "rmse",
}


def check_metric(metric: str, task: str) -> None:
    """Raise ValueError naming the metrics that fit ``task`` when ``metric`` does not."""
    if metric not in METRICS[task]:
        raise ValueError(
            f"metric {metric!r} does not fit a {task} task; use one of {list(METRICS[task])}"
        )


def task_of(scores: np.ndarray, regression: bool = False) -> TaskType:
    if regression:
        return "regression"
    return "multiclass" if np.ndim(scores) == 2 else "binary"


def compute_metrics(
    y: np.ndarray,
    scores: np.ndarray,
    threshold: float = 0.5,
    task: TaskType | None = None,
    classes: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Every metric of the task (binary unless ``scores`` is 2-d), plus per-class recall for
    multiclass, named by class (``recall[barolo]``; by index without ``classes``)."""
    task = task or task_of(scores)
    out = {name: metric_value(name, y, scores, threshold, task) for name in METRICS[task]}
    if task == "multiclass":
        k = np.shape(scores)[1]
        names = [str(c) for c in classes] if classes is not None and len(classes) == k else None
        decided = np.argmax(scores, axis=1)
        for c in range(k):
            mask = np.asarray(y) == c
            name = names[c] if names else str(c)
            out[f"recall[{name}]"] = float(np.mean(decided[mask] == c)) if mask.any() else math.nan
    return out


def metric_value(
    metric: str,
    y: np.ndarray,
    scores: np.ndarray,
    threshold: float = 0.5,
    task: TaskType | None = None,
) -> float:
    """One metric; NaN when undefined on this data (one class only, fewer than two rows)."""
    from sklearn import metrics as skm

    task = task or task_of(scores)
    check_metric(metric, task)
    y = np.asarray(y)
    if task == "regression":
        pred = np.asarray(scores, dtype=float)
        if metric == "r2" and (len(y) < 2 or np.all(y == y[0])):
            return math.nan
        reg: dict[str, Callable[[], float]] = {
            "rmse": lambda: math.sqrt(skm.mean_squared_error(y, pred)),
            "mae": lambda: skm.mean_absolute_error(y, pred),
            "r2": lambda: skm.r2_score(y, pred),
        }
        return float(reg[metric]())
    if task == "multiclass":
        proba = np.clip(np.asarray(scores, dtype=float), 1e-15, 1.0)
        proba = proba / proba.sum(axis=1, keepdims=True)
        labels = list(range(proba.shape[1]))
        decided = np.argmax(proba, axis=1)
        multi: dict[str, Callable[[], float]] = {
            "accuracy": lambda: skm.accuracy_score(y, decided),
            "log_loss": lambda: skm.log_loss(y, proba, labels=labels),
            "macro_f1": lambda: skm.f1_score(
                y, decided, average="macro", labels=labels, zero_division=0.0
            ),
            "weighted_f1": lambda: skm.f1_score(
                y, decided, average="weighted", labels=labels, zero_division=0.0
            ),
        }
        return float(multi[metric]())
    p = np.clip(np.asarray(scores, dtype=float), 1e-15, 1 - 1e-15)
    decided = (p >= threshold).astype(int)
    fns: dict[str, Callable[[], float]] = {
        "roc_auc": lambda: skm.roc_auc_score(y, p),
        "pr_auc": lambda: skm.average_precision_score(y, p),
        "f1": lambda: skm.f1_score(y, decided, zero_division=0.0),
        "accuracy": lambda: skm.accuracy_score(y, decided),
        "log_loss": lambda: skm.log_loss(y, p, labels=[0, 1]),
        "brier": lambda: skm.brier_score_loss(y, p),
    }
    if len(np.unique(y)) < 2 and metric in {"roc_auc", "pr_auc"}:
        return math.nan
    return float(fns[metric]())


def better(metric: str, a: float, b: float) -> float:
    """How much ``a`` beats ``b`` on ``metric`` (positive is better, whatever the direction)."""
    return a - b if HIGHER_IS_BETTER[metric] else b - a


def decisions(scores: np.ndarray, threshold: float) -> np.ndarray:
    """What the model decides: the class over the threshold (binary) or the likeliest class."""
    if np.ndim(scores) == 2:
        return np.asarray(np.argmax(scores, axis=1))
    return (np.asarray(scores) >= threshold).astype(int)


def row_loss(y: np.ndarray, scores: np.ndarray, task: TaskType) -> np.ndarray:
    """Per-row loss on the truth: log loss (classification) or squared error (regression)."""
    if task == "regression":
        out: np.ndarray = (np.asarray(scores, dtype=float) - y) ** 2
        return out
    if task == "multiclass":
        p = np.clip(np.asarray(scores, dtype=float)[np.arange(len(y)), y.astype(int)], 1e-15, 1)
        out = -np.log(p)
        return out
    p = np.clip(np.asarray(scores, dtype=float), 1e-15, 1 - 1e-15)
    out = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return out


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` on its quantile bins."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:
        edges = np.linspace(
            min(expected.min(), actual.min()), max(expected.max(), actual.max()) + 1e-12, bins + 1
        )
    inner = edges[1:-1]
    e = np.bincount(np.searchsorted(inner, expected, side="right"), minlength=len(inner) + 1)
    a = np.bincount(np.searchsorted(inner, actual, side="right"), minlength=len(inner) + 1)
    return _psi_of_counts(e, a)


def category_psi(expected: np.ndarray, actual: np.ndarray, k: int) -> float:
    """PSI between the shares of ``k`` categories (e.g. the decided classes)."""
    return _psi_of_counts(
        np.bincount(expected.astype(int), minlength=k), np.bincount(actual.astype(int), minlength=k)
    )


def _psi_of_counts(e: np.ndarray, a: np.ndarray) -> float:
    pe = np.clip(e / e.sum(), 1e-6, None)
    pa = np.clip(a / a.sum(), 1e-6, None)
    return float(np.sum((pa - pe) * np.log(pa / pe)))
