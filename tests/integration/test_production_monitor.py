"""Production closes the loop: logged traffic drifts, the monitor's event starts a retraining."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from sklearn.datasets import load_diabetes, load_wine

from deployments.serving.app import create_app
from deployments.serving.inference_log import LogConfig
from tasks.data import make_batch
from tests.helpers import wait_for
from tests.integration.test_triggers import flow_runs_of, served  # noqa: F401


def serve_traffic(params, version: str, batch: pd.DataFrame, monkeypatch) -> list[str]:
    """The champion behind the serving app in-process, answering ``batch`` in requests of 8."""
    monkeypatch.setenv("MODEL_NAME", params.registry.model_name)
    monkeypatch.setenv("MODEL_VERSION", version)
    config = LogConfig(url=str(params.state_dir / "inference-log"), flush_seconds=0.2)
    app = create_app(
        f"models:/{params.registry.model_name}/{version}",
        load_in_background=False,
        log_config=config,
    )
    records = batch[[*params.data.features, params.data.id_column]].to_dict(orient="records")
    ids = []
    with TestClient(app) as client:
        assert client.get("/ready").status_code == 200
        for i in range(0, len(records), 8):
            answer = client.post("/predict", json={"records": records[i : i + 8]})
            assert answer.status_code == 200, answer.text
            rid = answer.json()["request_id"]
            ids += [f"{rid}/{j}" for j in range(len(records[i : i + 8]))]
    return ids


def test_drifted_production_traffic_emits_the_event_that_starts_a_retraining(
    workspace,
    served,  # noqa: F811
    monkeypatch,
):
    ws = workspace
    first = ws.run(ws.land_day(1, 6_000))
    assert first.kind == "promoted"
    params = ws.params
    production = make_batch(2, 1_600, drift=1.5)
    ids = serve_traffic(params, first.version, production, monkeypatch)
    labels = pd.DataFrame(
        {"id": ids, "label": production[params.data.label], "time": pd.Timestamp.now(tz="UTC")}
    )
    labels.loc[len(labels)] = ["never-predicted", 1, pd.Timestamp.now(tz="UTC")]
    labels.to_parquet(ws.root / "labels.parquet")
    raw = yaml.safe_load(ws.params_file.read_text())
    raw["monitor"]["labels"]["url"] = str(ws.root / "labels.parquet")
    ws.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    new_rev = ws.land_day(2, 6_000, drift=1.5)  # the newest data reflects the new traffic

    from flows.production_monitor import production_monitor

    report = production_monitor(params_file=str(ws.params_file))
    assert report.rows == report.champion_rows == 1_600
    assert report.retrain and "input drift" in report.reasons[0]
    assert {"contract", "monthly_charges"} <= {f.feature for f in report.feature_drift.drifted}
    assert report.live is not None and report.live.rows == 1_600
    assert report.holdout_metric is not None and report.labels_unmatched == 1
    assert any("never predicted" in n for n in report.notes)
    assert any("retraining requested" in t for t in ws.slack.texts())

    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[params.mlflow.experiment + "-production"], output_format="list"
    )
    assert runs and runs[0].data.tags["ct.retrain"] == "true"
    assert runs[0].info.artifact_uri.startswith(params.state_dir.resolve().as_uri())
    artifacts = {
        a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, "monitor")
    }
    assert {"monitor/scores.png", "monitor/live_metric.png", "monitor/report.json"} <= artifacts

    def finished():
        done = [
            r
            for r in flow_runs_of("continuous-training/churn-classifier-on-new-data") or []
            if r.state and r.state.is_final()
        ]
        return done or None

    runs = wait_for(finished, 240, "the retraining the production monitor's event triggers")
    assert len(runs) == 1 and runs[0].parameters["rev"] == new_rev
    assert runs[0].state.is_completed(), runs[0].state


def champion_of_task(ws, task: str) -> tuple[Any, str]:
    """A champion trained on scikit-learn data of ``task`` (wine cultivars, diabetes
    progression), registered in the workspace's MLflow store with its lineage, as a promotion
    leaves it; returns the params and the params file."""
    import mlflow

    from tasks.data import (
        fetch_version,
        lineage_tags,
        read_version,
        resolve_version,
        split_holdout,
    )
    from tasks.gates.evidence import encode_labels, score
    from tasks.metrics import compute_metrics
    from tasks.train import log_candidate, setup_tracking, train_model

    if task == "multiclass":
        raw = load_wine(as_frame=True)
        frame = raw.frame.drop(columns="target").rename(
            columns={"od280/od315_of_diluted_wines": "od280"}
        )
        frame["cultivar"] = np.array(["barolo", "grignolino", "barbera"])[raw.target]
        label, estimator, metric = "cultivar", "sklearn.linear_model.LogisticRegression", "log_loss"
        hyper: dict[str, Any] = {"max_iter": 500}
    else:
        frame = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
        label, estimator, metric = "progression", "sklearn.linear_model.Ridge", "rmse"
        hyper = {"alpha": 1.0}
    features = [c for c in frame.columns if c != label]
    raw_params = yaml.safe_load(ws.params_file.read_text())
    raw_params["data"].update(
        label=label,
        id_column=None,
        timestamp_column=None,
        sensitive_column=None,
        numeric_features=features,
        categorical_features=[],
    )
    raw_params["train"].update(task=task, estimator=estimator, hyperparameters=hyper)
    raw_params["gates"].update(primary_metric=metric, minimums={})
    raw_params["registry"]["model_name"] = "wine" if task == "multiclass" else "diabetes"
    labels = pd.DataFrame({"id": ["ghost"], "label": [frame[label].iloc[0]], "time": [NOW]})
    labels.to_parquet(ws.root / "labels.parquet")
    raw_params["monitor"]["labels"]["url"] = str(ws.root / "labels.parquet")
    ws.params_file.write_text(yaml.safe_dump(raw_params, sort_keys=False))
    params = ws.params
    rev = ws.land(frame, f"{task} data")
    version = resolve_version(params.data.repo, params.data.path, rev)
    train, holdout = split_holdout(read_version(fetch_version(version)), params.data)
    experiment = setup_tracking(params)
    pipeline = train_model(train, params)
    run_id, uri = log_candidate(pipeline, train, params, experiment, lineage_tags(version), False)
    y = encode_labels(holdout[label].to_numpy(), pipeline, task)
    holdout_metric = compute_metrics(y, score(pipeline, holdout, "champion", task), 0.5, task)
    mlflow.MlflowClient().log_metric(run_id, f"holdout_{metric}", holdout_metric[metric])
    name = params.registry.model_name
    registered = mlflow.register_model(uri, name, await_registration_for=0)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", registered.version)
    return params, str(ws.params_file)


NOW = pd.Timestamp.now(tz="UTC")


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_the_monitor_completes_on_an_empty_window_for_a_multiclass_and_a_regression_champion(
    workspace, task
):
    """A fresh install: labels configured, the shared log holds only another model's traffic.
    Before, the labels join raised KeyError "['decision'] not in index" (every task) and the
    reference AttributeError 'Pipeline' has no attribute 'predict_proba' (regression)."""
    from deployments.serving.inference_log import InferenceLog, ModelStamp, Telemetry
    from flows.production_monitor import production_monitor

    params, params_file = champion_of_task(workspace, task)
    other = InferenceLog(
        LogConfig(url=str(params.state_dir / "inference-log")),
        ModelStamp("churn-classifier", "4", ""),
        Telemetry(),
    )
    other.record("theirs", [{"age": 30.0}] * 300, [0.9] * 300)
    assert other.flush() == 300

    report = production_monitor(params_file=params_file)
    assert report.task == task and report.champion_version == "1"
    assert report.rows == 0 and report.versions == {} and not report.retrain
    assert any(
        n.startswith(f"empty window: no predictions by {params.registry.model_name}")
        for n in report.notes
    )
    assert report.labels_read == 1 and report.labels_unmatched == 1
    assert report.holdout_metric is not None
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[params.mlflow.experiment + "-production"], output_format="list"
    )
    assert runs and runs[0].data.tags["ct.retrain"] == "false"
    assert runs[0].data.tags["ct.model_name"] == params.registry.model_name
    assert any("nothing passed a threshold" in t for t in workspace.slack.texts())
