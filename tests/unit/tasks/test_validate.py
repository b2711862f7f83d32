import pytest

from tasks.data import corrupt_batch, make_batch
from tasks.validate import validate_batch
from tests.helpers import small_params


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    return small_params(tmp_path_factory.mktemp("validate"))


@pytest.fixture(scope="module")
def batch():
    return make_batch(2, 3_000)


def test_a_clean_batch_passes(params, batch):
    result = validate_batch(batch, params)
    assert result.success, result.summary()
    assert result.evaluated > 50


def test_corruption_is_reported_per_expectation(params, batch):
    result = validate_batch(corrupt_batch(batch), params)
    assert not result.success
    failed = {(f.column, f.expectation) for f in result.failures}
    assert ("monthly_charges", "expect_column_values_to_not_be_null") in failed
    assert ("tenure_months", "expect_column_values_to_be_between") in failed
    assert ("contract", "expect_column_values_to_be_in_set") in failed
    assert ("customer_id", "expect_column_values_to_be_unique") in failed
    assert "weekly" in result.summary(limit=10)


def test_schema_change_fails_without_raising(params, batch):
    changed = batch.drop(columns=["age"]).rename(columns={"region": "area"})
    result = validate_batch(changed, params)
    assert not result.success
    missing = {f.column for f in result.failures if f.expectation == "expect_column_to_exist"}
    assert missing == {"age", "region"}


@pytest.mark.parametrize(
    ("mutate", "column", "expectation"),
    [
        (lambda df: df.assign(churned=0), "churned", "expect_column_mean_to_be_between"),
        (
            lambda df: df.assign(churned=df["churned"] * 2),
            "churned",
            "expect_column_values_to_be_in_set",
        ),
        (
            lambda df: df.assign(age=df["age"].astype(str)),
            "age",
            "expect_column_values_to_be_in_type_list",
        ),
        (
            lambda df: df.assign(
                event_time=df["event_time"] - __import__("pandas").Timedelta(days=3650)
            ),
            "event_time",
            "expect_column_values_to_be_between",
        ),
        (lambda df: df.head(10), None, "expect_table_row_count_to_be_between"),
    ],
)
def test_each_contract_clause_catches_its_breach(params, batch, mutate, column, expectation):
    result = validate_batch(mutate(batch.copy()), params)
    assert (column, expectation) in {(f.column, f.expectation) for f in result.failures}


def test_an_edited_suite_is_read_again(tmp_path, batch):
    import json

    from tests.helpers import ROOT

    suite = tmp_path / "suite.json"
    spec = json.loads((ROOT / "expectations" / "churn_batch.json").read_text())
    suite.write_text(json.dumps(spec))
    params = small_params(tmp_path / "p", validate={"suite": str(suite)})
    assert validate_batch(batch, params).success
    spec["expectations"].append(
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "age", "max_value": 1}}
    )
    suite.write_text(json.dumps(spec, indent=2))  # another size: seen as a new file content
    result = validate_batch(batch, params)
    assert [(f.column, f.expectation) for f in result.failures] == [
        ("age", "expect_column_max_to_be_between")
    ]
    assert "observed" in result.failures[0].detail


def test_a_missing_suite_is_a_config_error(tmp_path, batch):
    from tasks.config import ConfigError

    params = small_params(tmp_path, validate={"suite": str(tmp_path / "nope.json")})
    with pytest.raises(ConfigError, match=r"nope\.json does not exist"):
        validate_batch(batch, params)


def test_validation_configures_no_data_docs_site(params, batch, caplog):
    """Validation builds no data docs: its GX context names no docs site, temporary or not."""
    from tasks import validate

    validate._batch_definition.cache_clear()
    with caplog.at_level("INFO", logger="great_expectations"):
        result = validate_batch(batch, params)
    assert result.success, result.summary()
    context = validate._batch_definition().data_asset.datasource.data_context
    assert context.variables.data_docs_sites == {}
    assert not [r for r in caplog.records if "docs site" in r.getMessage()]
