"""Stage `train`: a scikit-learn Pipeline (its own encoding included), tracked in MLflow.

The estimator and its preprocessing are built in ``tasks.estimators``."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import pickle
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import Params, load_params
from tasks.data import DataVersion, read_batch, read_version, split_holdout
from tasks.errors import CtflowsError, ErrorKind
from tasks.estimators import (  # re-exported: the estimator code moved to tasks.estimators
    build_pipeline,
    make_estimator,
    pip_requirements,
    preprocessing_for,
    train_model,
)

if TYPE_CHECKING:  # heavy imports stay out of module import: served runs start faster
    import pandas as pd
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

__all__ = ["build_pipeline", "make_estimator", "train_model"]  # from tasks.estimators

LEASE_SECONDS = 60


class TrackingError(CtflowsError, RuntimeError):
    """The MLflow tracking store or registry cannot be reached or written."""

    kind = ErrorKind.UNAVAILABLE


@dataclass(frozen=True)
class TrainedModel:
    """A fitted candidate and where MLflow keeps it."""

    pipeline: Pipeline
    run_id: str
    model_uri: str
    data_md5: str
    rows: int


@dataclass(frozen=True)
class PreviousRun:
    """A finished run on the same data, params and code: retraining it would change nothing."""

    run_id: str
    decision: str
    model_version: str | None
    champion: str | None = None  # the champion version it was compared with ("none": none)
    failed_gates: tuple[str, ...] | None = None  # the gates that rejected it (None: not recorded)


def training_lock(params: Params) -> str:
    """Name of the global concurrency limit held by every training run of one model
    (one registered model name in one MLflow store)."""
    store = hashlib.sha256(tracking_uri(params).encode()).hexdigest()[:8]
    return f"ctflows-train-{params.registry.model_name}-{store}"


@contextlib.contextmanager
def hold_training_lock(params: Params, wait_seconds: float | None = None) -> Iterator[None]:
    """Hold the model's one training slot: runs of the same model never overlap.

    Creates the limit (1 slot) on first use; a second run waits for the first to finish
    (at most ``wait_seconds``, then TimeoutError). The slot is a lease renewed while the run
    lives: after a crash (kill -9) it frees itself within ``LEASE_SECONDS``.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = training_lock(params)
    with get_client(sync_client=True) as client:
        try:  # read first: a create that collides logs an ERROR (UNIQUE constraint) server-side
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
    with concurrency(
        name, occupy=1, strict=True, lease_duration=LEASE_SECONDS, timeout_seconds=wait_seconds
    ):
        yield


def training_slot_taken(params: Params) -> bool:
    """Whether a run holds the model's training slot now (a killed run's until its lease ends)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(training_lock(params))
        except ObjectNotFound:
            return False
    return bool(limit.active_slots >= limit.limit)


def code_version(root: Path | None = None) -> str:
    """The git commit of the ctflows code; uncommitted changes add a hash of the diff.

    Two runs share a code version only when they run exactly the same code.
    """
    where = str(root or Path(__file__).resolve().parents[1])
    head = subprocess.run(
        ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return "unknown"
    diff = subprocess.run(
        ["git", "-C", where, "diff", "HEAD", "--", "tasks", "flows", "expectations"],
        capture_output=True,
        check=False,
    ).stdout
    commit = head.stdout.strip()
    return f"{commit}-dirty-{hashlib.sha256(diff).hexdigest()[:10]}" if diff else commit


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else params, else a SQLite file in the state dir."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or params.mlflow.tracking_uri
        or f"sqlite:///{(params.state_dir / 'mlflow.db').resolve()}"
    )


def setup_tracking(params: Params) -> str:
    """Point MLflow at the store and return the experiment id, creating it on first use.

    MLflow's HTTP client is bounded first (``timeouts.mlflow``, ``timeouts.mlflow_retries``)
    and a tracking server must answer its ``/health`` within ``timeouts.mlflow``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.services import ServiceUnavailable, bound_mlflow, probe_mlflow, redact

    uri = tracking_uri(params)
    bound_mlflow(params.timeouts)
    if uri.startswith("sqlite:///"):
        params.state_dir.mkdir(parents=True, exist_ok=True)
    probe_mlflow(uri, params.timeouts)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(params.mlflow.experiment)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None
        if uri.startswith("sqlite:///"):
            location = (params.state_dir / "mlartifacts").resolve().as_uri()
        return str(mlflow.create_experiment(params.mlflow.experiment, artifact_location=location))
    except MlflowException as exc:
        raise TrackingError(
            f"MLflow tracking store {redact(uri)} is not usable: {redact(str(exc))}"
        ) from exc
    except OSError as exc:  # connection refused, DNS, ...
        raise ServiceUnavailable(
            "MLflow tracking store", uri, f"{type(exc).__name__}: {exc}", params.timeouts.mlflow
        ) from exc


def find_previous_run(
    experiment_id: str, data_md5: str, params_hash: str, git_commit: str
) -> PreviousRun | None:
    """The latest completed run with the same lineage, if any (never a dry run)."""
    import mlflow

    if git_commit == "unknown":
        return None
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.`ct.data_md5` = '{data_md5}' and tags.`ct.params_hash` = '{params_hash}' "
            f"and tags.`ct.git_commit` = '{git_commit}' and tags.`ct.completed` = 'true' "
            "and tags.`ct.dry_run` = 'false'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        return None
    tags = runs[0].data.tags
    return PreviousRun(
        run_id=runs[0].info.run_id,
        decision=tags.get("ct.decision", "unknown"),
        model_version=tags.get("ct.model_version"),
        champion=tags.get("ct.champion"),
        failed_gates=(
            tuple(g for g in tags["ct.failed_gates"].split(",") if g)
            if "ct.failed_gates" in tags
            else None
        ),
    )


def _pip_requirements(params: Params) -> list[str]:
    """Pinned requirements given explicitly: inferring them costs MLflow 7-10 s per model."""
    return pip_requirements(params)


def log_candidate(
    pipeline: Pipeline,
    df: pd.DataFrame,
    params: Params,
    experiment_id: str,
    lineage: dict[str, str],
    dry_run: bool,
    rows: int | None = None,
) -> tuple[str, str]:
    """Log params, lineage tags and the model with its signature; return (run_id, model_uri)."""
    import cloudpickle
    import mlflow
    from mlflow.models import infer_signature

    import tasks.encoders
    from tasks.gates.evidence import predict

    sample = df[params.data.features].head(200)
    with warnings.catch_warnings():  # integer columns are intended: nulls fail validation first
        warnings.simplefilter("ignore", UserWarning)
        signature = infer_signature(sample, predict(pipeline, sample, params.train.task))
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags({**lineage, "ct.dry_run": str(dry_run).lower(), "ct.completed": "false"})
        mlflow.log_params(
            {
                "estimator": params.train.estimator,
                "task": params.train.task,
                "preprocessing": preprocessing_for(params),
                "seed": params.train.seed,
                "train_rows": len(df) if rows is None else rows,
                "engine": params.train.engine,
                **{f"hp.{k}": v for k, v in params.train.hyperparameters.items()},
            }
        )
        cloudpickle.register_pickle_by_value(tasks.encoders)  # the image has no tasks/
        try:
            info = mlflow.sklearn.log_model(
                pipeline,
                name="model",
                signature=signature,
                pip_requirements=_pip_requirements(params),
                serialization_format="cloudpickle",
            )
        finally:
            cloudpickle.unregister_pickle_by_value(tasks.encoders)
    return run.info.run_id, info.model_uri


@task(name="train-model", cache_policy=NONE)
def train_candidate(
    version: DataVersion, params: Params, experiment_id: str, lineage: dict[str, str], dry_run: bool
) -> TrainedModel:
    """Fit the candidate on the training split of the pulled batch and log it to MLflow."""
    logger = get_run_logger()
    if params.train.engine == "dask":  # LightGBM's Dask estimator; the plain model comes back
        from tasks.dask_engine import train_on_dask

        on_dask = train_on_dask(version, params)
        pipeline, train_df, rows = on_dask.pipeline, on_dask.sample, on_dask.train_rows
    else:
        train_df, _ = split_holdout(read_version(version), params.data)
        pipeline, rows = train_model(train_df, params), len(train_df)
    run_id, model_uri = log_candidate(
        pipeline, train_df, params, experiment_id, lineage, dry_run, rows
    )
    logger.info(
        "trained %s on %d rows (engine %s) md5=%s run_id=%s",
        params.train.estimator,
        rows,
        params.train.engine,
        version.short,
        run_id,
    )
    return TrainedModel(pipeline, run_id, model_uri, version.md5, rows)


@task(name="setup-tracking", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def prepare_tracking(params: Params) -> str:
    """Connect to the MLflow store (retried: a team server may blink) and return the experiment."""
    from tasks.services import redact

    experiment_id = setup_tracking(params)
    get_run_logger().info(
        "MLflow store %s, experiment %s", redact(tracking_uri(params)), experiment_id
    )
    return experiment_id


@task(name="complete-run", cache_policy=NONE)
def complete_run(run_id: str, champion: str | None = None) -> None:
    """Mark the MLflow run as a finished decision, so an identical rerun is skipped, with the
    champion version it was compared with (a rejection holds only against that champion)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, "ct.champion", champion or "none")
    client.set_tag(run_id, "ct.completed", "true")


def main(argv: list[str] | None = None) -> None:
    """dvc.yaml stage `train`: fit on the training split and pickle the pipeline."""
    parser = argparse.ArgumentParser(description="Train the candidate pipeline on a batch.")
    parser.add_argument("batch", type=Path, help="parquet batch to train on")
    parser.add_argument("--model", type=Path, required=True, help="pickle file to write")
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)
    train_df, _ = split_holdout(read_batch(args.batch), params.data)
    pipeline = train_model(train_df, params)
    args.model.parent.mkdir(parents=True, exist_ok=True)
    args.model.write_bytes(pickle.dumps(pipeline))
    print(f"trained {params.train.estimator} on {len(train_df)} rows -> {args.model}")


if __name__ == "__main__":
    main()
