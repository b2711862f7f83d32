"""The production monitor on every task (binary, multiclass wine, regression diabetes), on empty
windows, shared logs and the labels production really sends: duplicates, nulls, odd keys."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_wine
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from deployments.serving.app import model_scores
from deployments.serving.inference_log import InferenceLog, LogConfig, ModelStamp, Telemetry
from tasks.config import DataParams, LabelSourceParams
from tasks.inference_log import join_labels, read_inference_log, read_labels
from tasks.labels import canonical_keys
from tasks.metrics import metric_value
from tasks.monitor import ChampionReference, analyse_window
from tests.helpers import small_params
from tests.unit.tasks.test_inference_log import T0

WINDOW = (T0 - timedelta(hours=1), T0 + timedelta(hours=1))


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    params = small_params(tmp_path_factory.mktemp("monitor-tasks"))
    monitor = params.monitor.model_copy(update={"min_rows": 50, "min_labelled_rows": 30})
    return params.drift, monitor


def log_predictions(url, model, records, name="wine", version="1", batch=5, rid="req"):
    """Records scored and logged as the serving app does (its own scoring function)."""
    sink = InferenceLog(LogConfig(url=str(url)), ModelStamp(name, version, ""), Telemetry())
    for i in range(0, len(records), batch):
        part = records[i : i + batch]
        scores, _ = model_scores(model, pd.DataFrame(part))
        sink.record(f"{rid}{i}", part, scores, at=T0.timestamp())
    assert sink.flush() == len(records)


def task_case(task):
    """A fitted champion of ``task`` on scikit-learn data, its data params and frame."""
    if task == "multiclass":
        raw = load_wine(as_frame=True)
        frame = raw.frame.rename(columns={"od280/od315_of_diluted_wines": "od280"})
        names = np.array(["barolo", "grignolino", "barbera"])
        frame["cultivar"] = names[raw.target]
        label, model = "cultivar", make_pipeline(StandardScaler(), LogisticRegression())
    else:
        frame = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
        label, model = "progression", make_pipeline(StandardScaler(), LinearRegression())
    features = [c for c in frame.columns if c != label]
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    data = DataParams(label=label, numeric_features=features, categorical_features=[])
    model.fit(frame[features], frame[label])
    return frame, data, model


def reference_of(task, frame, data, model, holdout_metric):
    """What monitor_io.champion_reference builds from the registry, for this model."""
    X = frame[data.features]
    if task == "multiclass":
        proba = model.predict_proba(X)
        return ChampionReference(
            "wine", "1", "run", "md5", frame, proba.max(axis=1), holdout_metric, 0.5,
            "multiclass", tuple(model.classes_), proba, model,
        )  # fmt: skip
    return ChampionReference(
        "wine", "1", "run", "md5", frame, model.predict(X), holdout_metric, 0.5, "regression"
    )


def analyse(task, window, reference, labelled, data, policy, metric):
    drift, monitor = policy
    return analyse_window(window, reference, labelled, data, drift, monitor, metric, "wine")


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_an_empty_window_completes_and_says_so_on_every_task(task, policy, tmp_path):
    """A fresh install: no traffic yet, labels configured. The join raised KeyError
    "['decision'] not in index" on every task before."""
    empty = read_inference_log(str(tmp_path / "log"), *WINDOW, model_name="wine")
    assert list(empty.log.columns) >= ["prediction_id", "time", "model_version", "score"]
    labels = pd.DataFrame({"id": ["a", "b"], "label": [1, 0], "time": [T0, T0]})
    labelled = join_labels(empty, labels, "prediction_id", task)
    assert labelled.frame.empty and labelled.unmatched == 2
    if task == "binary":
        reference, data, metric = None, small_params(tmp_path / "p").data, "roc_auc"
    else:
        frame, data, model = task_case(task)
        metric = "log_loss" if task == "multiclass" else "rmse"
        reference = reference_of(task, frame, data, model, 0.1)
    report = analyse(task, empty, reference, labelled, data, policy, metric)
    assert report.rows == 0 and not report.retrain and report.live is None
    assert any(n.startswith("empty window: no predictions by wine") for n in report.notes)
    assert "empty window" in report.to_markdown()


def test_regression_monitor_judges_predictions_and_the_error_metric(policy, tmp_path):
    frame, data, model = task_case("regression")
    holdout_rmse = metric_value(
        "rmse", frame[data.label].to_numpy(), model.predict(frame[data.features]), task="regression"
    )
    reference = reference_of("regression", frame, data, model, holdout_rmse)
    records = frame[data.features].to_dict(orient="records")
    log_predictions(tmp_path / "log", model, records)
    window = read_inference_log(str(tmp_path / "log"), *WINDOW, model_name="wine")
    truth = pd.DataFrame(
        {"id": window.log["prediction_id"], "label": frame[data.label], "time": T0}
    )
    report = analyse(
        "regression", window, reference, join_labels(window, truth, "prediction_id", "regression"),
        data, policy, "rmse",
    )  # fmt: skip
    assert report.task == "regression" and report.score_drift is not None
    assert not report.score_drift.drifted and not report.retrain, report.reasons
    assert report.live is not None and report.live.rows == len(frame)
    assert report.live.value == pytest.approx(holdout_rmse)
    assert report.live.low < report.live.value < report.live.high
    assert "prediction distribution" in report.to_markdown()

    worse = truth.assign(label=truth["label"] * 1.6)  # the world moved: errors grow
    report = analyse(
        "regression", window, reference, join_labels(window, worse, "prediction_id", "regression"),
        data, policy, "rmse",
    )  # fmt: skip
    reason = next(r for r in report.reasons if r.startswith("live rmse"))
    assert "above its holdout" in reason and "of the holdout value" in reason


def test_multiclass_monitor_names_classes_and_judges_log_loss(policy, tmp_path):
    frame, data, model = task_case("multiclass")
    proba = model.predict_proba(frame[data.features])
    holdout = metric_value(
        "log_loss",
        np.searchsorted(model.classes_, frame[data.label]),
        proba,
        task="multiclass",
    )
    reference = reference_of("multiclass", frame, data, model, holdout)
    only_barolo = frame[frame[data.label] == "barolo"]
    records = only_barolo[data.features].to_dict(orient="records")
    log_predictions(tmp_path / "log", model, records * 2)
    window = read_inference_log(str(tmp_path / "log"), *WINDOW, model_name="wine")
    truth = pd.DataFrame(
        {
            "id": window.log["prediction_id"],
            "label": [*only_barolo[data.label]] * 2,
            "time": T0,
        }
    )
    labelled = join_labels(window, truth, "prediction_id", "multiclass", reference.classes)
    assert set(labelled.frame["y"]) == {list(model.classes_).index("barolo")}
    report = analyse("multiclass", window, reference, labelled, data, policy, "log_loss")
    drift = report.score_drift
    assert drift is not None and drift.drifted  # production sees one cultivar only
    shares = {name: (h, p) for name, h, p in drift.classes}
    assert set(shares) == {"barbera", "barolo", "grignolino"} and shares["barolo"][1] > 0.9
    assert "barolo" in report.to_markdown() and any("decided classes" in r for r in report.reasons)
    assert report.live is not None and report.live.rows == len(window.log)
    barolo = (frame[data.label] == "barolo").to_numpy()
    y = labelled.frame["y"].to_numpy()
    expected = metric_value("log_loss", y, np.vstack([proba[barolo]] * 2), task="multiclass")
    assert report.live.value == pytest.approx(expected)

    wrong = truth.assign(label="barbera")  # labels the model never decides
    labelled = join_labels(window, wrong, "prediction_id", "multiclass", reference.classes)
    report = analyse("multiclass", window, reference, labelled, data, policy, "log_loss")
    assert any(r.startswith("live log_loss") and "above its holdout" in r for r in report.reasons)
    odd = truth.assign(label="merlot")
    labelled = join_labels(window, odd, "prediction_id", "multiclass", reference.classes)
    assert labelled.frame.empty and "not classes of the model" in labelled.notes[-1]


def test_the_latest_label_by_time_wins_whatever_the_file_order(tmp_path):
    """A correction in a file that sorts first used to be dropped: file order decided."""
    folder = tmp_path / "labels"
    folder.mkdir()
    later = T0 + timedelta(hours=5)
    pd.DataFrame({"id": ["r0", "r1"], "label": [0, 0], "time": [later, later]}).to_parquet(
        folder / "a-corrections.parquet"
    )
    pd.DataFrame({"id": ["r0", "r1", "r2"], "label": [1, 1, 1], "time": [T0] * 3}).to_parquet(
        folder / "b-first-labels.parquet"
    )
    records = [{"x": float(i)} for i in range(3)]
    sink = InferenceLog(LogConfig(url=str(tmp_path / "log")), ModelStamp("m", "1", ""), Telemetry())
    for i, record in enumerate(records):
        sink.record(f"r{i}", [record], [0.5], at=T0.timestamp())
    sink.flush()
    window = read_inference_log(str(tmp_path / "log"), *WINDOW)
    labels, notes = read_labels(LabelSourceParams(url=str(folder)))
    assert notes == () and len(labels) == 5
    joined = join_labels(window, labels, "prediction_id")
    by_id = dict(zip(joined.frame["prediction_id"], joined.frame["y"], strict=True))
    assert by_id == {"r0": 0, "r1": 0, "r2": 1}
    assert any("2 labels repeat an id: the latest by time kept" in n for n in joined.notes)


def test_join_keys_are_compared_in_one_canonical_form(tmp_path):
    """One null in an integer id column made every label id "1.0" (and a record without the
    join field did the same to the log's keys): 0 of 200 joined, "never predicted"."""
    records = [{"x": float(i), "customer_id": 1000 + i} for i in range(200)]
    records.append({"x": 1.0})  # one logged record without the join field
    sink = InferenceLog(LogConfig(url=str(tmp_path / "log")), ModelStamp("m", "1", ""), Telemetry())
    sink.record("batch", records, list(np.linspace(0, 1, len(records))), at=T0.timestamp())
    sink.flush()
    window = read_inference_log(str(tmp_path / "log"), *WINDOW)
    ids = pd.array([1000 + i for i in range(200)] + [None], dtype="Int64")
    labels = pd.DataFrame({"id": ids, "label": [i % 2 for i in range(201)], "time": T0})
    labels.to_parquet(tmp_path / "labels.parquet")
    read, _ = read_labels(LabelSourceParams(url=str(tmp_path / "labels.parquet")))
    joined = join_labels(window, read, "customer_id")
    assert len(joined.frame) == 200 and joined.unmatched == 0
    text = " ".join(joined.notes)
    assert "1 logged predictions have no readable 'customer_id'" in text
    assert "1 labels have no readable id" in text and "never predicted" not in text

    keys = pd.Series([1, 1.0, "1", "007", True, None, np.nan, "", [1], 2.5, 10**18])
    assert list(canonical_keys(keys)) == [
        "1", "1", "1", "007", "1", None, None, None, None, "2.5", "1000000000000000000",
    ]  # fmt: skip
    as_float = canonical_keys(pd.Series([1.0, np.nan, 3.0]))
    assert list(as_float) == ["1", None, "3"]


def test_the_monitor_reads_only_its_own_models_predictions(tmp_path):
    """Two models on the default log: the other one's 400 predictions were counted as this
    model's traffic (PSI 12.4, a drift event, a retraining)."""
    url = str(tmp_path / "log")
    for name, rows in (("churn", 100), ("wine", 400), ("", 7)):
        sink = InferenceLog(LogConfig(url=url), ModelStamp(name, "1", ""), Telemetry())
        sink.record(f"{name}-req", [{"x": 1.0}] * rows, [0.2] * rows, at=T0.timestamp())
        sink.flush()
    mine = read_inference_log(url, *WINDOW, model_name="churn")
    assert mine.rows == 100 and set(mine.log["model_name"]) == {"churn"}
    assert any("7 logged predictions carry no model name" in n for n in mine.notes)
    assert read_inference_log(url, *WINDOW).rows == 507  # without a name: everything
    quiet = read_inference_log(url, T0 + timedelta(days=3), T0 + timedelta(days=4), 0.5, "churn")
    assert quiet.rows == 0 and "no predictions logged by churn" in quiet.notes[0]
