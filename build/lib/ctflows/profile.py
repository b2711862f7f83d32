"""`ctflows init MODEL --from PATH`: a first data contract profiled from a trusted batch.

Writes models.d/MODEL/suite.json (Great Expectations 1.x) and models.d/MODEL/params.yaml
(`extends` the project's params.yaml, the columns filled in) only once both are complete and
the batch passes its own suite; a file it cannot read or a column type it does not know stops
it before anything is written.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ctflows.catalog import MODELS_DIR
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
    id_column: str
    timestamp_column: str
    expectations: list[dict[str, Any]]


@dataclass(frozen=True)
class Written:
    params_file: str
    suite_file: str
    columns: int
    expectations: int
    numeric_features: list[str]
    categorical_features: list[str]
    ignored: dict[str, str]


def read_trusted(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise Refused(f"cannot read {path}: no such file")
    try:
        if path.suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if path.suffix in {".csv", ".txt", ".gz"}:
            return pd.read_csv(path)
    except (OSError, ValueError, ImportError) as exc:
        raise Refused(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    raise Refused(f"cannot read {path}: expected a .parquet or .csv file")


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


def _pick(columns: list[str], given: str | None, guesses: list[str], what: str, flag: str) -> str:
    if given:
        if given not in columns:
            raise Refused(f"{what} {given!r} is not a column; columns: {', '.join(columns)}")
        return given
    if guesses:
        return guesses[0]
    raise Refused(f"no {what} found among {', '.join(columns)}: name it with {flag}")


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
) -> Profile:
    import pandas as pd

    columns = [str(c) for c in df.columns]
    if len(df) == 0:
        raise Refused("the batch has no rows: nothing to profile")
    kinds = {c: _kind(df, c) for c in columns}
    label = _pick(columns, label, [c for c in LABEL_NAMES if c in columns], "label", "--label")
    domain = sorted(df[label].dropna().unique().tolist())
    if len(domain) != 2:
        raise Refused(
            f"label {label!r} has {len(domain)} distinct values ({domain[:10]}); ctflows trains "
            "binary classifiers: name a two-valued column with --label"
        )
    ids = [c for c in columns if (c == "id" or c.endswith("_id")) and df[c].is_unique]
    id_column = _pick(columns, id_column, ids, "id column", "--id-column")
    times = [c for c in columns if kinds[c] == "datetime"]
    timestamp_column = _pick(
        columns, timestamp_column, times, "timestamp column", "--timestamp-column"
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
    expectations.append(_expect("column_values_to_be_in_set", label, value_set=domain))
    if all(isinstance(v, int | float | bool) for v in domain):
        rate = float(df[label].astype(float).mean())
        expectations.append(
            _expect(
                "column_mean_to_be_between",
                label,
                min_value=round(max(0.0, rate * (1 - 5 * margin) - 0.01), 4),
                max_value=round(min(1.0, rate * (1 + 5 * margin) + 0.01), 4),
            )
        )
    if not numeric and not categorical:
        raise Refused("no column left to use as a feature after the label, id and timestamp")
    return Profile(numeric, categorical, ignored, label, id_column, timestamp_column, expectations)


def render_params(model: str, data_path: str, profile: Profile) -> str:
    overlay = {
        "extends": "../../params.yaml",
        "data": {
            "path": data_path,
            "label": profile.label,
            "id_column": profile.id_column,
            "timestamp_column": profile.timestamp_column,
            "sensitive_column": None,  # not inherited: the project's may not be in this data
            "numeric_features": profile.numeric,
            "categorical_features": profile.categorical,
        },
        "validate": {"suite": "suite.json"},
        "gates": {"fairness": {"enabled": False}},
        "registry": {"model_name": model},
        "deploy": {"deployment": f"{model}-model"},
    }
    header = (
        f"# Model `{model}`: profiled by `ctflows init` from a trusted batch. REVIEW before use.\n"
        "# Only what differs from the project's params.yaml (extends). Set here, per model:\n"
        "#   data.repo / data.rev, train (estimator), gates (fairness is off until you name\n"
        "#   data.sensitive_column), deploy (namespace, container, image),\n"
        "#   notify.webhook_env (this model's Slack channel).\n"
    )
    if profile.ignored:
        header += (
            "# Left out of the features: "
            + ", ".join(f"{c} ({why})" for c, why in profile.ignored.items())
            + "\n"
        )
    return header + yaml.safe_dump(overlay, sort_keys=False)


def init_model(
    project: Path,
    model: str,
    source: Path,
    label: str | None = None,
    id_column: str | None = None,
    timestamp_column: str | None = None,
    margin: float = 0.1,
) -> Written:
    from tasks.config import ConfigError, load_params
    from tasks.validate import validate_batch

    project = project.resolve()
    if not (project / "params.yaml").is_file():
        raise Refused(f"{project} has no params.yaml: run from the project root or pass --project")
    target = project / MODELS_DIR / model
    if target.exists():
        raise Refused(f"{target} already exists; remove it or pick another name")
    df = read_trusted(source)
    profile = profile_frame(df, label, id_column, timestamp_column, margin)
    try:
        data_path = str(source.resolve().relative_to(project))
    except ValueError:
        data_path = str(source)
    suite = {
        "name": f"{model}_batch",
        "meta": {"notes": f"Profiled by `ctflows init` from {source} ({len(df)} rows). Review."},
        "expectations": profile.expectations,
    }
    with tempfile.TemporaryDirectory(dir=project) as scratch:
        draft = Path(scratch) / model
        draft.mkdir()
        (draft / "suite.json").write_text(json.dumps(suite, indent=1, default=str) + "\n")
        # the draft sits one level deeper than models.d/<model>: point extends at the root
        text = render_params(model, data_path, profile)
        (draft / "params.yaml").write_text(
            text.replace("extends: ../../params.yaml", f"extends: {project / 'params.yaml'}")
        )
        try:
            params = load_params(draft / "params.yaml")
        except ConfigError as exc:
            raise Refused(f"the profiled params do not validate: {exc}") from exc
        result = validate_batch(df, params)
        if not result.success:
            raise Refused(f"the batch fails its own profiled suite: {result}")
        (draft / "params.yaml").write_text(text)
        target.parent.mkdir(exist_ok=True)
        shutil.move(str(draft), str(target))
    return Written(
        str(target / "params.yaml"),
        str(target / "suite.json"),
        len(df.columns),
        len(profile.expectations),
        profile.numeric,
        profile.categorical,
        profile.ignored,
    )
