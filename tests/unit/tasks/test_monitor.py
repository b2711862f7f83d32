"""The production monitor's analysis of one window: drift, live metric, odd input as notes."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from tasks.data import make_batch, split_holdout
from tasks.inference_log import LabelledPredictions, join_labels, read_inference_log
from tasks.monitor import ChampionReference, analyse_window, live_metric
from tests.helpers import small_params
from tests.unit.tasks.test_inference_log import T0, write_log


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    return small_params(tmp_path_factory.mktemp("monitor"))


@pytest.fixture(scope="module")
def champion(params):
    train, holdout = split_holdout(make_batch(1, 5_000), params.data)
    rng = np.random.default_rng(0)
    return ChampionReference(
        "churn-classifier", "3", "run", "md5", train, rng.beta(2, 5, len(holdout)), 0.80, 0.5
    )


def window_of(params, tmp_path, batch, scores, version="3"):
    records = batch[[*params.data.features, params.data.id_column]].to_dict(orient="records")
    write_log(tmp_path / "log", records, scores, T0.timestamp(), version=version, batch=4)
    return read_inference_log(str(tmp_path / "log"), T0 - timedelta(hours=1), T0 + timedelta(1))


def analyse(params, window, champion, labelled=None, missing=()):
    return analyse_window(
        window,
        champion,
        labelled,
        params.data,
        params.drift,
        params.monitor,
        "roc_auc",
        "churn-classifier",
        missing,
    )


def test_stable_production_requests_nothing(params, champion, tmp_path):
    rng = np.random.default_rng(1)
    window = window_of(params, tmp_path, make_batch(2, 2_000, seed=5), rng.beta(2, 5, 2_000))
    report = analyse(params, window, champion)
    assert report.rows == report.champion_rows == 2_000
    assert report.feature_drift is not None and report.score_drift is not None
    assert not report.retrain, report.reasons
    assert report.to_dict()["retrain"] is False


def test_drifted_inputs_and_scores_give_reasons(params, champion, tmp_path):
    rng = np.random.default_rng(2)
    drifted = make_batch(2, 2_000, seed=5, drift=1.5)
    window = window_of(params, tmp_path, drifted, rng.beta(5, 2, 2_000))
    report = analyse(params, window, champion)
    assert report.retrain
    text = " ".join(report.reasons)
    assert "input drift" in text and "contract" in text
    assert "score distribution drifted" in text and report.score_drift.psi > 0.2
    assert "Reasons to retrain" in report.to_markdown()


def test_live_metric_drop_is_a_reason_only_when_significant(params, champion, tmp_path):
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 1, 2_000)
    window = window_of(params, tmp_path, make_batch(2, 2_000, seed=5), scores)
    useless = pd.DataFrame(
        {"id": window.log["prediction_id"], "label": rng.integers(0, 2, 2_000), "time": T0}
    )
    report = analyse(params, window, champion, join_labels(window, useless, "prediction_id"))
    assert report.live is not None and report.live.rows == 2_000
    assert report.live.low < report.live.value < report.live.high
    assert abs(report.live.value - 0.5) < 0.05
    assert report.metric_drop == pytest.approx(0.80 - report.live.value)
    assert any("live roc_auc" in r and "below its holdout 0.8000" in r for r in report.reasons)
    assert report.live_by_day and report.live_by_day[0][2] == 2_000

    good = (rng.uniform(0, 1, 2_000) < scores).astype(int)  # labels drawn from the scores
    honest = pd.DataFrame({"id": window.log["prediction_id"], "label": good, "time": T0})
    fine = analyse(params, window, champion, join_labels(window, honest, "prediction_id"))
    assert fine.live.value > 0.7
    assert not any("live roc_auc" in r for r in fine.reasons)


def test_live_interval_covers_the_metric_and_narrows_with_rows(params):
    rng = np.random.default_rng(4)
    s = rng.uniform(0, 1, 40_000)
    y = (rng.uniform(0, 1, 40_000) < s).astype(int)
    small = live_metric("roc_auc", y[:500], s[:500], 0.5, params.monitor)
    large = live_metric("roc_auc", y, s, 0.5, params.monitor)
    assert small.low < large.value < small.high
    assert (large.high - large.low) < (small.high - small.low) / 4


def test_no_traffic_few_labels_missing_version_and_no_champion_are_notes(
    params, champion, tmp_path
):
    empty = read_inference_log(str(tmp_path / "nothing"), T0, T0 + timedelta(hours=1))
    labelled = LabelledPredictions(
        pd.DataFrame(columns=["prediction_id", "time", "model_version", "score", "decision", "y"]),
        7,
        7,
        ("7 of 7 labels are for ids never predicted in the window",),
    )
    report = analyse(params, empty, champion, labelled)
    assert not report.retrain and report.rows == 0 and report.live is None
    text = " ".join(report.notes)
    assert "no inference log files" in text and "empty window" in text
    assert "never predicted" in text and "live metric not judged" in text
    assert report.labels_unmatched == 7

    rng = np.random.default_rng(5)
    window = window_of(params, tmp_path, make_batch(2, 400, seed=5), rng.beta(2, 5, 400), "2")
    report = analyse(params, window, champion, missing=("2",))
    text = " ".join(report.notes)
    assert "v2, which the registry no longer has" in text
    assert "400 predictions by other versions" in text and report.champion_rows == 0
    orphan = analyse(params, window, None)
    assert orphan.champion_version is None and "no champion" in orphan.notes[-1]
    assert all(
        v is None or not isinstance(v, float) or math.isfinite(v) for v in orphan.to_dict().values()
    )


def test_monitor_params_reject_bad_values(tmp_path):
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match=r"shadow.*max_flip_rate"):
        small_params(tmp_path, gates={"shadow": {"max_flip_rate": 2}})
    with pytest.raises(ConfigError, match=r"monitor\.window_hours"):
        small_params(tmp_path / "b", monitor={"window_hours": 0})
    for i, endless in enumerate([math.inf, 1e8]):  # accepted, then OverflowError every hour
        with pytest.raises(ConfigError, match=r"monitor\.window_hours: Input should be"):
            small_params(tmp_path / f"h{i}", monitor={"window_hours": endless})
    defaults = small_params(tmp_path / "c")
    assert defaults.monitor.labels.key == "prediction_id"
    shadow = defaults.gates.rule("shadow")  # the gate reads the monitor's log and labels
    assert shadow.log_url == str(defaults.state_dir / "inference-log")
    assert shadow.labels == defaults.monitor.labels
