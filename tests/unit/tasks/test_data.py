import numpy as np
import pandas as pd
import pytest

from tasks.data import DataError, corrupt_batch, make_batch, read_batch, split_holdout
from tests.helpers import small_params


def test_make_batch_is_deterministic_and_realistic():
    a, b = make_batch(3, 2_000, seed=1), make_batch(3, 2_000, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(make_batch(4, 2_000, seed=1))
    assert a["customer_id"].is_unique
    assert set(a["churned"].unique()) == {0, 1}
    assert 0.05 < a["churned"].mean() < 0.5
    assert a["event_time"].dt.normalize().nunique() == 1  # one day per batch
    assert a.isna().sum().sum() == 0


def test_batch_has_the_features_params_declare(tmp_path):
    params = small_params(tmp_path)
    df = make_batch(1, 500)
    for column in [*params.data.features, params.data.label, params.data.sensitive_column]:
        assert column in df.columns
    assert len(params.data.numeric_features) + len(params.data.categorical_features) >= 15


def test_drift_moves_features_and_the_label_mechanism():
    calm, drifted = make_batch(1, 50_000, drift=0.0), make_batch(1, 50_000, drift=1.0)
    share = lambda df: (df["contract"] == "month-to-month").mean()  # noqa: E731
    assert share(drifted) > share(calm) + 0.1  # covariate drift
    assert drifted["monthly_charges"].mean() > calm["monthly_charges"].mean() + 5
    rate = lambda df: df.groupby("support_tickets_90d")["churned"].mean()  # noqa: E731
    slope = lambda df: np.polyfit(rate(df).index[:5], rate(df).values[:5], 1)[0]  # noqa: E731
    assert slope(drifted) > slope(calm)  # concept drift: tickets matter more


def test_holdout_split_is_stable_and_sized(tmp_path):
    params = small_params(tmp_path)
    df = make_batch(1, 10_000)
    train, holdout = split_holdout(df, params.data)
    _train2, holdout2 = split_holdout(df.sample(frac=1.0, random_state=3), params.data)
    assert set(holdout["customer_id"]) == set(holdout2["customer_id"])
    assert 0.17 < len(holdout) / len(df) < 0.23
    assert not set(train["customer_id"]) & set(holdout["customer_id"])


def test_truncated_parquet_is_a_named_data_error(tmp_path):
    path = tmp_path / "batch.parquet"
    make_batch(1, 1_000).to_parquet(path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="unreadable"):
        read_batch(path)
    with pytest.raises(DataError, match="does not exist"):
        read_batch(tmp_path / "missing.parquet")


def test_corrupt_batch_breaks_the_contract_in_named_ways():
    bad = corrupt_batch(make_batch(1, 2_000))
    assert bad["monthly_charges"].isna().any()
    assert (bad["tenure_months"] < 0).any()
    assert "weekly" in set(bad["contract"])
    assert not bad["customer_id"].is_unique
