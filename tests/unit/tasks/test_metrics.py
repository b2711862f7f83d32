"""Metrics and the paired bootstrap per task type, against plain row resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.metrics import HIGHER_IS_BETTER, METRICS, check_metric, compute_metrics, metric_value
from tasks.resampling import bootstrap_gain, bootstrap_gains


def multiclass(n=2_000, k=3, seed=5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)

    def model(strength):
        logits = rng.normal(0, 1, (n, k)) + strength * np.eye(k)[y]
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    return y, model(2.0), model(1.2)


def regression(n=2_000, seed=5):
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 3, n)
    return y, y + rng.normal(0, 1.0, n), y + rng.normal(0.3, 1.4, n)


def test_each_task_reports_its_metrics():
    y, a, _ = multiclass()
    m = compute_metrics(y, a, task="multiclass")
    assert set(METRICS["multiclass"]) | {"recall[0]", "recall[1]", "recall[2]"} == set(m)
    yr, ar, _ = regression()
    r = compute_metrics(yr, ar, task="regression")
    assert set(r) == {"rmse", "mae", "r2"} and 0.8 < r["rmse"] < 1.2 and r["r2"] > 0.8
    assert math.isnan(metric_value("r2", np.ones(3), np.ones(3), task="regression"))


def test_a_metric_that_does_not_fit_the_task_is_refused():
    with pytest.raises(ValueError, match="regression"):
        check_metric("roc_auc", "regression")


@pytest.mark.parametrize(
    ("task", "metric"),
    [
        ("multiclass", "log_loss"),
        ("multiclass", "accuracy"),
        ("multiclass", "macro_f1"),
        ("multiclass", "weighted_f1"),
        ("regression", "rmse"),
        ("regression", "mae"),
        ("regression", "r2"),
    ],
)
def test_fast_bootstrap_matches_a_plain_row_bootstrap(task, metric):
    y, a, b = multiclass() if task == "multiclass" else regression()
    fast = bootstrap_gain(metric, y, a, b, 0.5, 2000, seed=1, regression=task == "regression")
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    rng = np.random.default_rng(9)
    slow = []
    for _ in range(300):
        idx = rng.integers(0, len(y), len(y))
        ma = metric_value(metric, y[idx], a[idx], 0.5, task)
        mb = metric_value(metric, y[idx], b[idx], 0.5, task)
        slow.append(sign * (ma - mb))
    assert np.mean(fast) > 0  # a is the better model
    assert np.mean(fast) == pytest.approx(np.mean(slow), abs=0.25 * np.std(slow))
    assert np.std(fast) == pytest.approx(np.std(slow), rel=0.2)


@pytest.mark.parametrize("metric", ["roc_auc", "log_loss", "brier", "accuracy", "f1", "pr_auc"])
@pytest.mark.parametrize("rows", [3_000, 30_000])
def test_gains_of_several_candidates_are_each_what_its_own_bootstrap_gives(metric, rows):
    """The significance gate bootstraps the candidate and a perfect model in one pass; sharing
    the resampling draws must not change either one's replicates."""
    rng = np.random.default_rng(3)
    y = (rng.random(rows) < 0.3).astype(int)
    champ = np.clip(0.25 * y + rng.random(rows) * 0.75, 0, 1)
    cands = [np.clip(0.3 * y + rng.random(rows) * 0.7, 0, 1), y.astype(float)]
    together = bootstrap_gains(metric, y, cands, champ, 0.5, 300, seed=4)
    alone = [bootstrap_gain(metric, y, c, champ, 0.5, 300, seed=4) for c in cands]
    assert len(together) == 2
    for shared, own in zip(together, alone, strict=True):
        np.testing.assert_array_equal(shared, own)
    assert np.mean(together[1]) > np.mean(together[0]) > 0  # the perfect model gains most


def test_multiclass_recall_is_named_by_class():
    from tasks.evaluate import _metric_key

    y = np.array([0, 1, 2, 2])
    scores = np.eye(3)[[0, 1, 2, 1]]
    m = compute_metrics(y, scores, task="multiclass", classes=["barolo", "grignolino", "barbera"])
    assert m["recall[barolo]"] == 1.0 and m["recall[barbera]"] == 0.5
    assert "recall[0]" not in m
    assert _metric_key("recall[pinot noir/rosé]") == "recall_pinot noir/ros_"
