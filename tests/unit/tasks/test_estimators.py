"""LightGBM, XGBoost and a scikit-learn linear model through the same training code, saved as
the train stage logs them, and scored by the serving app."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from fastapi.testclient import TestClient

from deployments.serving.app import create_app
from tasks.config import ConfigError
from tasks.data import make_batch
from tasks.estimators import make_estimator, pip_requirements, preprocessing_for
from tasks.train import train_model
from tests.helpers import small_params

ESTIMATORS = {
    "lightgbm.LGBMClassifier": ({"n_estimators": 40, "num_leaves": 15, "verbose": -1}, "native"),
    "xgboost.XGBClassifier": ({"n_estimators": 40, "max_depth": 4}, "ordinal"),
    "sklearn.linear_model.LogisticRegression": ({"max_iter": 500}, "onehot"),
}
PACKAGE = {"lightgbm": "lightgbm==", "xgboost": "xgboost-cpu==", "sklearn": "scikit-learn=="}


def save(model, params, batch, path):
    """What `log_candidate` does: signature, pinned requirements, encoders pickled by value."""
    import cloudpickle
    import mlflow
    from mlflow.models import infer_signature

    import tasks.encoders

    sample = batch[params.data.features].head(50)
    cloudpickle.register_pickle_by_value(tasks.encoders)
    try:
        mlflow.sklearn.save_model(
            model,
            str(path),
            signature=infer_signature(sample, model.predict_proba(sample)[:, 1]),
            pip_requirements=pip_requirements(params),
            serialization_format="cloudpickle",
        )
    finally:
        cloudpickle.unregister_pickle_by_value(tasks.encoders)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_each_estimator_trains_is_served_and_names_its_package(tmp_path, estimator):
    hyperparameters, encoding = ESTIMATORS[estimator]
    params = small_params(
        tmp_path, train={"estimator": estimator, "hyperparameters": hyperparameters}
    )
    assert preprocessing_for(params) == encoding
    batch = make_batch(1, 3_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # e.g. n_jobs given to LogisticRegression
        model = train_model(batch, params)
    rows = make_batch(2, 300)
    rows.loc[:5, "region"] = "atlantis"  # unseen category
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(rows["churned"], model.predict_proba(rows)[:, 1]) > 0.7
    requirements = pip_requirements(params)
    top = estimator.split(".")[0]
    assert any(r.startswith(PACKAGE[top]) for r in requirements)
    if top != "lightgbm":
        assert not any(r.startswith("lightgbm") for r in requirements)
    save(model, params, batch, tmp_path / "model")
    client = TestClient(create_app(str(tmp_path / "model"), load_in_background=False))
    assert client.get("/ready").status_code == 200, client.get("/ready").json()
    records = rows[params.data.features].head(20).to_dict(orient="records")
    served = client.post("/predict", json={"records": records}).json()["scores"]
    np.testing.assert_allclose(served, model.predict_proba(rows.head(20))[:, 1], rtol=1e-6)


def test_native_categories_load_where_tasks_is_not_importable(tmp_path):
    """The serving image ships no `tasks/`: the encoder travels inside the pickle."""
    params = small_params(tmp_path, train={"hyperparameters": {"n_estimators": 10}})
    batch = make_batch(1, 1_000)
    model = train_model(batch, params)
    save(model, params, batch, tmp_path / "model")
    rows = make_batch(2, 5)
    rows.to_parquet(tmp_path / "rows.parquet")
    script = (
        "import sys, mlflow, pandas as pd\n"
        "assert 'tasks' not in sys.modules\n"
        "m = mlflow.sklearn.load_model(sys.argv[1])\n"
        "print(list(m.predict_proba(pd.read_parquet(sys.argv[2]))[:, 1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "rows.parquet")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = [
        float(v.replace("np.float64(", "").rstrip(")"))
        for v in done.stdout.strip()[1:-1].split(", ")
    ]
    np.testing.assert_allclose(got, model.predict_proba(rows)[:, 1], rtol=1e-6)


def test_preprocessing_can_be_overridden(tmp_path):
    params = small_params(
        tmp_path,
        train={"preprocessing": "ordinal", "hyperparameters": {"n_estimators": 10, "verbose": -1}},
    )
    model = train_model(make_batch(1, 1_000), params)
    assert type(model.named_steps["columns"]).__name__ == "ColumnTransformer"


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ({"estimator": "lightgbm.LGBMRegressor"}, "not a classifier"),
        ({"task": "regression", "estimator": "lightgbm.LGBMClassifier"}, "not a regressor"),
        (
            {"estimator": "sklearn.svm.SVC", "hyperparameters": {}},
            "no predict_proba",
        ),
    ],
)
def test_an_estimator_that_does_not_fit_the_task_is_named_when_params_load(tmp_path, train, match):
    gates = {"primary_metric": "rmse", "minimums": {}} if train.get("task") == "regression" else {}
    with pytest.raises(ConfigError, match=match):
        small_params(tmp_path, train=train, gates=gates)


def test_seed_and_threads_only_where_the_estimator_uses_them(tmp_path):
    params = small_params(
        tmp_path,
        train={"estimator": "sklearn.linear_model.LogisticRegression", "hyperparameters": {}},
    )
    estimator = make_estimator(params)
    assert estimator.get_params()["n_jobs"] is None  # deprecated there: not passed
    assert estimator.get_params()["random_state"] == params.train.seed
