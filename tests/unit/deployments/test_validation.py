"""The per-record check of a /predict body against the model's signature, on its own."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deployments.serving.validation import (
    Column,
    RecordSchema,
    RecordsRefused,
    column_arrays,
    parse_body,
)

SCHEMA = RecordSchema(
    [Column("income", "double"), Column("visits", "long"), Column("city", "string")]
)
GOOD = {"income": 3.5, "visits": 2, "city": "Lyon"}


def refused(records):
    with pytest.raises(RecordsRefused) as caught:
        SCHEMA.check(records)
    return caught.value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("income", "abc"),
        ("income", {}),
        ("income", [1, 2]),
        ("income", True),
        ("income", "3.5"),
        ("visits", 2.5),
        ("visits", "2"),
        ("visits", False),
        ("visits", 2**64),
        ("city", 3),
        ("city", {"name": "Lyon"}),
        ("city", ["Lyon"]),
        ("city", True),
    ],
)
def test_a_value_of_the_wrong_type_names_the_record_and_the_field(field, value):
    error = refused([GOOD, GOOD, {**GOOD, field: value}])
    (problem,) = error.problems
    assert (problem.record, problem.field) == (2, field)
    assert f"record 2 field '{field}'" in error.summary()
    assert error.body()["problems"] == [{"record": 2, "field": field, "problem": problem.problem}]


def test_null_is_missing_and_integral_numbers_and_unseen_categories_pass():
    checked = SCHEMA.check(
        [
            {"income": None, "visits": None, "city": None},
            {"income": 7, "visits": 3.0, "city": "a city never seen in training"},
            GOOD,
        ]
    )
    assert checked.columns == {
        "income": [None, 7.0, 3.5],
        "visits": [None, 3, 2],
        "city": [None, "a city never seen in training", "Lyon"],
    }
    arrays = column_arrays(SCHEMA, checked)
    assert np.isnan(arrays["income"][0]) and arrays["visits"].dtype == np.float64
    complete = column_arrays(SCHEMA, SCHEMA.check([GOOD, GOOD]))
    assert complete["visits"].dtype == np.int64


def test_each_record_is_checked_for_missing_features_not_the_union_of_the_batch():
    error = refused([GOOD, {"income": 1.0, "visits": 1}, GOOD, {"city": "Nice"}])
    lines = {p.record: p.problem for p in error.problems}
    assert lines == {1: "lacks features ['city']", 3: "lacks features ['income', 'visits']"}
    assert "2 of 4 records refused" in error.summary()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@pytest.mark.parametrize("field", ["income", "customer_id", "nested"])
def test_non_finite_numbers_are_refused_anywhere_in_a_record(literal, field):
    value = f'{{"deep": [1, {literal}]}}' if field == "nested" else literal
    other = f'{{"income": 1, "visits": 1, "city": "x", "{field}": {value}}}'
    text = f'{{"records": [{json.dumps(GOOD)}, {other}]}}'
    error = refused(parse_body(text.encode()))
    assert [(p.record, p.field) for p in error.problems] == [(1, field)]
    assert "non-finite" in error.problems[0].problem


def test_fields_the_model_does_not_use_are_kept_as_received():
    record = {**GOOD, "customer_id": 2**70, "note": {"a": [1, "b"]}}
    assert SCHEMA.check([record]).records == [record]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"rows": []}',
        b'{"records": {}}',
        b'{"records": []}',
        b'{"records": [1, 2',
        b'{"records": [1,]}',
        b'{"records": [] } trailing',
        b"\xff\xfe",
        b'{"records": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    ],
)
def test_a_body_that_is_not_a_request_is_refused_saying_what_is_expected(body):
    with pytest.raises(RecordsRefused) as caught:
        SCHEMA.check(parse_body(body))
    assert caught.value.records == 0 and '{"records": [' in caught.value.summary()


def test_parse_body_reads_records_as_json_loads_does():
    body = (
        b' { "x": [1, {"y": 2}] , "records" : [ {"a": 1.5} , {"b": [1, "\\u00e9"]} ] , "z": null }'
    )
    assert parse_body(body) == json.loads(body)["records"]
    again = b'{"records": [{"a": 1}], "records": [{"a": 2}]}'  # the last key wins, as in json
    assert parse_body(again) == [{"a": 2}]


def test_records_not_objects_are_named():
    error = refused([GOOD, 3, [GOOD]])
    assert [(p.record, p.field) for p in error.problems] == [(1, None), (2, None)]


def test_many_problems_are_counted_and_the_first_listed():
    error = refused([{"income": "x", "visits": "y", "city": 1}] * 30)
    assert error.body()["problem_count"] == 90 and len(error.body()["problems"]) == 20
    assert "and 70 more problems" in error.summary()


def test_a_signature_from_mlflow_keeps_its_column_types():
    import pandas as pd
    from mlflow.models import infer_signature

    frame = pd.DataFrame({"x": [1.5], "n": [2], "s": ["a"], "b": [True]})
    schema = RecordSchema.from_mlflow(infer_signature(frame).inputs)
    assert [(c.name, c.type) for c in schema.columns] == [
        ("x", "double"),
        ("n", "long"),
        ("s", "string"),
        ("b", "boolean"),
    ]
    assert RecordSchema.from_mlflow(None).columns == ()
