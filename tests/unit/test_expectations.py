"""The data contract in expectations/: every column bounded, time included (issue 9, item 21)."""

import json

import pandas as pd
import pytest

from tasks.data import make_batch
from tasks.validate import validate_batch
from tests.helpers import ROOT, small_params

SUITE = ROOT / "expectations" / "churn_batch.json"


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    return small_params(tmp_path_factory.mktemp("expectations"))


@pytest.fixture(scope="module")
def batch():
    return make_batch(3, 2_000)


def test_every_column_is_bounded_on_both_sides_or_by_a_value_set():
    spec = json.loads(SUITE.read_text())
    columns = next(
        e["kwargs"]["column_set"]
        for e in spec["expectations"]
        if e["type"] == "expect_table_columns_to_match_set"
    )
    bounded = {
        e["kwargs"]["column"]
        for e in spec["expectations"]
        if e["type"] == "expect_column_values_to_be_in_set"
        or (
            e["type"] == "expect_column_values_to_be_between"
            and e["kwargs"].get("min_value") is not None
            and e["kwargs"].get("max_value") is not None
        )
    }
    assert sorted(set(columns) - bounded) == []


@pytest.mark.parametrize(
    ("mutate", "column"),
    [
        # events from the future: no system logs what has not happened yet
        (lambda df: df.assign(event_time=pd.Timestamp.now() + pd.Timedelta(days=30)), "event_time"),
        # events from before the source existed
        (lambda df: df.assign(event_time=pd.Timestamp("2025-06-01")), "event_time"),
        (lambda df: df.assign(customer_id=df["customer_id"] + 10**15), "customer_id"),
    ],
)
def test_a_batch_no_real_system_could_produce_is_refused(params, batch, mutate, column):
    assert validate_batch(batch, params).success
    result = validate_batch(mutate(batch.copy()), params)
    failed = {(f.column, f.expectation) for f in result.failures}
    assert (column, "expect_column_values_to_be_between") in failed, result.summary()


def test_todays_batch_passes(params):
    """The time bound moves with the clock: a batch stamped now is plausible."""
    df = make_batch(1, 2_000)
    df["event_time"] = pd.Timestamp.now().floor("s") - pd.to_timedelta(df.index % 3600, unit="s")
    assert validate_batch(df, params).success, validate_batch(df, params).summary()
