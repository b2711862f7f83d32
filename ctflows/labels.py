"""The label of a trusted batch: which task it is, and what the suite checks of it.

Task from the label (``--task`` overrides, if the label can be that task):
  two distinct values                                   -> binary
  strings or booleans, or integers with at most 20 values -> multiclass
  numbers with non-integer values, or more than 20 integers -> regression
A label with nulls or a single value is refused: there is nothing to learn, or rows whose
truth is unknown would be trained on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ctflows.operate import Refused

if TYPE_CHECKING:
    import pandas as pd

MAX_CLASSES = 20  # more distinct integer values than this is a quantity, not a class
TASKS = ("binary", "multiclass", "regression")
DEFAULT_ESTIMATOR = {
    "binary": "lightgbm.LGBMClassifier",
    "multiclass": "lightgbm.LGBMClassifier",
    "regression": "lightgbm.LGBMRegressor",
}


def _expect(kind: str, column: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "type": f"expect_{kind}",
        "kwargs": {"column": column, **kwargs},
        "meta": {"profiled": True},
    }


def infer_task(label: pd.Series, given: str | None = None) -> str:
    """The task ``label`` is for (``given`` if it fits); Refused naming cause and fix."""
    from pandas.api import types

    name = label.name
    nulls = int(label.isna().sum())
    if nulls:
        raise Refused(
            f"label {name!r} has {nulls} null values of {len(label)}: a row without its truth "
            "cannot be trained or gated on; drop those rows (or fill them) and run init again"
        )
    values = label.unique()
    if len(values) < 2:
        raise Refused(
            f"label {name!r} has one value only ({values[0]!r}): nothing to learn; name "
            "another column with --label, or profile a batch where the label varies"
        )
    numeric = types.is_numeric_dtype(label) and not types.is_bool_dtype(label)
    whole = numeric and bool((label.astype(float) % 1 == 0).all())
    if len(values) == 2:
        inferred = "binary"
    elif not numeric or (whole and len(values) <= MAX_CLASSES):
        inferred = "multiclass"
    else:
        inferred = "regression"
    if given is None or given == inferred:
        return inferred
    if given not in TASKS:
        raise Refused(f"--task {given!r}: expected one of {', '.join(TASKS)}")
    if given == "regression" and not numeric:
        raise Refused(
            f"--task regression, but label {name!r} holds {label.dtype} values, not numbers: "
            "a regressor predicts a number; drop --task (it is multiclass) or convert the label"
        )
    if given == "binary" and len(values) != 2:
        raise Refused(
            f"--task binary, but label {name!r} has {len(values)} distinct values: use --task "
            f"{inferred}, or map the label to two values first"
        )
    if given == "multiclass" and len(values) > 10 * MAX_CLASSES:
        raise Refused(
            f"--task multiclass, but label {name!r} has {len(values)} distinct values: a "
            "quantity, not classes; use --task regression"
        )
    return given


def label_expectations(label: pd.Series, task: str, margin: float) -> list[dict[str, Any]]:
    """Classification: the class set and each class's rate (within a margin); regression: the
    label's range (widened by the margin) and its mean and spread."""
    column = str(label.name)
    if task == "regression":
        values = label.astype(float)
        low, high = float(values.min()), float(values.max())
        span = (high - low) or abs(high) or 1.0
        mean, std = float(values.mean()), float(values.std(ddof=0))
        lo = low - margin * span
        if low >= 0:
            lo = max(lo, 0.0)
        return [
            _expect(
                "column_values_to_be_between",
                column,
                min_value=round(lo, 6),
                max_value=round(high + margin * span, 6),
            ),
            _expect(
                "column_mean_to_be_between",
                column,
                min_value=round(mean - 5 * margin * max(std, 1e-9), 6),
                max_value=round(mean + 5 * margin * max(std, 1e-9), 6),
            ),
            _expect(
                "column_stdev_to_be_between",
                column,
                min_value=round(std * (1 - 5 * margin), 6),
                max_value=round(std * (1 + 5 * margin) + 1e-9, 6),
            ),
        ]
    classes = sorted(label.unique().tolist(), key=str)
    out = [_expect("column_values_to_be_in_set", column, value_set=classes)]
    rates = label.value_counts(normalize=True)
    for value in classes:  # each class's rate within the margin: at least low, at most high
        rate = float(rates[value])
        low = round(max(0.0, rate * (1 - 5 * margin) - 0.01), 4)
        high = round(min(1.0, rate * (1 + 5 * margin) + 0.01), 4)
        out.append(_expect("column_values_to_be_in_set", column, value_set=[value], mostly=low))
        out.append(
            _expect(
                "column_values_to_not_be_in_set",
                column,
                value_set=[value],
                mostly=round(1 - high, 4),
            )
        )
    return out
