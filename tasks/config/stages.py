"""Sections of the data, prepare, validate and train stages (and the Dask cluster of training)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

if TYPE_CHECKING:
    pass
from tasks.config.base import _Section


class ProjectParams(_Section):
    state_dir: Path = Path(".ctflows")


class TrainingWindow(_Section):
    """The data versions one training run reads: by default the newest alone.

    ``versions``: the last K distinct data versions of ``data.path`` up to ``data.rev``;
    ``days``: the versions committed within D days before ``data.rev``'s commit. Both set: the
    last K versions, none older than D days. Each version is read through DVC at its own commit.
    """

    versions: int | None = Field(None, ge=1, le=100)
    days: float | None = Field(None, gt=0)

    @property
    def newest_only(self) -> bool:
        return self.versions in (None, 1) and self.days is None


class DataParams(_Section):
    repo: str = "."
    path: str = "data/batch.parquet"
    rev: str = "HEAD"
    label: str
    id_column: str | None = None  # null: the holdout is split on a hash of the whole row
    timestamp_column: str | None = None  # null: no column is kept out of the features as time
    sensitive_column: str | None = None  # null: no fairness gates (said in the gate report)
    numeric_features: list[str] = Field(min_length=0)
    categorical_features: list[str] = Field(min_length=0)
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = 7
    window: TrainingWindow = TrainingWindow()

    @property
    def features(self) -> list[str]:
        return [*self.numeric_features, *self.categorical_features]

    def configured_columns(self) -> dict[str, str]:
        """Every column params name, keyed by the params key that names it."""
        named = {
            "data.label": self.label,
            "data.id_column": self.id_column,
            "data.timestamp_column": self.timestamp_column,
            "data.sensitive_column": self.sensitive_column,
        }
        columns = {key: column for key, column in named.items() if column is not None}
        for key in ("numeric_features", "categorical_features"):
            for i, column in enumerate(getattr(self, key)):
                columns[f"data.{key}[{i}]"] = column
        return columns

    @model_validator(mode="after")
    def _features_disjoint(self) -> DataParams:
        if not self.features:
            raise ValueError("numeric_features and categorical_features are both empty")
        both = set(self.numeric_features) & set(self.categorical_features)
        if both:
            raise ValueError(f"features listed as numeric and categorical: {sorted(both)}")
        roles = [self.label, self.id_column, self.timestamp_column, self.sensitive_column]
        reserved = {c for c in roles if c is not None} & set(self.features)
        if reserved:
            raise ValueError(
                f"label, id, timestamp or sensitive column used as a feature: {sorted(reserved)}"
            )
        return self


class PrepareParams(_Section):
    day: int = Field(1, ge=0)
    rows: int = Field(50_000, gt=0)
    seed: int = 0
    drift: float = Field(0.0, ge=0.0)


class ValidateParams(_Section):
    suite: Path = Path("expectations/churn_batch.json")


class TrainParams(_Section):
    task: Literal["binary", "multiclass", "regression"] = "binary"
    estimator: str = "lightgbm.LGBMClassifier"
    # how features are encoded: auto (by estimator: native categories for LightGBM, ordinal
    # codes for other trees, one-hot + scaling for linear models), native, ordinal, onehot
    preprocessing: Literal["auto", "native", "ordinal", "onehot"] = "auto"
    # local: pandas in the flow's process; dask: LightGBM's Dask estimator on the cluster of
    # the `dask` section (a data version may then be a directory of Parquet parts)
    engine: Literal["local", "dask"] = "local"
    seed: int = 42
    n_jobs: int = Field(2, ge=1)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("estimator")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if "." not in value:
            raise ValueError(
                f"expected an import path like 'lightgbm.LGBMClassifier', got {value!r}"
            )
        import importlib.util

        top = value.split(".")[0]
        if importlib.util.find_spec(top) is None:
            raise ValueError(f"package {top!r} of {value!r} is not installed")
        return value

    @model_validator(mode="after")
    def _estimator_takes_hyperparameters(self) -> TrainParams:
        """The estimator fits the task and takes every hyperparameter: checked at load, not
        found at train time (the estimator's module is imported here)."""
        problem = estimator_problem(self.estimator, self.task, self.hyperparameters)
        if problem:
            raise ValueError(problem)
        return self


def estimator_problem(path: str, task: str, hyperparameters: dict[str, Any]) -> str | None:
    """Why ``path`` cannot be trained for ``task`` with ``hyperparameters``, or None."""
    import importlib
    import inspect

    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        accepted = cls().get_params()
    except (ImportError, AttributeError, TypeError) as exc:
        return f"train.estimator {path!r} cannot be imported: {type(exc).__name__}: {exc}"
    signature = inspect.signature(cls).parameters.values()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature)
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown and not takes_any:
        keys = ", ".join(f"train.hyperparameters.{k}" for k in unknown)
        return (
            f"{keys} are not parameters of {class_name} ({path}); its parameters: "
            f"{', '.join(sorted(accepted))}. Remove the key, or replace the inherited "
            "hyperparameters in this model's overlay (`hyperparameters: !replace {...}` or `{}`)"
        )
    from sklearn.base import is_classifier, is_regressor

    try:
        estimator = cls(**hyperparameters)
    except (TypeError, ValueError) as exc:
        return f"train.hyperparameters do not build {class_name}: {exc}"
    if task == "regression" and not is_regressor(estimator):
        return f"train.task is regression but {path} is not a regressor: name a regressor"
    if task != "regression" and (is_regressor(estimator) or not is_classifier(estimator)):
        return (
            f"train.task is {task} but {path} is not a classifier: name a classifier, or "
            "set train.task: regression"
        )
    if task != "regression" and not hasattr(estimator, "predict_proba"):
        return (
            f"{path} has no predict_proba with these hyperparameters: a {task} task is gated "
            "on probabilities (e.g. SVC needs probability: true)"
        )
    return None


class DaskParams(_Section):
    """The Dask cluster of ``train.engine: dask``: a scheduler's address, or a local cluster."""

    scheduler: str | None = None  # tcp://host:8786; null: a LocalCluster in the flow's process
    workers: int = Field(2, ge=1)  # local cluster only
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "4GiB"  # per local worker
    connect_timeout_seconds: float = Field(10.0, gt=0)

    @field_validator("scheduler")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(tcp|tls|inproc|ucx)://[^\s/]+", value):
            raise ValueError(f"expected a scheduler address like 'tcp://host:8786', got {value!r}")
        return value
