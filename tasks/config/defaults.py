"""Task-aware defaults of the gate policy: what a model gets when its params leave them out.

A value set in params (the model's own file or the one it extends, for the same task) wins;
what is left out follows ``train.task`` and the primary metric, and ``gates.defaulted`` lists
every value filled here so the gate report can say which were defaults.

- ``gates.primary_metric``: roc_auc (binary), log_loss (multiclass), rmse (regression).
- ``gates.minimums``: a floor that says "better than a model that knows nothing":
  roc_auc 0.55 (binary), r2 0.0 (regression: beats predicting the mean); none for multiclass
  (chance depends on the classes' shares: set one, e.g. ``macro_f1``).
- ``gates.no_regression``: metrics on a 0..1 scale (AUC, F1, accuracy, brier, r2) tolerate an
  absolute drop of 0.002; unbounded ones (log_loss, rmse, mae) a drop of 1% of the
  champion's value (``relative_tolerance: 0.01``), so an RMSE around 50 tolerates 0.5.
- ``gates.shadow.tolerance``: as ``no_regression`` on the same scale (absolute 0.002 for
  0..1 metrics, 1% of the champion's value otherwise).
- ``gates.prediction_parity``: PSI 0.25 and flips against the truth 20% for classification;
  for regression the PSI of predictions, 0.25, and no flip rate (there are no decisions).
"""

from __future__ import annotations

from typing import Any

from tasks.errors import CtflowsError, ErrorKind
from tasks.metrics import DEFAULT_PRIMARY

DEFAULT_MINIMUMS: dict[str, dict[str, float]] = {
    "binary": {"roc_auc": 0.55},
    "multiclass": {},
    "regression": {"r2": 0.0},
}
UNBOUNDED_METRICS = frozenset({"log_loss", "rmse", "mae"})
ABSOLUTE_TOLERANCE = 0.002
RELATIVE_TOLERANCE = 0.01
PARITY: dict[str, dict[str, float | None]] = {
    "binary": {"max_psi": 0.25, "max_flip_rate": 0.2},
    "multiclass": {"max_psi": 0.25, "max_flip_rate": 0.2},
    "regression": {"max_psi": 0.25, "max_flip_rate": None},
}


class DefaultsError(CtflowsError, ValueError):
    kind = ErrorKind.BAD_INPUT


def tolerance_defaults(metric: str) -> dict[str, float]:
    if metric in UNBOUNDED_METRICS:
        return {"relative_tolerance": RELATIVE_TOLERANCE}
    return {"tolerance": ABSOLUTE_TOLERANCE}


def _section(gates: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = gates.get(name)
    if value is None:
        return {}
    return value if isinstance(value, dict) else None  # not a mapping: validation says so


def with_task_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a whole params mapping) with the gate values it leaves out filled for its task,
    and ``gates.defaulted`` naming them (``key=value``)."""
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    task = (train or {}).get("task", "binary")
    gates = raw.get("gates", {})
    if task not in DEFAULT_PRIMARY or not isinstance(gates, dict):
        return raw
    if "defaulted" in gates:
        raise DefaultsError("gates.defaulted is filled by ctflows (which values were defaults)")
    gates = dict(gates)
    filled: list[str] = []

    def fill(section: str, values: dict[str, Any]) -> None:
        current = _section(gates, section)
        if current is None:
            return
        missing = {k: v for k, v in values.items() if k not in current}
        if missing:
            gates[section] = {**current, **missing}
            filled.extend(f"gates.{section}.{k}={v}" for k, v in missing.items())

    if "primary_metric" not in gates:
        gates["primary_metric"] = DEFAULT_PRIMARY[task]
        filled.append(f"gates.primary_metric={gates['primary_metric']}")
    metric = str(gates["primary_metric"])
    if "minimums" not in gates:
        gates["minimums"] = dict(DEFAULT_MINIMUMS[task])
        floors = ", ".join(f"{k}: {v}" for k, v in DEFAULT_MINIMUMS[task].items()) or "none"
        filled.append(f"gates.minimums={{{floors}}}")
    for section in ("no_regression", "shadow"):
        current = _section(gates, section)
        keys = {"tolerance", "relative_tolerance"}
        if current is not None and not keys & set(current):
            fill(section, tolerance_defaults(metric))
    fill("prediction_parity", PARITY[task])
    gates["defaulted"] = filled
    return {**raw, "gates": gates}
