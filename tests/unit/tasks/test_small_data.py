"""A better model must be able to win on small data: 569 rows (scikit-learn's breast cancer
set, bundled with it) in two batches, a 64-row holdout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.data import split_holdout
from tasks.evaluate import compare
from tasks.train import train_model
from tests.helpers import small_params


@pytest.fixture(scope="module")
def two_batches(tmp_path_factory):
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame
    df.columns = [c.replace(" ", "_") for c in df.columns]
    features = [c for c in df.columns if c != "target"]
    df["id"] = np.arange(len(df))
    df["ts"] = pd.Timestamp("2026-01-01")
    df["group"] = np.where(df["id"] % 2 == 0, "a", "b")
    data = {
        "label": "target",
        "id_column": "id",
        "timestamp_column": "ts",
        "sensitive_column": "group",
        "numeric_features": features,
        "categorical_features": [],
    }
    folder = tmp_path_factory.mktemp("small")

    def params(name, metric, **hyperparameters):
        return small_params(
            folder / name,
            data=data,
            gates={"primary_metric": metric, "minimums": {}, "fairness": {"slice_columns": []}},
            train={"hyperparameters": {"verbose": -1, **hyperparameters}},
        )

    cautious = params("c", "log_loss", n_estimators=40, learning_rate=0.02, num_leaves=3)
    first, second = df.iloc[:284], df.iloc[284:]
    train1, _ = split_holdout(first, cautious.data)
    train2, holdout = split_holdout(second, cautious.data)
    champion = train_model(train1, cautious)  # batch one, scores pulled towards the base rate
    sharp = params("s", "log_loss", n_estimators=200, learning_rate=0.05, min_child_samples=5)
    candidate = train_model(pd.concat([train1, train2]), sharp)  # both batches, sharper
    return params, champion, candidate, holdout


def test_a_sharper_better_model_wins_on_a_64_row_holdout(two_batches):
    params, champion, candidate, holdout = two_batches
    assert len(holdout) < 80
    policy = params("l", "log_loss")
    report = compare(candidate, champion, holdout, policy.gates, policy.data)
    assert report.decision == "promote", report.to_markdown()
    parity = report.gate("prediction_parity")
    assert parity.candidate > 0.25 and "better on the labels" in parity.reason  # PSI is large
    assert any("gain must be about" in note for note in report.notes)


def test_the_report_says_when_significance_can_never_pass(two_batches):
    params, champion, candidate, holdout = two_batches
    policy = params("r", "roc_auc")
    report = compare(candidate, champion, holdout, policy.gates, policy.data)
    warning = next(n for n in report.notes if n.startswith("WARNING"))
    assert "can never pass" in warning and "holdout_fraction" in warning
    assert report.gate("significance").status == "failed"
    assert "a perfect model could not pass" in report.gate("significance").reason
