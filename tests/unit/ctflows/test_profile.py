import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ctflows.operate import Refused
from ctflows.profile import init_model, profile_frame
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
    assert by[("expect_column_values_to_be_in_set", "converted")]["value_set"] == [0, 1]
    assert ("expect_column_values_to_be_unique", "account_id") in by


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (trusted().assign(converted=1), "two-valued"),
        (trusted().assign(extra=[complex(1, 1)] * 400), "'extra'"),
        (trusted().drop(columns="seen_at"), "--timestamp-column"),
    ],
)
def test_profile_refuses_what_it_cannot_use(frame, message):
    with pytest.raises(Refused, match=message):
        profile_frame(frame, "converted", None, None, 0.1)


def test_init_writes_a_suite_the_batch_passes_and_params_that_load(tmp_path):
    write_params(tmp_path)
    trusted().to_parquet(tmp_path / "trusted.parquet")
    written = init_model(tmp_path, "upsell", tmp_path / "trusted.parquet", label="converted")
    params = load_params(written.params_file)
    assert params.data.numeric_features == ["spend", "visits"]
    assert params.data.path == "trusted.parquet"
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
