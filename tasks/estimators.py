"""Estimators and their preprocessing: any scikit-learn-style estimator by import path, the
encoding it needs, the threads and seed it takes, and the packages its logged model needs.

Preprocessing by estimator (``train.preprocessing: auto``): LightGBM reads pandas categories
natively (fastest, no encoding pass); other tree ensembles get ordinal codes; linear models,
SVMs, neighbours and neural networks get one-hot categories and scaled numbers. ``native``,
``ordinal`` or ``onehot`` in params overrides the choice.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from typing import TYPE_CHECKING, Any

from tasks.config import Params
from tasks.errors import CtflowsError, ErrorKind

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

SCALED_FAMILIES = (
    "sklearn.linear_model",
    "sklearn.svm",
    "sklearn.neighbors",
    "sklearn.neural_network",
    "sklearn.discriminant_analysis",
)
BASE_REQUIREMENTS = ("scikit-learn", "pandas", "numpy", "scipy", "cloudpickle")


class EstimatorError(CtflowsError, ValueError):
    """``train.estimator`` cannot be used for ``train.task``; the message says why."""

    kind = ErrorKind.BAD_INPUT


def estimator_class(path: str) -> type[Any]:
    module_name, _, class_name = path.rpartition(".")
    try:
        cls: type[Any] = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise EstimatorError(f"train.estimator {path!r} cannot be imported: {exc}") from exc
    return cls


def preprocessing_for(params: Params) -> str:
    """The encoding this estimator gets: params' choice, else by its family."""
    chosen = params.train.preprocessing
    if chosen != "auto":
        return chosen
    path = params.train.estimator
    if path.startswith("lightgbm."):
        return "native"
    if path.startswith(SCALED_FAMILIES):
        return "onehot"
    return "ordinal"


def _deprecated(cls: type[Any], name: str) -> bool:
    """True when the class documents parameter ``name`` as deprecated (numpydoc section)."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(rf"^{name} :.*?(?=^\S+ :|^\w+\n-+|\Z)", doc, re.S | re.M)
    return bool(match and "deprecated" in match.group(0).lower())


def make_estimator(params: Params) -> Any:
    """The configured estimator; ``n_jobs`` and the seed only where it takes (and uses) them.

    Raises EstimatorError when the estimator does not fit the task (a regressor for a
    classification task, no ``predict_proba`` for a classification task) or a
    hyperparameter is not one of its parameters."""
    path = params.train.estimator
    cls = estimator_class(path)
    kwargs = dict(params.train.hyperparameters)
    accepted = cls().get_params()
    for key, value in (("random_state", params.train.seed), ("n_jobs", params.train.n_jobs)):
        if key in accepted and not _deprecated(cls, key):
            kwargs.setdefault(key, value)
    takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls).parameters.values()
    )
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not takes_any:
        raise EstimatorError(
            f"train.hyperparameters {unknown} are not parameters of {cls.__name__}"
        )
    estimator = cls(**kwargs)
    _check_task(estimator, path, params.train.task)
    return estimator


def _check_task(estimator: Any, path: str, task: str) -> None:
    from sklearn.base import is_classifier, is_regressor

    if task == "regression":
        if not is_regressor(estimator):
            raise EstimatorError(f"train.task is regression but {path} is not a regressor")
        return
    if is_regressor(estimator) or not is_classifier(estimator):
        raise EstimatorError(f"train.task is {task} but {path} is not a classifier")
    if not hasattr(estimator, "predict_proba"):
        raise EstimatorError(
            f"{path} has no predict_proba with these hyperparameters: a {task} task is gated "
            "on probabilities (e.g. SVC needs probability: true)"
        )


def build_preprocessor(params: Params) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    from tasks.encoders import CategoryEncoder

    data, kind = params.data, preprocessing_for(params)
    if kind == "native":
        return CategoryEncoder(list(data.numeric_features), list(data.categorical_features))
    if kind == "ordinal":
        numeric: Any = "passthrough"
        categorical: Any = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=-1,
            encoded_missing_value=-1,
            dtype="float64",
        )
    else:
        from sklearn.impute import SimpleImputer

        numeric = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
        categorical = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    return ColumnTransformer(
        [
            ("numeric", numeric, data.numeric_features),
            ("categorical", categorical, data.categorical_features),
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )


def build_pipeline(params: Params) -> Pipeline:
    """Encoding + estimator in one object, so every model scores raw batch rows the same way."""
    from sklearn.pipeline import Pipeline

    return Pipeline([("columns", build_preprocessor(params)), ("model", make_estimator(params))])


def train_model(df: pd.DataFrame, params: Params) -> Pipeline:
    """Fit the pipeline on ``df`` (features and label as named in params); deterministic."""
    data = params.data
    missing = sorted(set([*data.features, data.label]) - set(df.columns))
    if missing:
        raise ValueError(f"training data lacks columns {missing}")
    pipeline = build_pipeline(params)
    y = df[data.label].to_numpy()
    kind = preprocessing_for(params)
    fit_params: dict[str, Any] = {}
    if (
        params.train.estimator.startswith("lightgbm.")
        and kind == "ordinal"
        and data.categorical_features
    ):
        first = len(data.numeric_features)
        fit_params["model__categorical_feature"] = list(
            range(first, first + len(data.categorical_features))
        )
    if kind == "native" and not params.train.estimator.startswith(("lightgbm.", "xgboost.")):
        raise EstimatorError(
            "train.preprocessing native (pandas categories) is for LightGBM or XGBoost "
            f"(enable_categorical: true), not {params.train.estimator}"
        )
    pipeline.fit(df[data.features], y, **fit_params)
    return pipeline


@functools.cache
def distributions_of_packages() -> Mapping[str, list[str]]:
    """Which installed distributions provide each top-level package: a scan of every
    distribution's files (about 1 s), done once per process (the fork server's, for served
    runs: ``deployments.forkserver_warm``)."""
    return packages_distributions()


def pip_requirements(params: Params) -> list[str]:
    """Pinned requirements of the logged model: the common runtime plus the distribution that
    provides the estimator's package (``xgboost`` comes from ``xgboost-cpu`` here)."""
    top = params.train.estimator.split(".")[0]
    names = list(BASE_REQUIREMENTS)
    for dist in distributions_of_packages().get(top, [top]):
        if dist not in names:
            names.append(dist)
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins
