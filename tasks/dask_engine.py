"""``train.engine: dask``: validate and train on a Dask cluster, with LightGBM's own Dask estimator.

A data version may be a directory of Parquet parts (DVC-tracked as one directory). Each part is
validated with the Great Expectations suite on a worker, in parallel; the expectations that need
the whole batch (row count, uniqueness, a column's mean) are computed across the parts instead.
Training uses ``lightgbm.DaskLGBMClassifier``/``DaskLGBMRegressor`` on the workers; the model
that comes back (``to_local()``) is the plain LightGBM model inside the same pipeline as the
local engine's, so MLflow, the gates and serving do not change. The holdout is scored on the
workers (``tasks.dask_scoring``).

A run opens one cluster (``dask_run``) for all its Dask steps: started by the first step that
needs it, closed when the run ends; a run that skips starts none.

Nothing here imitates Dask or LightGBM: a scheduler's address (``dask.scheduler``) or a
``distributed.LocalCluster`` on loopback, and the libraries' own estimators.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.config import Params
from tasks.data import DataError, DataVersion, check_columns, split_holdout
from tasks.errors import CtflowsError
from tasks.validate import Failure, ValidationResult

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

# Expectations about the whole batch: a part alone cannot pass or fail them.
WHOLE_BATCH = frozenset(
    {
        "expect_table_row_count_to_be_between",
        "expect_column_values_to_be_unique",
        "expect_column_mean_to_be_between",
    }
)
LIGHTGBM_DASK = {
    "lightgbm.LGBMClassifier": "DaskLGBMClassifier",
    "lightgbm.LGBMRegressor": "DaskLGBMRegressor",
}


class DaskEngineError(CtflowsError, RuntimeError):
    """The Dask cluster cannot be reached or failed during the work; names which and why."""


@dataclass(frozen=True)
class DaskTrained:
    pipeline: Pipeline
    sample: pd.DataFrame  # a few training rows: MLflow's signature and input example
    train_rows: int


class _RunCluster:
    """The cluster of one run: opened by the first step that asks, closed when the run ends."""

    def __init__(self) -> None:
        self.stack = contextlib.ExitStack()
        self.client: Client | None = None

    def get(self, params: Params) -> Client:
        if self.client is None:
            self.client = self.stack.enter_context(_open_client(params))
        return self.client


_RUN: contextvars.ContextVar[_RunCluster | None] = contextvars.ContextVar(
    "ctflows_dask_run", default=None
)


@contextlib.contextmanager
def dask_run() -> Iterator[None]:
    """Within this block every ``dask_client`` shares one cluster, started on first use."""
    run = _RunCluster()
    token = _RUN.set(run)
    try:
        yield
    finally:
        _RUN.reset(token)
        run.stack.close()


@contextlib.contextmanager
def dask_client(params: Params) -> Iterator[Client]:
    """The run's cluster inside ``dask_run``; else a cluster of its own for this block."""
    run = _RUN.get()
    if run is not None:
        yield run.get(params)
        return
    with _open_client(params) as client:
        yield client


@contextlib.contextmanager
def _open_client(params: Params) -> Iterator[Client]:
    """A client of ``dask.scheduler``, or of a local cluster of ``dask.workers`` processes."""
    from distributed import Client, LocalCluster

    settings = params.dask
    if settings.scheduler:
        try:
            client = Client(
                settings.scheduler,
                timeout=settings.connect_timeout_seconds,
                set_as_default=False,
            )
        except (OSError, TimeoutError) as exc:
            raise DaskEngineError(
                f"Dask scheduler {settings.scheduler} did not answer within "
                f"{settings.connect_timeout_seconds:g} s ({type(exc).__name__}: {exc}); is it "
                "running, and is dask.scheduler in params.yaml its address?"
            ) from exc
        with client:
            yield client
        return
    log.info("starting a local Dask cluster of %d workers", settings.workers)
    with (
        LocalCluster(
            n_workers=settings.workers,
            threads_per_worker=settings.threads_per_worker,
            memory_limit=settings.memory_limit,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def list_parts(path: Path) -> list[Path]:
    """The Parquet parts of a data version: the files of a directory, or the file itself."""
    if path.is_file():
        return [path]
    parts = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix == ".parquet")
    if not parts:
        raise DataError(f"{path} holds no Parquet parts (*.parquet)")
    return parts


def check_parts(parts: list[Path], params: Params) -> int:
    """Every part readable, non-empty and of one schema, with the columns params name; returns
    the number of rows. An error names the part and what differs."""
    import pyarrow.parquet as pq

    first_schema = None
    rows = 0
    for part in parts:
        try:
            meta = pq.read_metadata(part)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise DataError(
                f"part {part.name} is unreadable ({type(exc).__name__}: {exc})"
            ) from exc
        if meta.num_rows == 0:
            raise DataError(f"part {part.name} is empty (0 rows)")
        schema = {f.name: str(f.type) for f in meta.schema.to_arrow_schema()}
        if first_schema is None:
            first_schema = schema
            check_columns(list(schema), params, f"part {part.name}")
        elif schema != first_schema:
            differ = sorted(
                c for c in set(schema) | set(first_schema) if schema.get(c) != first_schema.get(c)
            )
            raise DataError(
                f"part {part.name} has another schema than {parts[0].name}: columns {differ} "
                f"differ ({ {c: schema.get(c) for c in differ} } vs "
                f"{ {c: first_schema.get(c) for c in differ} })"
            )
        rows += meta.num_rows
    return rows


def _validate_part(path: str, params: Params) -> ValidationResult:
    from tasks.data import read_batch
    from tasks.validate import validate_batch

    return validate_batch(read_batch(Path(path)), params)


def _whole_batch_failures(client: Client, parts: list[Path], params: Params) -> list[Failure]:
    """The suite's whole-batch expectations, computed across the parts in one pass of Dask."""
    import dask.dataframe as dd

    from tasks.validate import load_suite

    suite = load_suite(params.validate_.suite)
    wanted = [e for e in suite.expectation_configurations if e.type in WHOLE_BATCH]
    if not wanted:
        return []
    columns = sorted({e.kwargs["column"] for e in wanted if e.kwargs.get("column")})
    ddf = dd.read_parquet([str(p) for p in parts], columns=columns or None)
    stats: list[Any] = []
    for expectation in wanted:
        column = expectation.kwargs.get("column")
        if expectation.type == "expect_table_row_count_to_be_between":
            stats.append(ddf.map_partitions(len).sum())
        elif expectation.type == "expect_column_values_to_be_unique":
            stats.append((ddf[column].value_counts() > 1).sum())
        else:
            stats.append(ddf[column].mean())
    values = client.gather(client.compute(stats))  # one graph: each part read once
    failures = []
    for expectation, value in zip(wanted, values, strict=True):
        kind, kwargs = expectation.type, expectation.kwargs
        column = kwargs.get("column")
        if kind == "expect_column_values_to_be_unique":
            if int(value):
                failures.append(Failure(kind, column, f"{int(value)} values repeat across parts"))
            continue
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        value = float(value)
        if (low is not None and value < low) or (high is not None and value > high):
            failures.append(
                Failure(kind, column, f"{value:g} across all parts, expected [{low}, {high}]")
            )
    return failures


def validate_parts(client: Client, parts: list[Path], params: Params) -> ValidationResult:
    """The suite on every part in parallel (failures name the part), plus the whole-batch
    expectations across parts."""
    futures = client.map(_validate_part, [str(p) for p in parts], params=params, pure=False)
    failures: list[Failure] = []
    evaluated = 0
    for part, result in zip(parts, _gather(client, futures, "validation"), strict=True):
        evaluated = max(evaluated, result.evaluated)
        failures.extend(
            Failure(f.expectation, f.column, f"part {part.name}: {f.detail}")
            for f in result.failures
            if f.expectation not in WHOLE_BATCH
        )
    failures.extend(_whole_batch_failures(client, parts, params))
    return ValidationResult(not failures, evaluated, tuple(failures))


def _gather(client: Client, futures: Any, what: str) -> list[Any]:
    try:
        return list(client.gather(futures))
    except Exception as exc:
        raise DaskEngineError(
            f"Dask {what} failed on the cluster ({type(exc).__name__}: {exc})"
        ) from exc


def _dask_estimator(params: Params, client: Client) -> Any:
    import lightgbm

    from tasks.estimators import make_estimator

    name = LIGHTGBM_DASK.get(params.train.estimator)
    if name is None:
        raise DaskEngineError(
            f"train.engine: dask trains LightGBM ({', '.join(LIGHTGBM_DASK)}), not "
            f"{params.train.estimator}"
        )
    local = make_estimator(params)
    settings = local.get_params()
    settings["n_jobs"] = params.dask.threads_per_worker  # threads per worker, not per machine
    return getattr(lightgbm, name)(client=client, **settings)


def _workers(client: Client) -> set[str]:
    return set(client.scheduler_info(n_workers=-1)["workers"])


def _fit_watching_workers(client: Client, model: Any, X: Any, y: Any, poll: float = 1.0) -> None:
    """``model.fit`` on the cluster; a worker that leaves meanwhile fails the training, named.

    LightGBM's Dask training is not elastic: each worker holds its parts and a socket to the
    others, and its task may only run there. A killed worker (out of memory, preempted) either
    breaks the others' sockets or leaves its task waiting forever for a worker that is gone; both
    end here with the worker's address, instead of a hang.
    """
    import threading
    import time

    before = _workers(client)
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            with client.as_current():  # LightGBM computes its inputs with the current client
                model.fit(X, y)
        except BaseException as exc:  # handed to the caller's thread, raised there
            failure.append(exc)

    thread = threading.Thread(target=fit, name="lightgbm-dask-fit", daemon=True)
    thread.start()
    gone: set[str] = set()
    while thread.is_alive() and not gone:
        thread.join(poll)
        gone = before - _workers(client)
    for _ in range(3 if failure and not gone else 0):  # the scheduler may learn of it later
        time.sleep(poll)
        gone = before - _workers(client)
        if gone:
            break
    if gone:
        cause = f" ({type(failure[0]).__name__}: {failure[0]})" if failure else ""
        raise DaskEngineError(
            f"Dask worker(s) {sorted(gone)} left the cluster during LightGBM training (killed, "
            f"out of memory or preempted){cause}; LightGBM's Dask training cannot continue "
            "without them: retry the run, or give the workers more memory (dask.memory_limit)"
        )
    if failure:
        exc = failure[0]
        raise DaskEngineError(
            f"LightGBM training on the Dask cluster failed ({type(exc).__name__}: {exc})"
        ) from exc


def train_parts(client: Client, parts: list[Path], params: Params) -> DaskTrained:
    """Fit LightGBM's Dask estimator on the training split of every part; the plain model."""
    import dask.dataframe as dd
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from tasks.encoders import CategoryEncoder
    from tasks.estimators import preprocessing_for

    data = params.data
    if preprocessing_for(params) != "native":
        raise DaskEngineError("train.engine: dask needs train.preprocessing native (or auto)")
    ddf = dd.read_parquet([str(p) for p in parts])
    train = ddf.map_partitions(lambda df: split_holdout(df, data)[0])
    sample = train.head(200, npartitions=-1)
    encoder = CategoryEncoder(list(data.numeric_features), list(data.categorical_features))
    encoder.fit(sample)
    for column in data.categorical_features:  # the categories of every part, not the sample's
        seen = train[column].dropna().astype(str).unique().compute()
        encoder.categories_[column] = pd.Index(sorted(seen))
    X = train[data.features].map_partitions(encoder.transform)
    y = train[data.label]
    model = _dask_estimator(params, client)
    _fit_watching_workers(client, model, X, y)
    pipeline = Pipeline([("columns", encoder), ("model", model.to_local())])
    return DaskTrained(pipeline, sample.reset_index(drop=True), len(train))


def version_parts(version: DataVersion) -> list[Path]:
    """The parts of every version of the training window (each pulled at its own revision)."""
    parts: list[Path] = []
    for member in version.window:
        if member.local_path is None:
            raise DataError(f"{member.describe()} has not been pulled yet")
        parts.extend(list_parts(member.local_path))
    return parts


def validate_on_dask(version: DataVersion, params: Params) -> ValidationResult:
    """Check the parts (schemas, emptiness) before any work, then validate them on the cluster."""
    parts = version_parts(version)
    rows = check_parts(parts, params)
    log.info("validating %d parts (%d rows) of md5=%s on Dask", len(parts), rows, version.short)
    with dask_client(params) as client:
        return validate_parts(client, parts, params)


def train_on_dask(version: DataVersion, params: Params) -> DaskTrained:
    parts = version_parts(version)
    check_parts(parts, params)
    with dask_client(params) as client:
        log.info("training on %d parts with %s", len(parts), client)
        return train_parts(client, parts, params)
