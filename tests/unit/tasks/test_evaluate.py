"""Every gate on models and data made to pass it and to fail it."""

import math
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tasks.data import make_batch, split_holdout
from tasks.evaluate import (
    EvaluationError,
    bootstrap_gain,
    compare,
    compute_metrics,
    metric_value,
    psi,
    reproducibility_gate,
)
from tasks.train import train_model
from tests.helpers import small_params


class Fixed:
    """A model that returns given scores, to gate exact situations."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=float)

    def predict_proba(self, X):
        s = self.scores[: len(X)]
        return np.column_stack([1 - s, s])


class Jittered:
    """The champion plus a little noise on its scores."""

    def __init__(self, model, scale, seed=0):
        self.model, self.scale, self.seed = model, scale, seed

    def predict_proba(self, X):
        p = self.model.predict_proba(X)[:, 1]
        noisy = np.clip(p + np.random.default_rng(self.seed).normal(0, self.scale, len(p)), 0, 1)
        return np.column_stack([1 - noisy, noisy])


class Slow:
    """``factor`` times slower, and at least 30 ms slower: above the latency gate's floor."""

    def __init__(self, model, factor):
        self.model, self.factor = model, factor

    def predict_proba(self, X):
        started = time.perf_counter()
        out = self.model.predict_proba(X)
        time.sleep(max((self.factor - 1) * (time.perf_counter() - started), 0.03))
        return out


class Biased:
    """Pushes scores up for one slice of the sensitive column."""

    def __init__(self, model, column, value, shift):
        self.model, self.column, self.value, self.shift = model, column, value, shift

    def predict_proba(self, X):
        p = self.model.predict_proba(X)[:, 1]
        p = np.clip(p + self.shift * (X[self.column].to_numpy() == self.value), 0, 1)
        return np.column_stack([1 - p, p])


class Broken:
    def predict_proba(self, X):
        raise ValueError("columns changed")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A champion trained on little data, a clearly better one trained on much more."""
    params = small_params(tmp_path_factory.mktemp("evaluate"))
    small, _ = split_holdout(make_batch(1, 10_000), params.data)
    big, _ = split_holdout(make_batch(2, 60_000), params.data)
    _, holdout = split_holdout(make_batch(3, 30_000), params.data)
    champion = train_model(small, params)
    better = train_model(big, params)
    return params, champion, better, holdout


def gates_of(report):
    return {g.name: g.status for g in report.gates}


def test_no_champion_promotes_when_absolute_gates_pass(world):
    params, champion, _, holdout = world
    report = compare(champion, None, holdout, params.gates, params.data)
    assert report.decision == "promote"
    status = gates_of(report)
    assert status["minimum_roc_auc"] == "passed"
    for name in ("no_regression", "significance", "gap_widening", "prediction_parity"):
        assert status[name] == "skipped"


def test_a_clearly_better_model_is_promoted_with_a_confident_gain(world):
    params, champion, better, holdout = world
    report = compare(better, champion, holdout, params.gates, params.data)
    assert report.decision == "promote", report.to_markdown()
    gate = report.gate("significance")
    assert gate.status == "passed" and "CI [+" in gate.reason
    assert report.evidence.bootstrap_gains.shape == (params.gates.significance.resamples,)


@pytest.mark.parametrize("scale", [0.0, 0.002, 0.01])
def test_champion_plus_noise_is_never_promoted(world, scale):
    params, champion, _, holdout = world
    report = compare(Jittered(champion, scale), champion, holdout, params.gates, params.data)
    assert report.decision == "reject"
    assert gates_of(report)["significance"] == "failed"


def test_a_model_without_a_key_feature_regresses(world, tmp_path):
    params, _, better, holdout = world
    weak_params = small_params(
        tmp_path,
        data={
            "categorical_features": ["payment_method", "internet_service", "region", "plan_tier"]
        },
    )  # no contract: the strongest feature
    train, _ = split_holdout(make_batch(2, 60_000), params.data)
    weak = train_model(train, weak_params)
    report = compare(weak, better, holdout, params.gates, params.data)
    assert report.decision == "reject"
    assert gates_of(report)["no_regression"] == "failed"
    assert gates_of(report)["significance"] == "failed"


def test_three_times_slower_is_rejected_even_when_more_accurate(world):
    params, champion, better, holdout = world
    report = compare(Slow(better, 5.0), champion, holdout, params.gates, params.data)
    assert report.decision == "reject"
    latency = report.gate("latency")
    assert latency.status == "failed" and "x the champion" in latency.reason
    assert gates_of(report)["significance"] == "passed"


def test_latency_budget_in_milliseconds(world, tmp_path):
    params, champion, _, holdout = world
    tight = small_params(tmp_path, gates={"latency": {"max_p95_ms": 0.001}})
    report = compare(champion, None, holdout, tight.gates, params.data)
    assert report.gate("latency").status == "failed"
    assert "budget" in report.gate("latency").reason


def test_size_and_memory_budgets(world, tmp_path):
    params, champion, _, holdout = world
    tight = small_params(
        tmp_path,
        gates={"model_size": {"max_bytes": 1000}, "predict_memory": {"max_peak_bytes": 10}},
    )
    report = compare(champion, None, holdout, tight.gates, params.data)
    assert gates_of(report)["model_size"] == "failed"
    assert gates_of(report)["predict_memory"] == "failed"
    assert report.gate("model_size").candidate > 1000
    assert (
        compare(champion, None, holdout, params.gates, params.data).gate("model_size").status
        == "passed"
    )


def test_a_model_biased_on_a_slice_is_rejected(world):
    params, champion, better, holdout = world
    biased = Biased(better, "gender", "nonbinary", 0.6)
    report = compare(biased, champion, holdout, params.gates, params.data)
    assert report.decision == "reject"
    status = gates_of(report)
    assert status["demographic_parity"] == "failed"
    assert status["gap_widening"] == "failed"
    assert "gender" in report.gate("demographic_parity").reason


def test_slice_gap_names_the_slices(world, tmp_path):
    params, _, better, holdout = world
    strict = small_params(tmp_path, gates={"fairness": {"max_slice_gap": 0.001}})
    gate = compare(better, None, holdout, strict.gates, params.data).gate("slice_gap")
    assert gate.status == "failed" and " vs " in gate.reason


def test_prediction_parity_bounds_flips_and_psi(world, tmp_path):
    params, champion, better, holdout = world
    flipped = Fixed(1 - champion.predict_proba(holdout)[:, 1])
    report = compare(flipped, champion, holdout, params.gates, params.data)
    assert report.gate("prediction_parity").status == "failed"
    same = compare(better, champion, holdout, params.gates, params.data).gate("prediction_parity")
    assert same.status == "passed" and "flip" in same.reason


def test_reproducibility_gate(world):
    params, champion, _, holdout = world
    train, _ = split_holdout(make_batch(1, 10_000), params.data)
    assert (
        reproducibility_gate(champion, train_model(train, params), holdout, 0.0).status == "passed"
    )
    other = train_model(train.sample(frac=0.9, random_state=1), params)
    assert reproducibility_gate(champion, other, holdout, 0.0).status == "failed"


def test_champion_that_no_longer_fits_the_data_is_a_failed_gate(world, tmp_path):
    """A schema change (the data dropped a feature the champion needs) is a decision."""
    _, champion, _, holdout = world
    cats = ["payment_method", "internet_service", "region", "plan_tier"]
    dropped = small_params(tmp_path, data={"categorical_features": cats})  # no `contract`
    train, _ = split_holdout(make_batch(2, 6_000).drop(columns=["contract"]), dropped.data)
    candidate = train_model(train, dropped)
    new_rows = holdout.drop(columns=["contract"])
    report = compare(candidate, champion, new_rows, dropped.gates, dropped.data)
    assert report.decision == "reject"
    gate = report.gate("champion_scoring")
    assert gate.status == "failed" and "contract" in gate.reason and "declared" in gate.reason


def test_a_declared_schema_change_is_allowed_with_force_and_reported(world, tmp_path):
    _, champion, _, holdout = world
    cats = ["payment_method", "internet_service", "region", "plan_tier"]
    declared = small_params(
        tmp_path,
        data={"categorical_features": cats},
        gates={
            "champion_scoring": {"declared_schema_change": True},
            "fairness": {"slice_columns": ["region"]},
        },
    )
    train, _ = split_holdout(make_batch(2, 6_000).drop(columns=["contract"]), declared.data)
    candidate = train_model(train, declared)
    new_rows = holdout.drop(columns=["contract"])
    unforced = compare(candidate, champion, new_rows, declared.gates, declared.data)
    assert unforced.decision == "reject" and "force" in unforced.gate("champion_scoring").reason
    forced = compare(candidate, champion, new_rows, declared.gates, declared.data, force=True)
    assert forced.decision == "promote", forced.to_markdown()
    gate = forced.gate("champion_scoring")
    assert gate.status == "skipped" and "contract" in gate.reason
    assert "schema change" in forced.to_markdown()


def test_champion_that_cannot_score_for_another_reason_is_an_error_not_a_decision(world):
    params, _, better, holdout = world
    with pytest.raises(EvaluationError, match="columns changed"):
        compare(better, Broken(), holdout, params.gates, params.data)


@pytest.mark.parametrize("drop", ["churned", "tenure_months"])
def test_holdout_without_label_or_feature_is_an_error_naming_it(world, drop):
    params, champion, _, holdout = world
    with pytest.raises(EvaluationError, match=drop):
        compare(champion, None, holdout.drop(columns=[drop]), params.gates, params.data)


def test_one_class_holdout_fails_instead_of_passing(world):
    params, champion, _, holdout = world
    report = compare(champion, None, holdout[holdout["churned"] == 0], params.gates, params.data)
    assert report.decision == "reject"
    assert "undefined" in report.gate("minimum_roc_auc").reason


def test_a_one_class_slice_is_a_failed_gate_naming_it(world):
    params, champion, _, holdout = world
    odd = holdout.copy()
    odd.loc[odd["region"] == "north", "churned"] = 0
    report = compare(champion, None, odd, params.gates, params.data)
    gate = report.gate("slice_metric")
    assert gate.status == "failed" and "region=north" in gate.reason


def test_missing_slice_column_fails_the_fairness_gate(world, tmp_path):
    params, champion, _, holdout = world
    strict = small_params(tmp_path, gates={"fairness": {"slice_columns": ["planet"]}})
    report = compare(champion, None, holdout, strict.gates, params.data)
    assert "planet" in report.gate("fairness").reason and report.decision == "reject"


@pytest.mark.parametrize("metric", ["log_loss", "brier", "accuracy", "f1", "pr_auc"])
def test_every_primary_metric_gates_in_its_direction(world, tmp_path, metric):
    params, _champion, _better, holdout = world
    floor = {"log_loss": 0.6, "brier": 0.25, "accuracy": 0.5, "f1": 0.0, "pr_auc": 0.2}[metric]
    policy = small_params(
        tmp_path,
        gates={
            "primary_metric": metric,
            "minimums": {metric: floor},
            "prediction_parity": {"enabled": False},  # these made-up scores differ wildly by design
            "fairness": {"enabled": False},
        },
    ).gates
    y = holdout["churned"].to_numpy()
    sharp = Fixed(
        np.clip(
            np.where(y == 1, 0.8, 0.2) + np.random.default_rng(0).normal(0, 0.2, len(y)), 0.01, 0.99
        )
    )
    vague = Fixed(np.clip(0.3 + np.random.default_rng(1).normal(0, 0.2, len(y)), 0.01, 0.99))
    assert compare(sharp, vague, holdout, policy, params.data).decision == "promote"
    assert compare(vague, sharp, holdout, policy, params.data).decision == "reject"


@pytest.mark.parametrize("metric", ["roc_auc", "log_loss", "brier", "accuracy", "f1", "pr_auc"])
def test_fast_bootstrap_matches_a_plain_row_bootstrap(metric):
    """The vectorized paired bootstrap agrees with resampling rows in Python."""
    rng = np.random.default_rng(5)
    n = 3_000
    y = (rng.random(n) < 0.3).astype(int)
    a = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, n), 0.01, 0.99)
    b = np.clip(0.3 + 0.2 * y + rng.normal(0, 0.2, n), 0.01, 0.99)
    fast = bootstrap_gain(metric, y, a, b, 0.5, 2000, seed=1)
    from tasks.evaluate import HIGHER_IS_BETTER

    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    slow = []
    for _ in range(300):
        idx = rng.integers(0, n, n)
        ma, mb = (
            metric_value(metric, y[idx], a[idx], 0.5),
            metric_value(metric, y[idx], b[idx], 0.5),
        )
        slow.append(sign * (ma - mb))
    assert np.mean(fast) == pytest.approx(np.mean(slow), abs=0.25 * np.std(slow))
    assert np.std(fast) == pytest.approx(np.std(slow), rel=0.2)


def test_bootstrap_of_identical_scores_is_exactly_zero():
    y = np.array([0, 1] * 500)
    s = np.linspace(0.01, 0.99, 1000)
    assert np.all(bootstrap_gain("roc_auc", y, s, s, 0.5, 200, 0) == 0)


def test_psi_is_zero_for_equal_and_large_for_shifted():
    rng = np.random.default_rng(0)
    x = rng.random(10_000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-9)
    assert psi(x, np.clip(x + 0.4, 0, 1)) > 1.0


def test_metrics_are_nan_only_when_undefined():
    m = compute_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert m["roc_auc"] == 1.0 and m["accuracy"] == 1.0
    assert roc_auc_score([0, 1], [0.2, 0.9]) == 1.0
    assert math.isnan(compute_metrics(np.zeros(4), np.full(4, 0.3))["roc_auc"])


def test_report_renders_every_gate_and_serializes(world):
    params, champion, better, holdout = world
    report = compare(better, champion, holdout, params.gates, params.data)
    md = report.to_markdown()
    for gate in report.gates:
        assert gate.name in md
    import json

    data = json.loads(json.dumps(report.to_dict()))
    assert data["decision"] == "promote" and "candidate" in data["slices"]


def test_plots_are_written(world, tmp_path):
    from tasks.evaluate import write_plots

    params, champion, better, holdout = world
    report = compare(better, champion, holdout, params.gates, params.data)
    names = {p.name for p in write_plots(report, tmp_path)}
    assert names == {"curves.png", "scores.png", "slices.png", "bootstrap.png"}


def test_force_skips_only_the_champion_comparison_gates(world, tmp_path):
    params, champion, _, holdout = world
    # A model against itself: a latency ratio near 1 is only noise, and this is about force.
    untimed = small_params(tmp_path, gates={"latency": {"enabled": False}}).gates
    report = compare(champion, champion, holdout, untimed, params.data, force=True)
    status = gates_of(report)
    assert status["no_regression"] == status["significance"] == "skipped"
    assert report.decision == "promote"
    slow = compare(Slow(champion, 5.0), champion, holdout, params.gates, params.data, force=True)
    assert slow.decision == "reject" and gates_of(slow)["latency"] == "failed"


def test_a_negative_min_improvement_is_a_non_inferiority_margin(world, tmp_path):
    """A fresh model no better than the champion fails the default policy (a tie never
    promotes) and passes a non-inferiority margin; a clearly worse one fails both."""
    params, champion, _, holdout = world
    margin = small_params(tmp_path, gates={"significance": {"min_improvement": -0.01}})
    tie = Jittered(champion, 0.002)
    assert (
        gates_of(compare(tie, champion, holdout, params.gates, params.data))["significance"]
        == "failed"
    )
    assert (
        gates_of(compare(tie, champion, holdout, margin.gates, params.data))["significance"]
        == "passed"
    )
    worse = Jittered(champion, 0.3)
    assert (
        gates_of(compare(worse, champion, holdout, margin.gates, params.data))["significance"]
        == "failed"
    )
