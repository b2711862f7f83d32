"""Profiling a trusted batch into a first data contract: how each column is used and which
Great Expectations 1.x expectations check it (``ctflows init``, ctflows/onboard.py, writes
them). A file it cannot read or a column type it does not know is refused."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctflows.labels import infer_task, label_expectations
from ctflows.operate import Refused

if TYPE_CHECKING:
    import pandas as pd

MAX_CATEGORIES = 50  # more distinct strings than this is free text or an id, not a category
LABEL_NAMES = ("label", "target", "churned", "y", "class", "outcome")
INT_TYPES = ["int64", "int32", "int16", "int8", "Int64", "Int32"]
FLOAT_TYPES = ["float64", "float32", "Float64"]
TIME_TYPES = ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"]


@dataclass(frozen=True)
class Profile:
    """How each column is used and checked."""

    numeric: list[str]
    categorical: list[str]
    ignored: dict[str, str]  # column -> why it is not a feature
    label: str
    id_column: str | None
    timestamp_column: str | None
    expectations: list[dict[str, Any]]
    task: str = "binary"
    notes: tuple[str, ...] = ()  # consequences the user is told once (no id column, ...)


def read_trusted(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise Refused(f"cannot read {path}: no such file")
    try:
        if path.suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if path.suffix in {".csv", ".txt", ".gz"}:
            return parse_dates(pd.read_csv(path))
    except (OSError, ValueError, ImportError) as exc:
        raise Refused(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    raise Refused(f"cannot read {path}: expected a .parquet or .csv file")


DATE_LIKE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"


def parse_dates(df: pd.DataFrame) -> pd.DataFrame:
    """String columns whose every value is an ISO date or date-time become datetimes (a CSV
    has no types; the Parquet batch a run reads does)."""
    import pandas as pd

    out = df.copy()
    for column in df.columns:
        s = df[column]
        if not pd.api.types.is_object_dtype(s) and not pd.api.types.is_string_dtype(s):
            continue
        values = s.dropna()
        if values.empty or not values.map(lambda v: isinstance(v, str)).all():
            continue
        if values.str.fullmatch(DATE_LIKE).all():
            out[column] = pd.to_datetime(
                s, format="ISO8601", utc=values.str.contains(r"Z|[+-]\d{2}:?\d{2}$").any()
            )
    return out


def _kind(df: pd.DataFrame, column: str) -> str:
    """numeric, boolean, string, datetime; Refused for anything else."""
    import pandas as pd
    from pandas.api import types

    s = df[column]
    if types.is_bool_dtype(s):
        return "boolean"
    if types.is_numeric_dtype(s) and not types.is_complex_dtype(s):
        return "numeric"
    if types.is_datetime64_any_dtype(s):
        return "datetime"
    if types.is_string_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype):
        values = s.dropna()
        if values.map(lambda v: isinstance(v, str)).all():
            return "string"
        odd = values[~values.map(lambda v: isinstance(v, str))].iloc[0]
        raise Refused(
            f"column {column!r} holds {type(odd).__name__} values (e.g. {odd!r:.60}), a type "
            "ctflows cannot profile; convert it to numbers, strings or datetimes first"
        )
    raise Refused(
        f"column {column!r} has dtype {s.dtype}, a type ctflows cannot profile "
        "(known: numbers, booleans, strings, datetimes)"
    )


NONE = {"none", "null", ""}  # --id-column none: no id column, even if one could be guessed


def _pick(columns: list[str], given: str | None, guesses: list[str], what: str, flag: str) -> str:
    if given:
        if given not in columns:
            raise Refused(f"{what} {given!r} is not a column; columns: {', '.join(columns)}")
        return given
    if guesses:
        return guesses[0]
    raise Refused(f"no {what} found among {', '.join(columns)}: name it with {flag}")


def _optional(columns: list[str], given: str | None, guesses: list[str], what: str) -> str | None:
    if given is not None and given.lower() in NONE:
        return None
    if given:
        if given not in columns:
            raise Refused(f"{what} {given!r} is not a column; columns: {', '.join(columns)}")
        return given
    return guesses[0] if guesses else None


def _expect(kind: str, column: str | None = None, **kwargs: Any) -> dict[str, Any]:
    args = {"column": column, **kwargs} if column else kwargs
    return {"type": f"expect_{kind}", "kwargs": args, "meta": {"profiled": True}}


def _widen(low: float, high: float, margin: float, integer: bool) -> tuple[float, float]:
    span = (high - low) or abs(high) or 1.0
    lo, hi = low - margin * span, high + margin * span
    if low >= 0:
        lo = max(lo, 0.0)
    if integer:
        return float(math.floor(lo)), float(math.ceil(hi))
    return round(lo, 6), round(hi, 6)


def profile_frame(
    df: pd.DataFrame,
    label: str | None,
    id_column: str | None,
    timestamp_column: str | None,
    margin: float,
    task: str | None = None,
) -> Profile:
    import pandas as pd

    columns = [str(c) for c in df.columns]
    if len(df) == 0:
        raise Refused("the batch has no rows: nothing to profile")
    kinds = {c: _kind(df, c) for c in columns}
    label = _pick(columns, label, [c for c in LABEL_NAMES if c in columns], "label", "--label")
    task = infer_task(df[label], task)
    ids = [
        c for c in columns if (c == "id" or c.endswith("_id")) and c != label and df[c].is_unique
    ]
    id_column = _optional(columns, id_column, ids, "id column")
    times = [c for c in columns if kinds[c] == "datetime" and c != label]
    timestamp_column = _optional(columns, timestamp_column, times, "timestamp column")
    notes = []
    if id_column is None:
        notes.append(
            "no id column (none named *_id or id with unique values; --id-column names one): "
            "the holdout is split on a hash of each whole row"
        )
    if timestamp_column is None:
        notes.append(
            "no timestamp column (no datetime column; --timestamp-column names one): "
            "nothing is kept out of the features as time"
        )

    expectations = [
        _expect("table_columns_to_match_set", column_set=columns, exact_match=True),
        _expect(
            "table_row_count_to_be_between",
            min_value=max(1, len(df) // 10),
            max_value=len(df) * 1000,
        ),
    ]
    numeric, categorical, ignored = [], [], {}
    for c in columns:
        s, kind = df[c], kinds[c]
        null_rate = float(s.isna().mean())
        if null_rate == 0:
            expectations.append(_expect("column_values_to_not_be_null", c))
        else:
            mostly = max(0.0, round(1 - null_rate - margin * max(null_rate, 0.01), 4))
            expectations.append(_expect("column_values_to_not_be_null", c, mostly=mostly))
        values = s.dropna()
        if kind == "numeric":
            integer = pd.api.types.is_integer_dtype(s)
            types_ = INT_TYPES if integer else FLOAT_TYPES
            expectations.append(_expect("column_values_to_be_in_type_list", c, type_list=types_))
            if len(values) and c != label:
                lo, hi = _widen(float(values.min()), float(values.max()), margin, integer)
                bounds = (
                    {"min_value": int(lo), "max_value": int(hi)}
                    if integer
                    else {"min_value": lo, "max_value": hi}
                )
                expectations.append(_expect("column_values_to_be_between", c, **bounds))
        elif kind == "datetime":
            expectations.append(
                _expect("column_values_to_be_in_type_list", c, type_list=TIME_TYPES)
            )
            if len(values):
                lo_t, hi_t = values.min(), values.max()
                span = (hi_t - lo_t) or pd.Timedelta(days=1)
                expectations.append(
                    _expect(
                        "column_values_to_be_between",
                        c,
                        min_value=(lo_t - margin * span).isoformat(),
                        max_value=(hi_t + 10 * margin * span + pd.Timedelta(days=365)).isoformat(),
                    )
                )
        elif kind in {"string", "boolean"} and values.nunique() <= MAX_CATEGORIES:
            domain_c = sorted(values.unique().tolist(), key=str)
            expectations.append(_expect("column_values_to_be_in_set", c, value_set=domain_c))
        if c == id_column:
            expectations.append(_expect("column_values_to_be_unique", c))
        if c in {label, id_column, timestamp_column}:
            continue
        if kind == "numeric":
            numeric.append(c)
        elif kind in {"string", "boolean"} and values.nunique() <= MAX_CATEGORIES:
            categorical.append(c)
        else:
            ignored[c] = f"{kind} with {values.nunique()} distinct values"
    expectations = [
        e
        for e in expectations
        if not (
            e["kwargs"].get("column") == label and e["type"] == "expect_column_values_to_be_in_set"
        )
    ]
    expectations += label_expectations(df[label], task, margin)
    if not numeric and not categorical:
        raise Refused("no column left to use as a feature after the label, id and timestamp")
    return Profile(
        numeric,
        categorical,
        ignored,
        label,
        id_column,
        timestamp_column,
        expectations,
        task,
        tuple(notes),
    )
