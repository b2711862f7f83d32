import numpy as np
import pytest

from tasks.data import make_batch, split_holdout
from tasks.train import code_version, make_estimator, train_model
from tests.helpers import ROOT, small_params


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    return small_params(tmp_path_factory.mktemp("train"))


def test_pipeline_scores_raw_batches_including_unseen_categories(params):
    model = train_model(make_batch(1, 4_000), params)
    new = make_batch(9, 500, drift=0.5)
    new.loc[:10, "region"] = "atlantis"  # a category the model never saw
    proba = model.predict_proba(new)  # raw rows, extra columns and all
    assert proba.shape == (500, 2)
    assert np.all((proba >= 0) & (proba <= 1))


def test_training_is_reproducible(params):
    df = make_batch(1, 4_000)
    a, b = train_model(df, params), train_model(df, params)
    holdout = make_batch(2, 1_000)
    np.testing.assert_array_equal(a.predict_proba(holdout), b.predict_proba(holdout))


def test_learns_something(params):
    train, holdout = split_holdout(make_batch(1, 8_000), params.data)
    from sklearn.metrics import roc_auc_score

    model = train_model(train, params)
    assert roc_auc_score(holdout["churned"], model.predict_proba(holdout)[:, 1]) > 0.75


def test_any_sklearn_estimator_by_import_path(tmp_path):
    params = small_params(
        tmp_path,
        train={
            "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
            "hyperparameters": {"max_iter": 30},
        },
    )
    model = train_model(make_batch(1, 2_000), params)
    assert type(model.named_steps["model"]).__name__ == "HistGradientBoostingClassifier"
    assert model.named_steps["model"].random_state == params.train.seed


def test_lightgbm_gets_threads_and_seed_explicitly(params):
    estimator = make_estimator(params)
    assert estimator.get_params()["n_jobs"] == params.train.n_jobs
    assert estimator.get_params()["random_state"] == params.train.seed


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ({"estimator": "sklearn.nope.Model"}, "cannot be imported"),
        (
            {
                "estimator": "sklearn.linear_model.LogisticRegression",
                "hyperparameters": {"trees": 3},
            },
            "not parameters",
        ),
    ],
)
def test_bad_estimator_config_is_named(tmp_path, train, match):
    with pytest.raises(ValueError, match=match):
        make_estimator(small_params(tmp_path, train=train))


def test_missing_training_columns_are_named(params):
    with pytest.raises(ValueError, match="churned"):
        train_model(make_batch(1, 500).drop(columns=["churned"]), params)


def test_code_version_is_a_commit_of_this_repo():
    version = code_version(ROOT)
    assert len(version.split("-")[0]) == 40
