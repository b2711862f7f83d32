import math

import numpy as np
import pytest

from tasks.data import make_batch, split_holdout
from tasks.evaluate import EvaluationError, compare, compute_metrics
from tasks.train import train_model
from tests.helpers import small_params


class Fixed:
    """A model that returns given scores, to gate exact situations."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=float)

    def predict_proba(self, X):
        return np.column_stack([1 - self.scores, self.scores])


class Broken:
    def predict_proba(self, X):
        raise ValueError("columns changed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    params = small_params(tmp_path_factory.mktemp("evaluate"))
    train, holdout = split_holdout(make_batch(1, 8_000), params.data)
    return params, train_model(train, params), holdout


def test_no_champion_promotes_when_minimums_pass(setup):
    params, model, holdout = setup
    report = compare(model, None, holdout, params.gates, params.data)
    assert report.decision == "promote"
    statuses = {g.name: g.status for g in report.gates}
    assert statuses == {
        "minimum_roc_auc": "passed",
        "no_regression": "skipped",
        "improvement": "skipped",
    }


def test_a_tie_never_promotes(setup):
    params, model, holdout = setup
    report = compare(model, model, holdout, params.gates, params.data)
    assert report.decision == "reject"
    assert [g.name for g in report.failed] == ["improvement"]


def test_worse_candidate_is_rejected_and_better_promoted(setup):
    params, _model, holdout = setup
    y = holdout["churned"].to_numpy()
    good = Fixed(np.where(y == 1, 0.7, 0.3) + np.random.default_rng(0).normal(0, 0.25, len(y)))
    noise = Fixed(np.random.default_rng(1).random(len(y)))
    assert compare(noise, good, holdout, params.gates, params.data).decision == "reject"
    report = compare(good, noise, holdout, params.gates, params.data)
    assert report.decision == "promote"
    assert report.candidate_primary > report.champion_primary


def test_minimum_failure_names_metric_and_threshold(setup):
    params, _, holdout = setup
    noise = Fixed(np.random.default_rng(2).random(len(holdout)))
    report = compare(noise, None, holdout, params.gates, params.data)
    assert report.decision == "reject"
    gate = report.failed[0]
    assert gate.name == "minimum_roc_auc" and gate.threshold == 0.70
    assert "roc_auc" in gate.reason


def test_champion_that_cannot_score_is_a_failed_gate(setup):
    params, model, holdout = setup
    report = compare(model, Broken(), holdout, params.gates, params.data)
    assert report.decision == "reject"
    assert any(
        g.name == "champion_scoring" and "columns changed" in g.reason for g in report.failed
    )


def test_holdout_without_label_is_an_error(setup):
    params, model, holdout = setup
    with pytest.raises(EvaluationError, match="churned"):
        compare(model, None, holdout.drop(columns=["churned"]), params.gates, params.data)


def test_one_class_holdout_fails_instead_of_passing_silently(setup):
    params, model, holdout = setup
    one_class = holdout[holdout["churned"] == 0]
    report = compare(model, None, one_class, params.gates, params.data)
    assert report.decision == "reject"
    assert "undefined" in report.failed[0].reason


@pytest.mark.parametrize("metric", ["log_loss", "brier"])
def test_lower_is_better_metrics_as_primary(tmp_path, setup, metric):
    _, _model, holdout = setup
    params = small_params(tmp_path, gates={"primary_metric": metric, "minimums": {metric: 0.6}})
    y = holdout["churned"].to_numpy()
    sharp = Fixed(np.where(y == 1, 0.9, 0.1))
    vague = Fixed(np.full(len(y), 0.5))
    assert compare(sharp, vague, holdout, params.gates, params.data).decision == "promote"
    assert compare(vague, sharp, holdout, params.gates, params.data).decision == "reject"


def test_metrics_are_nan_only_when_undefined():
    m = compute_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert m["roc_auc"] == 1.0 and m["accuracy"] == 1.0
    assert math.isnan(compute_metrics(np.zeros(4), np.full(4, 0.3))["roc_auc"])


def test_report_markdown_lists_every_gate(setup):
    params, model, holdout = setup
    md = compare(model, model, holdout, params.gates, params.data).to_markdown()
    for name in ("minimum_roc_auc", "no_regression", "improvement"):
        assert name in md
