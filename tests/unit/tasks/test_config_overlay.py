"""Overlays replace what they name, inherit the rest; gate defaults follow the task."""

import pytest
import yaml

from tasks.config import ConfigError, load_params
from tests.helpers import write_params

WINE_DATA = {
    "path": "wine.csv",
    "label": "cultivar",
    "id_column": None,
    "timestamp_column": None,
    "sensitive_column": None,
    "numeric_features": ["alcohol", "flavanoids"],
    "categorical_features": [],
}


def overlay(root, text):
    folder = root / "models.d" / "wine"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(text)
    return folder / "params.yaml"


def five_lines(root, train):
    return overlay(
        root,
        "extends: ../../params.yaml\n"
        + yaml.safe_dump(
            {
                "data": WINE_DATA,
                "train": train,
                "gates": {"fairness": {"enabled": False}},
                "registry": {"model_name": "wine"},
                "deploy": {"deployment": "wine-model"},
            }
        ),
    )


def test_another_estimator_does_not_inherit_the_others_hyperparameters(tmp_path):
    write_params(tmp_path)
    params = load_params(
        five_lines(
            tmp_path,
            {"task": "multiclass", "estimator": "sklearn.linear_model.LogisticRegression"},
        )
    )
    assert params.train.hyperparameters == {}
    assert params.train.seed == 42  # the rest of the section is inherited


def test_another_task_gets_the_tasks_gate_policy_and_says_which_were_defaults(tmp_path):
    write_params(tmp_path)  # the root: binary, roc_auc, minimums {roc_auc: 0.7}, tolerance 0.002
    params = load_params(
        five_lines(tmp_path, {"task": "regression", "estimator": "lightgbm.LGBMRegressor"})
    )
    gates = params.gates
    assert gates.primary_metric == "rmse"
    assert gates.minimums == {"r2": 0.0}
    rule = gates.rule("no_regression")
    assert rule.tolerance is None and rule.relative_tolerance == 0.01
    assert rule.allowed_drop(50.0)[0] == pytest.approx(0.5)  # 1% of an RMSE of 50
    assert "gates.primary_metric=rmse" in gates.defaulted
    assert "gates.no_regression.relative_tolerance=0.01" in gates.defaulted
    # what was not bound to the task is inherited
    assert gates.rule("latency").batch_size == 200
    # another import path is another estimator: the classifier's hyperparameters stay behind
    assert params.train.hyperparameters == {}


def test_explicit_values_win_over_task_defaults(tmp_path):
    write_params(tmp_path)
    params = load_params(
        overlay(
            tmp_path,
            "extends: ../../params.yaml\n"
            + yaml.safe_dump(
                {
                    "data": WINE_DATA,
                    "train": {"task": "multiclass"},
                    "gates": {
                        "primary_metric": "macro_f1",
                        "minimums": {"macro_f1": 0.8},
                        "no_regression": {"tolerance": 0.01},
                        "fairness": {"enabled": False},
                    },
                    "registry": {"model_name": "wine"},
                    "deploy": {"deployment": "wine-model"},
                }
            ),
        )
    )
    assert params.gates.primary_metric == "macro_f1"
    assert params.gates.minimums == {"macro_f1": 0.8}
    assert params.gates.rule("no_regression").tolerance == 0.01
    assert not any(
        d.startswith(("gates.primary", "gates.minimums")) for d in params.gates.defaulted
    )


def test_replace_marker_and_empty_mapping_replace_the_inherited_mapping(tmp_path):
    write_params(tmp_path)
    base = (
        "extends: ../../params.yaml\n"
        "registry: {model_name: wine}\n"
        "deploy: {deployment: wine-model}\n"
    )
    replaced = load_params(
        overlay(tmp_path, base + "train:\n  hyperparameters: !replace {num_leaves: 7}\n")
    )
    assert replaced.train.hyperparameters == {"num_leaves": 7}
    emptied = load_params(overlay(tmp_path, base + "train:\n  hyperparameters: {}\n"))
    assert emptied.train.hyperparameters == {}
    merged = load_params(overlay(tmp_path, base + "train:\n  hyperparameters: {num_leaves: 7}\n"))
    assert merged.train.hyperparameters["learning_rate"] == 0.05  # no marker: merged
    with pytest.raises(ConfigError, match="!replace tags a mapping"):
        load_params(overlay(tmp_path, base + "train:\n  seed: !replace 3\n"))


def test_a_hyperparameter_the_estimator_does_not_take_is_refused_at_load(tmp_path):
    write_params(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_params(
            five_lines(
                tmp_path,
                {
                    "task": "multiclass",
                    "estimator": "sklearn.linear_model.LogisticRegression",
                    "hyperparameters": {"C": 0.5, "num_leaves": 7},
                },
            )
        )
    message = str(caught.value)
    assert "train.hyperparameters.num_leaves" in message and "LogisticRegression" in message
    assert "C, class_weight" in message  # the estimator's own parameters, to pick from


def test_a_regressor_for_a_classification_label_is_refused_at_load(tmp_path):
    write_params(tmp_path)
    with pytest.raises(ConfigError, match="not a classifier"):
        load_params(
            five_lines(tmp_path, {"task": "multiclass", "estimator": "lightgbm.LGBMRegressor"})
        )


def test_no_regression_tolerance_relative_to_the_champions_value():
    from types import SimpleNamespace

    from tasks.gates.no_regression import NoRegressionGate, NoRegressionParams

    def decide(rule, candidate, champion):
        evidence = SimpleNamespace(
            primary_metric="rmse",
            candidate_metrics={"rmse": candidate},
            champion_metrics={"rmse": champion},
        )
        (result,) = NoRegressionGate(rule).evaluate(evidence)
        return result

    relative = NoRegressionParams(relative_tolerance=0.01)
    assert decide(relative, 50.4, 50.0).status == "passed"  # 0.4 worse, 0.5 tolerated
    failed = decide(relative, 50.6, 50.0)
    assert failed.status == "failed" and "1% of the champion's" in failed.reason
    # the old absolute default on an RMSE scale: any change of 0.01 rejects
    assert decide(NoRegressionParams(tolerance=0.002), 50.01, 50.0).status == "failed"
    with pytest.raises(ValueError, match="not both"):
        NoRegressionParams(tolerance=0.1, relative_tolerance=0.01)


def test_the_readmes_two_overlays_load(tmp_path):
    from tests.helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    start = readme.index("```yaml\n# models.d/wine/params.yaml")
    block = readme[start + len("```yaml\n") : readme.index("```", start + 7)]
    write_params(tmp_path)
    loaded = {}
    for doc in block.split("---\n"):
        name = doc.splitlines()[0].split("/")[1]
        folder = tmp_path / "models.d" / name
        folder.mkdir(parents=True)
        (folder / "params.yaml").write_text(doc)
        loaded[name] = load_params(folder / "params.yaml")
    assert loaded["wine"].train.hyperparameters == {"max_iter": 1000}
    assert loaded["wine"].gates.primary_metric == "log_loss"
    assert loaded["diabetes"].gates.primary_metric == "rmse"
    assert loaded["diabetes"].train.hyperparameters == {"n_estimators": 100, "verbose": -1}


def test_the_gate_report_says_which_values_were_task_defaults(tmp_path):
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    from tasks.evaluate import compare

    frame = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
    features = [c for c in frame.columns if c != "progression"]
    write_params(tmp_path)
    params = load_params(
        overlay(
            tmp_path,
            "extends: ../../params.yaml\n"
            + yaml.safe_dump(
                {
                    "data": {**WINE_DATA, "label": "progression", "numeric_features": features},
                    "train": {"task": "regression", "estimator": "lightgbm.LGBMRegressor"},
                    "gates": {
                        "fairness": {"enabled": False},
                        "latency": {"enabled": False},
                        "predict_memory": {"enabled": False},
                    },
                    "registry": {"model_name": "wine"},
                    "deploy": {"deployment": "wine-model"},
                }
            ),
        )
    )
    columns = ColumnTransformer([("features", "passthrough", features)])
    model = make_pipeline(columns, LinearRegression()).fit(frame, frame["progression"])
    report = compare(model, None, frame, params.gates, params.data, task="regression")
    note = next(n for n in report.notes if n.startswith("task defaults"))
    assert "gates.primary_metric=rmse" in note and "gates.minimums={r2: 0.0}" in note
    assert report.primary_metric == "rmse"
    assert {g.name: g.status for g in report.gates}["minimum_r2"] == "passed"
