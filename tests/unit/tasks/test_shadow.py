"""Shadow replay: a candidate that flips production decisions is rejected, whatever its holdout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.data import make_batch, split_holdout
from tasks.evaluate import compare
from tasks.gates.shadow import ShadowRule
from tasks.inference_log import join_labels, read_recent
from tasks.metrics import metric_value
from tasks.shadow import production_batch_sizes, replay
from tasks.train import train_model
from tests.helpers import small_params
from tests.unit.tasks.test_inference_log import T0, write_log

RULE = ShadowRule()


class Shifted:
    """A model whose scores are moved on the logit scale: same ranking, other decisions."""

    def __init__(self, model, shift: float) -> None:
        self.model, self.shift = model, shift

    def predict_proba(self, X):
        p = np.clip(self.model.predict_proba(X)[:, 1], 1e-9, 1 - 1e-9)
        q = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + self.shift)))
        return np.column_stack([1 - q, q])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shadow")
    params = small_params(folder, train={"hyperparameters": {"n_estimators": 5, "verbose": -1}})
    strong = small_params(
        folder / "strong", train={"hyperparameters": {"n_estimators": 60, "verbose": -1}}
    )
    train, holdout = split_holdout(make_batch(1, 8_000), params.data)
    champion = train_model(train.head(600), params)  # weak: few rows, few trees
    better = train_model(train, strong)
    production = make_batch(2, 1_500, seed=9)
    scores = champion.predict_proba(production)[:, 1]
    records = production[[*params.data.features, params.data.id_column]].to_dict("records")
    url = folder / "log"
    write_log(url, records[:900], scores[:900], T0.timestamp(), version="1", batch=1)
    write_log(url, records[900:], scores[900:], T0.timestamp() + 60, "1", batch=30, rid="b")
    return params, champion, better, holdout, production, url


def test_a_candidate_better_on_holdout_but_flipping_production_decisions_is_rejected(setup):
    params, champion, better, holdout, _, url = setup
    candidate = Shifted(better, 2.5)
    y = holdout[params.data.label].to_numpy()
    cand_auc = metric_value("roc_auc", y, candidate.predict_proba(holdout)[:, 1], 0.5)
    champ_auc = metric_value("roc_auc", y, champion.predict_proba(holdout)[:, 1], 0.5)
    assert cand_auc > champ_auc + 0.01  # better on the holdout the promotion gates look at

    window = read_recent(str(url), RULE.rows, "1")
    assert window.rows == 1_500
    report = replay(candidate, window, None, params.data.features, RULE, "roc_auc", 0.5)
    assert not report.passed
    flips = next(c for c in report.checks if c.name == "shadow_flip_rate")
    assert flips.status == "failed" and report.flip_rate > 0.1
    assert set(report.p95_ms) == {1, 30}
    paired = next(c for c in report.checks if c.name == "shadow_paired_metric")
    assert paired.status == "skipped" and "no labelled" in paired.reason

    same = replay(better, window, None, params.data.features, RULE, "roc_auc", 0.5)
    assert same.flip_rate < report.flip_rate


def test_paired_comparison_on_labelled_production_requests(setup):
    params, _, better, _, production, url = setup
    window = read_recent(str(url), 5_000, "1")
    by_id = dict(zip(window.log["prediction_id"], range(window.rows), strict=True))
    order = np.array([by_id[f"r{i}"] for i in range(900)])
    labels = pd.DataFrame(
        {
            "id": window.log["prediction_id"].to_numpy()[order],
            "label": production[params.data.label].to_numpy()[:900],
            "time": T0,
        }
    )
    labelled = join_labels(window, labels, "prediction_id")
    policy = RULE.model_copy(update={"max_flip_rate": None})
    worse = replay(
        _Noise(),  # scores unrelated to the outcome
        window,
        labelled,
        params.data.features,
        policy,
        "roc_auc",
        0.5,
    )
    paired = next(c for c in worse.checks if c.name == "shadow_paired_metric")
    assert paired.status == "failed" and worse.gain_high < 0 and worse.labelled_rows == 900
    good = replay(better, window, labelled, params.data.features, policy, "roc_auc", 0.5)
    paired = next(c for c in good.checks if c.name == "shadow_paired_metric")
    assert paired.status == "passed" and good.gain_low <= good.gain <= good.gain_high


class _Noise:
    def predict_proba(self, X):
        p = np.random.default_rng(0).uniform(0, 1, len(X))
        return np.column_stack([1 - p, p])


def test_too_few_logged_requests_skip_the_gate_and_say_so(setup, tmp_path):
    params, _, better, _, _, url = setup
    window = read_recent(str(url), 100, "1")
    report = replay(better, window, None, params.data.features, RULE, "roc_auc", 0.5)
    assert report.skipped and report.passed
    assert "only 100 logged production predictions" in report.checks[0].reason
    empty = read_recent(str(tmp_path / "none"), 100)
    assert replay(better, empty, None, params.data.features, RULE, "roc_auc", 0.5).skipped


def test_records_lacking_features_fail_the_gate_with_the_cause(setup):
    params, _, better, _, _, url = setup
    window = read_recent(str(url), 1_000, "1")
    cut = window.__class__(
        window.start, window.end, window.log, window.inputs.drop(columns=["age"]), window.files
    )
    report = replay(better, cut, None, params.data.features, RULE, "roc_auc", 0.5)
    assert not report.passed and "lack features ['age']" in report.failed[0].reason


def test_production_batch_sizes_are_those_sent():
    log = pd.DataFrame(
        {"request_id": ["a", "b", "b", "c", "c", "c"], "batch_size": [1, 2, 2, 3, 3, 3]}
    )
    assert production_batch_sizes(log) == [1, 2, 3]


def test_the_shadow_gate_rejects_in_compare_what_the_holdout_gates_promote(setup):
    params, champion, better, holdout, _, url = setup
    candidate = Shifted(better, 2.5)
    raw = params.gates.model_dump()
    off = {"enabled": False}
    raw.update(latency=off, model_size=off, predict_memory=off, fairness=off, prediction_parity=off)
    policy = type(params.gates).model_validate(raw)
    without = compare(candidate, champion, holdout, policy, params.data)
    assert without.gate("shadow").status == "skipped"  # no log configured: says so
    assert "only 0 logged" in without.gate("shadow").reason
    assert "no inference log files" in without.gate("shadow").reason
    assert without.decision == "promote", [(g.name, g.reason) for g in without.failed]

    raw["shadow"] = {"log_url": str(url), "min_rows": 500}
    report = compare(
        candidate, champion, holdout, type(params.gates).model_validate(raw), params.data
    )
    assert report.decision == "reject"
    failed = {g.name for g in report.failed}
    assert "shadow_flip_rate" in failed and all(n.startswith("shadow_") for n in failed)
    assert report.gate("no_regression").status == "passed"
    assert "decisions flipped" in report.gate("shadow_flip_rate").reason


def test_the_shadow_gate_replays_only_its_own_models_records(setup):
    """The inference log is shared by every model of the installation: another model's
    traffic is not this model's production."""
    params, champion, better, holdout, _, url = setup
    raw = params.gates.model_dump()
    off = {"enabled": False}
    raw.update(latency=off, model_size=off, predict_memory=off, fairness=off, prediction_parity=off)
    raw["shadow"] = {"log_url": str(url), "min_rows": 500, "model_name": "another-model"}
    policy = type(params.gates).model_validate(raw)
    report = compare(Shifted(better, 2.5), champion, holdout, policy, params.data)
    assert report.gate("shadow").status == "skipped"
    assert "only 0 logged" in report.gate("shadow").reason


def test_params_load_points_the_shadow_gate_at_its_own_model(tmp_path):
    params = small_params(tmp_path, registry={"model_name": "wine"})
    assert params.gates.rule("shadow").model_name == "wine"


def _sklearn_frames(kind):
    from sklearn.datasets import load_diabetes, load_wine

    if kind == "multiclass":
        data = load_wine(as_frame=True)
        frame = data.frame.rename(columns={"target": "y"})
        frame["y"] = frame["y"].map(dict(enumerate(["barolo", "grignolino", "barbera"])))
    else:
        frame = load_diabetes(as_frame=True).frame.rename(columns={"target": "y"})
    features = [c for c in frame.columns if c != "y"]
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True), features


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_shadow_replays_multiclass_decisions_and_regression_predictions(tmp_path, task):
    """No longer skipped for tasks other than binary: a candidate that changes production's
    decided classes (multiclass) or predictions (regression) is rejected."""
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame, features = _sklearn_frames(task)
    X, y = frame[features], frame["y"]
    if task == "multiclass":
        champion = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
        drifting = DummyClassifier(strategy="constant", constant="barbera").fit(X, y)
        scores = champion.predict_proba(X).max(axis=1)
    else:
        champion = LinearRegression().fit(X, y)
        drifting = DummyRegressor(strategy="constant", constant=float(y.max())).fit(X, y)
        scores = champion.predict(X)
    rule = ShadowRule(min_rows=50, min_labelled_rows=50)
    write_log(tmp_path / "log", X.to_dict("records"), scores, T0.timestamp(), version="1")
    window = read_recent(str(tmp_path / "log"), rule.rows, "1")
    metric = "log_loss" if task == "multiclass" else "rmse"
    labels = pd.DataFrame({"id": window.log["prediction_id"], "label": y.to_numpy(), "time": T0})
    classes = getattr(champion, "classes_", None)
    labelled = join_labels(window, labels, "prediction_id", task, classes)
    assert len(labelled.frame) == len(frame)

    same = replay(
        champion, window, labelled, features, rule, metric, 0.5, 200, 0.05, 0, task, champion
    )
    assert same.passed, same.checks
    assert same.score_psi == pytest.approx(0.0, abs=1e-6)
    bad = replay(
        drifting, window, labelled, features, rule, metric, 0.5, 200, 0.05, 0, task, champion
    )
    failed = {c.name for c in bad.failed}
    assert "shadow_score_psi" in failed and "shadow_paired_metric" in failed
    if task == "multiclass":
        assert "shadow_flip_rate" in failed and bad.flip_rate > 0.5
    else:
        assert bad.flip_rate is None and any("predictions change" in n for n in bad.notes)
