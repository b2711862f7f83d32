"""The continuous-training flow end to end for each task type and estimator family, on
synthetic data, with the promoted model scored by the serving app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from deployments.serving.app import create_app
from tasks.data import make_batch
from tests.helpers import store

NUMERIC = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())["data"][
    "numeric_features"
]
CASES = {
    "binary-xgboost": (
        {"estimator": "xgboost.XGBClassifier", "hyperparameters": {"n_estimators": 40}},
        {},
        {},
    ),
    "binary-logistic-regression": (
        {
            "estimator": "sklearn.linear_model.LogisticRegression",
            "hyperparameters": {"max_iter": 500},
        },
        {},
        {},
    ),
    "multiclass-lightgbm": (
        {"task": "multiclass", "hyperparameters": {"n_estimators": 40, "verbose": -1}},
        {
            "label": "plan_tier",
            "categorical_features": ["contract", "payment_method", "internet_service", "region"],
        },
        {"primary_metric": "log_loss", "minimums": {"macro_f1": 0.3}},
    ),
    "regression-lightgbm": (
        {
            "task": "regression",
            "estimator": "lightgbm.LGBMRegressor",
            "hyperparameters": {"n_estimators": 40, "verbose": -1},
        },
        {
            "label": "monthly_charges",
            "numeric_features": [f for f in NUMERIC if f != "monthly_charges"],
        },
        {"primary_metric": "rmse", "minimums": {"r2": 0.1}},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_flow_trains_gates_promotes_and_serves_each_task(workspace, case):
    train, data, gates = CASES[case]
    raw = yaml.safe_load(workspace.params_file.read_text())
    raw["train"] = {**raw["train"], **train}
    raw["data"] = {**raw["data"], **data}
    raw["gates"] = {**raw["gates"], **gates}
    raw["gates"].setdefault("minimums", {})
    if "minimums" not in gates:
        raw["gates"]["minimums"] = {}
    raw["gates"]["latency"]["max_p95_ms"] = 5000  # a loaded CI machine; latency is not tested
    raw["gates"]["fairness"]["max_slice_gap"] = 1.0  # not what this test is about
    workspace.params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    outcome = workspace.run(workspace.land(make_batch(1, 2_000), "day 1"))
    assert outcome.kind == "promoted", outcome.line()
    client = store(workspace.params)
    report = json.loads(
        Path(client.download_artifacts(outcome.run_id, "gates/report.json")).read_text()
    )
    task = train.get("task", "binary")
    assert report["task"] == task and report["decision"] == "promote"
    assert report["primary_metric"] == gates.get("primary_metric", "roc_auc")
    artifacts = {f.path for f in client.list_artifacts(outcome.run_id, "gates")}
    plot = {"binary": "curves.png", "multiclass": "recall.png", "regression": "residuals.png"}
    assert {f"gates/{plot[task]}", "gates/gates.png"} <= artifacts
    uri = f"models:/{workspace.params.registry.model_name}/{outcome.version}"
    app = TestClient(create_app(uri, load_in_background=False))
    assert app.get("/ready").status_code == 200, app.get("/ready").json()
    rows = make_batch(2, 10)
    features = workspace.params.data.features
    answer = app.post("/predict", json={"records": rows[features].to_dict(orient="records")})
    assert answer.status_code == 200, answer.text
    import mlflow

    model = mlflow.sklearn.load_model(uri)
    if task == "regression":
        expected = model.predict(rows)
    elif task == "multiclass":
        expected = model.predict_proba(rows).max(axis=1)
        assert set(answer.json()["classes"]) <= set(model.classes_)
    else:
        expected = model.predict_proba(rows)[:, 1]
    np.testing.assert_allclose(answer.json()["scores"], expected, rtol=1e-6)
