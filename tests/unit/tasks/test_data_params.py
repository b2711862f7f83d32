"""Optional id, timestamp and sensitive columns and what each absence means (issue 9, item 17)."""

import numpy as np
import pytest

from tasks.config import ConfigError, load_params
from tasks.data import MissingColumnsError, check_columns, make_batch, split_holdout
from tests.helpers import small_params, write_params

NO_ROLES = {"id_column": None, "timestamp_column": None, "sensitive_column": None}


class ByTenure:
    """A fixed scorer: enough to run the gates without training."""

    def predict_proba(self, X):
        p = np.clip(1 - X["tenure_months"].to_numpy() / 80, 0.01, 0.99)
        return np.column_stack([1 - p, p])


def test_data_without_id_timestamp_or_sensitive_column_is_valid_params(tmp_path):
    params = small_params(tmp_path, data=NO_ROLES)
    assert params.data.id_column is None
    assert params.data.sensitive_column is None
    assert params.gates.fairness.sensitive_column is None
    df = make_batch(1, 500).drop(columns=["customer_id", "event_time", "gender"])
    check_columns(list(df.columns), params)  # nothing missing: the absent roles are not asked for


def test_without_an_id_the_holdout_is_split_by_row_hash(tmp_path):
    data = small_params(tmp_path, data=NO_ROLES).data
    df = make_batch(1, 10_000).drop(columns=["customer_id"])
    train, holdout = split_holdout(df, data)
    _, holdout2 = split_holdout(df.sample(frac=1.0, random_state=3), data)
    as_rows = lambda frame: set(map(tuple, frame.astype(str).to_numpy()))  # noqa: E731
    assert as_rows(holdout) == as_rows(holdout2)  # stable under row order
    assert not as_rows(train) & as_rows(holdout)
    assert 0.17 < len(holdout) / len(df) < 0.23
    reseeded = data.model_copy(update={"split_seed": 8})
    assert as_rows(split_holdout(df, reseeded)[1]) != as_rows(holdout)


def test_without_a_sensitive_column_the_fairness_gates_are_skipped_and_said(tmp_path):
    from tasks.evaluate import compare

    params = small_params(tmp_path, data=NO_ROLES)
    holdout = make_batch(2, 2_000).drop(columns=["gender"])
    report = compare(ByTenure(), None, holdout, params.gates, params.data)
    gate = report.gate("fairness")
    assert gate.status == "skipped"
    assert "no sensitive column" in gate.reason
    (row,) = [line for line in report.to_markdown().splitlines() if line.startswith("| fairness ")]
    assert "skipped" in row and "no sensitive column" in row  # said in the report


def test_the_sensitive_column_has_one_source(tmp_path):
    params = small_params(tmp_path, data={"sensitive_column": "sex"})
    assert params.gates.fairness.sensitive_column == "sex"
    duplicated = write_params(tmp_path / "dup", gates={"fairness": {"sensitive_column": "gender"}})
    with pytest.raises(ConfigError, match=r"gates\.fairness\.sensitive_column"):
        load_params(duplicated)


def test_the_sensitive_column_is_kept_out_of_the_features(tmp_path):
    path = write_params(tmp_path, data={"sensitive_column": "region"})
    with pytest.raises(ConfigError, match="sensitive column used as a feature"):
        load_params(path)


def test_the_fairness_gates_read_data_sensitive_column(tmp_path):
    from tasks.evaluate import compare

    params = small_params(tmp_path, data={"sensitive_column": "gender"})
    holdout = make_batch(2, 2_000)
    report = compare(ByTenure(), None, holdout, params.gates, params.data)
    parity = report.gate("demographic_parity")
    assert "over gender" in parity.reason
    with pytest.raises(MissingColumnsError, match=r"data\.sensitive_column = 'gender'"):
        check_columns(list(holdout.drop(columns=["gender"]).columns), params)


def test_slice_columns_are_checked_when_the_fairness_gates_run(tmp_path):
    params = small_params(tmp_path, gates={"fairness": {"slice_columns": ["planet"]}})
    columns = list(make_batch(1, 100).columns)
    with pytest.raises(MissingColumnsError, match=r"gates.fairness.slice_columns\[0\] = 'planet'"):
        check_columns(columns, params)
