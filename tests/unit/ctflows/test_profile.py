import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ctflows.onboard import init_model
from ctflows.operate import Refused
from ctflows.profile import profile_frame, read_trusted
from tasks.config import load_params
from tests.helpers import write_params


def trusted(rows=400, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "account_id": np.arange(rows),
            "seen_at": pd.date_range("2026-01-01", periods=rows, freq="h"),
            "spend": rng.gamma(2.0, 30.0, rows),
            "visits": rng.integers(0, 40, rows),
            "plan": rng.choice(["basic", "pro"], rows),
            "note": [f"free text {i}" for i in range(rows)],
            "converted": rng.integers(0, 2, rows),
        }
    )


def test_profile_fills_columns_types_ranges_and_label_domain():
    df = trusted()
    p = profile_frame(df, "converted", None, None, 0.1)
    assert (p.id_column, p.timestamp_column) == ("account_id", "seen_at")
    assert p.numeric == ["spend", "visits"] and p.categorical == ["plan"]
    assert "note" in p.ignored
    by = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in p.expectations}
    visits = by[("expect_column_values_to_be_between", "visits")]
    assert visits["min_value"] == 0 and visits["max_value"] >= df.visits.max()
    assert by[("expect_column_values_to_be_in_set", "plan")]["value_set"] == ["basic", "pro"]
    label_sets = [
        e["kwargs"]["value_set"]
        for e in p.expectations
        if e["kwargs"].get("column") == "converted" and "value_set" in e["kwargs"]
    ]
    assert label_sets[0] == [0, 1] and [1] in label_sets  # the domain, then each class's rate
    assert ("expect_column_values_to_be_unique", "account_id") in by


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (trusted().assign(converted=1), "one value only"),
        (trusted().assign(converted=[None] + [1.0] * 399), "1 null values"),
        (trusted().assign(extra=[complex(1, 1)] * 400), "'extra'"),
    ],
)
def test_profile_refuses_what_it_cannot_use(frame, message):
    with pytest.raises(Refused, match=message):
        profile_frame(frame, "converted", None, None, 0.1)


def test_init_writes_a_suite_the_batch_passes_and_params_that_load(tmp_path):
    write_params(tmp_path)
    trusted().to_parquet(tmp_path / "trusted.parquet")
    written = init_model(
        tmp_path,
        "upsell",
        tmp_path / "trusted.parquet",
        label="converted",
        repo=tmp_path / "data-repo",
        create_repo=True,
    )
    params = load_params(written.params_file)
    assert params.data.numeric_features == ["spend", "visits"]
    assert params.data.path == "data/upsell.parquet"
    assert params.data.repo == str(tmp_path / "data-repo")
    assert params.registry.model_name == "upsell"
    assert params.validate_.suite == tmp_path / "models.d" / "upsell" / "suite.json"
    suite = json.loads(params.validate_.suite.read_text())
    assert len(suite["expectations"]) == written.expectations > 15
    raw = yaml.safe_load(Path(written.params_file).read_text())
    assert raw["extends"] == "../../params.yaml"
    # the project's sensitive column (gender) is not this data's: not inherited, nothing missing
    assert params.data.sensitive_column is None
    from tasks.data import check_columns

    check_columns(list(trusted().columns), params)
    with pytest.raises(Refused, match="already exists"):
        init_model(tmp_path, "upsell", tmp_path / "trusted.parquet", label="converted")


def wine_and_diabetes(folder):
    from sklearn.datasets import load_diabetes, load_wine

    wine = load_wine(as_frame=True)
    frame = wine.frame.rename(columns={"target": "cultivar"})
    frame["cultivar"] = frame["cultivar"].map(dict(enumerate(wine.target_names)))
    diabetes = load_diabetes(as_frame=True, scaled=False).frame
    diabetes = diabetes.rename(columns={"target": "progression"})
    frame.to_csv(folder / "wine.csv", index=False)
    diabetes.to_csv(folder / "diabetes.csv", index=False)
    return frame, diabetes


@pytest.mark.parametrize(
    ("column", "values", "task"),
    [
        ("y", [0, 1] * 50, "binary"),
        ("y", ["red", "green", "blue", "red"] * 25, "multiclass"),
        ("y", list(range(5)) * 20, "multiclass"),
        ("y", [0.5 * i for i in range(100)], "regression"),
        ("y", list(range(100)), "regression"),
    ],
)
def test_the_task_is_read_from_the_label(column, values, task):
    df = pd.DataFrame({"x": np.arange(len(values), dtype=float), column: values})
    p = profile_frame(df, column, None, None, 0.1)
    assert p.task == task
    assert (p.id_column, p.timestamp_column) == (None, None)
    assert any("no id column" in n for n in p.notes) and any("no timestamp" in n for n in p.notes)


def test_task_override_must_fit_the_label():
    df = pd.DataFrame({"x": np.arange(100.0), "y": ["a", "b", "c", "d"] * 25})
    with pytest.raises(Refused, match="not numbers"):
        profile_frame(df, "y", None, None, 0.1, task="regression")
    with pytest.raises(Refused, match="4 distinct values"):
        profile_frame(df, "y", None, None, 0.1, task="binary")
    ints = pd.DataFrame({"x": np.arange(100.0), "y": list(range(5)) * 20})
    assert profile_frame(ints, "y", None, None, 0.1, task="regression").task == "regression"


def test_csv_dates_and_times_are_detected(tmp_path):
    df = trusted(50)
    df.to_csv(tmp_path / "t.csv", index=False)
    read = read_trusted(tmp_path / "t.csv")
    assert str(read["seen_at"].dtype).startswith("datetime64")
    p = profile_frame(read, "converted", None, None, 0.1)
    assert p.timestamp_column == "seen_at" and "seen_at" not in p.numeric + p.categorical


def test_multiclass_and_regression_from_csv_check_the_label_by_task(tmp_path):
    write_params(tmp_path)
    wine_and_diabetes(tmp_path)
    repo = tmp_path / "data"
    w = init_model(
        tmp_path, "wine", tmp_path / "wine.csv", label="cultivar", repo=repo, create_repo=True
    )
    d = init_model(tmp_path, "diabetes", tmp_path / "diabetes.csv", label="progression", repo=repo)
    assert (w.task, d.task) == ("multiclass", "regression")
    wine_params, diabetes_params = load_params(w.params_file), load_params(d.params_file)
    assert wine_params.gates.primary_metric == "log_loss"
    assert diabetes_params.train.estimator == "lightgbm.LGBMRegressor"
    assert diabetes_params.gates.primary_metric == "rmse"
    wine_suite = json.loads(wine_params.validate_.suite.read_text())["expectations"]
    label_checks = [e for e in wine_suite if e["kwargs"].get("column") == "cultivar"]
    class_sets = [e["kwargs"]["value_set"] for e in label_checks if "value_set" in e["kwargs"]]
    assert ["class_0", "class_1", "class_2"] in class_sets  # the class set
    assert ["class_0"] in class_sets  # and each class's rate
    reg_suite = json.loads(diabetes_params.validate_.suite.read_text())["expectations"]
    reg = {e["type"] for e in reg_suite if e["kwargs"].get("column") == "progression"}
    assert {"expect_column_values_to_be_between", "expect_column_stdev_to_be_between"} <= reg
    # the data is DVC-tracked at HEAD of the data repository, its bytes on the remote
    from tasks.data_versions import resolve_version

    version = resolve_version(diabetes_params.data.repo, diabetes_params.data.path, "HEAD")
    assert version.md5 == d.data_md5
    remote = tmp_path / "data-dvc-remote"
    assert any(remote.rglob(d.data_md5[2:])), "the batch was not pushed to the remote"


def test_init_in_a_one_model_project_keeps_the_root_model(tmp_path):
    from ctflows.catalog import discover

    write_params(tmp_path)
    trusted().to_parquet(tmp_path / "trusted.parquet")
    (before,) = discover(tmp_path)
    written = init_model(
        tmp_path,
        "upsell",
        tmp_path / "trusted.parquet",
        label="converted",
        repo=tmp_path / "repo",
        create_repo=True,
    )
    assert written.kept == before.name == "churn-classifier"
    models = {m.name: m for m in discover(tmp_path)}
    assert set(models) == {"churn-classifier", "upsell"}
    kept = models["churn-classifier"].params()
    assert kept.registry.model_name == "churn-classifier"
    assert kept.data.path == "data/batch.parquet" and kept.data.repo == str(tmp_path)


def test_a_data_file_dvc_cannot_add_is_refused_before_anything_is_written(tmp_path):
    import subprocess

    write_params(tmp_path)
    trusted().to_parquet(tmp_path / "trusted.parquet")
    repo = tmp_path / "repo"
    init_model(
        tmp_path,
        "one",
        tmp_path / "trusted.parquet",
        label="converted",
        repo=repo,
        create_repo=True,
    )
    (repo / "data" / "two.parquet").write_bytes(b"in git")
    subprocess.run(["git", "add", "-f", "data/two.parquet"], cwd=repo, check=True)
    with pytest.raises(Refused, match="tracked by git"):
        init_model(tmp_path, "two", tmp_path / "trusted.parquet", label="converted", repo=repo)
    with pytest.raises(Refused, match="does not exist: pass --create-repo"):
        init_model(
            tmp_path, "two", tmp_path / "trusted.parquet", label="converted", repo=tmp_path / "nope"
        )
    with pytest.raises(Refused, match="runs read Parquet"):
        init_model(
            tmp_path,
            "two",
            tmp_path / "trusted.parquet",
            label="converted",
            repo=repo,
            path="x.csv",
        )
    assert not (tmp_path / "models.d" / "two").exists() and not (tmp_path / "nope").exists()
