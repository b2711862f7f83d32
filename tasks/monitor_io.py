"""The monitor's edges: the log and labels in, the champion's reference from MLflow and DVC,
the report out to a Prefect artifact, an MLflow run and Slack, and the retraining event."""

from __future__ import annotations

import logging
import math
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import Params
from tasks.data import DataVersion, fetch_version, read_version, resolve_version, split_holdout
from tasks.inference_log import (
    LabelledPredictions,
    LogWindow,
    join_labels,
    read_inference_log,
    read_labels,
)
from tasks.labels import canonical_key
from tasks.monitor import ChampionReference, MonitorReport

log = logging.getLogger(__name__)

MONITOR_EXPERIMENT_SUFFIX = "-production"


def log_url(params: Params) -> str:
    """Where the serving app writes its inference log (params, else under the state dir)."""
    return params.monitor.log_url or str(params.state_dir / "inference-log")


@task(name="read-inference-log", cache_policy=NONE)
def load_window(params: Params, end: datetime) -> LogWindow:
    start = end - timedelta(hours=params.monitor.window_hours)
    name = params.registry.model_name
    window = read_inference_log(log_url(params), start, end, params.gates.threshold, name)
    get_run_logger().info(
        "%d predictions by %s logged between %s and %s in %d files (%s)",
        window.rows,
        name,
        start,
        end,
        window.files,
        log_url(params),
    )
    return window


@task(name="join-labels", cache_policy=NONE)
def load_labelled(
    params: Params, window: LogWindow, reference: ChampionReference | None = None
) -> LabelledPredictions:
    """The labels joined to the window, encoded as the champion's scores index them (its
    classes; the task of params when there is no champion)."""
    labels, notes = read_labels(params.monitor.labels)
    task = reference.task if reference is not None else params.train.task
    classes = reference.classes if reference is not None and reference.classes else None
    joined = join_labels(window, labels, params.monitor.labels.key, task, classes)
    get_run_logger().info(
        "%d labels read, %d joined to logged predictions", len(labels), len(joined.frame)
    )
    return LabelledPredictions(
        joined.frame, joined.labels, joined.unmatched, (*notes, *joined.notes)
    )


def champion_reference(params: Params) -> ChampionReference | None:
    """The champion, its training rows (sampled), its holdout scores and holdout metric,
    by its task: P(positive), the predictions, or the class probabilities (multiclass; the
    decided class's one as ``holdout_scores``, what the serving app logs)."""
    from mlflow.tracking import MlflowClient

    from tasks.champion import champion_data_version, load_champion
    from tasks.gates.evidence import score

    name, alias = params.registry.model_name, params.registry.alias
    champion = load_champion(name, alias)
    if champion is None:
        return None
    version: DataVersion | None = champion_data_version.fn(params)
    assert version is not None  # the champion exists, so its lineage was just read
    train, holdout = split_holdout(read_version(fetch_version(version)), params.data)
    n = params.monitor.reference_rows
    if len(train) > n:
        train = train.sample(n, random_state=params.monitor.seed)
    if len(holdout) > n:
        holdout = holdout.sample(n, random_state=params.monitor.seed)
    task = params.train.task
    scores = score(champion.model, holdout[params.data.features], "champion", task)
    proba = None
    if task == "multiclass":
        proba, scores = scores, scores.max(axis=1)
    classes = getattr(champion.model, "classes_", None) if task != "regression" else None
    metrics = MlflowClient().get_run(str(champion.run_id)).data.metrics
    holdout_metric = metrics.get(f"holdout_{params.gates.primary_metric}")
    return ChampionReference(
        name,
        champion.version,
        str(champion.run_id),
        version.md5,
        train.reset_index(drop=True),
        np.asarray(scores, dtype=float),
        None if holdout_metric is None else float(holdout_metric),
        params.gates.threshold,
        task,
        tuple(canonical_key(c) or str(c) for c in classes) if classes is not None else (),
        proba,
        champion.model,
    )


@task(name="champion-reference", retries=1, retry_delay_seconds=2, cache_policy=NONE)
def load_reference(params: Params) -> ChampionReference | None:
    reference = champion_reference(params)
    if reference is not None:
        get_run_logger().info(
            "champion %s v%s (run %s) trained on md5=%s; holdout %s=%s",
            reference.model_name,
            reference.version,
            reference.run_id,
            reference.data_md5[:10],
            params.gates.primary_metric,
            reference.holdout_metric,
        )
    return reference


@task(name="check-logged-versions", cache_policy=NONE)
def missing_versions(params: Params, window: LogWindow) -> tuple[str, ...]:
    """Model versions in the log that the registry no longer has."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client, gone = MlflowClient(), []  # the window holds this model's predictions only
    for version in sorted(set(window.log["model_version"].astype(str))):
        try:
            client.get_model_version(params.registry.model_name, version)
        except MlflowException:
            gone.append(version)
    return tuple(gone)


def write_plots(
    report: MonitorReport,
    reference: ChampionReference | None,
    window: LogWindow,
    folder: Path,
) -> list[Path]:
    """Score distributions (holdout at promotion vs production) and the live metric by day."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    if reference is not None:
        ax.hist(reference.holdout_scores, bins=50, alpha=0.5, density=True, label="holdout")
    if window.rows:
        ax.hist(
            window.log["score"].to_numpy(), bins=50, alpha=0.5, density=True, label="production"
        )
    xlabel = {"regression": "predicted value", "multiclass": "probability of the decided class"}
    ax.set(title="Champion score distributions", xlabel=xlabel.get(report.task, "P(positive)"))
    ax.legend()
    paths.append(_save(fig, folder / "scores.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    if report.live_by_day:
        days, values, _ = zip(*report.live_by_day, strict=True)
        ax.plot(days, values, marker="o", label=f"live {report.metric}")
        ax.tick_params(axis="x", rotation=30)
    if report.holdout_metric is not None:
        ax.axhline(report.holdout_metric, color="k", ls=":", label="holdout at promotion")
    ax.set(title=f"Live {report.metric} by day of prediction", ylabel=report.metric)
    ax.legend()
    paths.append(_save(fig, folder / "live_metric.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def slack_message(report: MonitorReport, run_id: str | None, flow_run: str | None) -> Any:
    from tasks.notify import Message

    icon = ":rotating_light:" if report.retrain else ":white_check_mark:"
    title = report.summary()
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": report.to_markdown()[:2900]}},
    ]
    if run_id:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"MLflow run `{run_id}`"}]}
        )
    if flow_run:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": flow_run}]})
    return Message(text=f"{icon} {title}", blocks=blocks)


@task(name="publish-monitor-report", cache_policy=NONE)
def publish_report(
    report: MonitorReport,
    reference: ChampionReference | None,
    window: LogWindow,
    params: Params,
    flow_run: str | None = None,
) -> str:
    """The report as a Prefect artifact, an MLflow run (metrics, JSON, plots) and a Slack post."""
    import mlflow
    from prefect.artifacts import create_markdown_artifact

    from tasks.notify import send_message, webhook_url

    logger = get_run_logger()
    create_markdown_artifact(report.to_markdown(), key="production-monitor")
    name = params.mlflow.experiment + MONITOR_EXPERIMENT_SUFFIX
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:  # like setup_tracking: a SQLite store keeps its artifacts in the state dir, not cwd
        local = mlflow.get_tracking_uri().startswith("sqlite:")
        location = (params.state_dir / "mlartifacts").resolve().as_uri() if local else None
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
    with mlflow.start_run(experiment_id=experiment_id, run_name="production-monitor") as run:
        mlflow.set_tags(
            {
                "ct.model_name": report.model_name,
                "ct.model_version": report.champion_version or "",
                "ct.retrain": str(report.retrain).lower(),
            }
        )
        values: dict[str, float] = {"rows": report.rows, "champion_rows": report.champion_rows}
        if report.live is not None:
            values |= {
                f"live_{report.metric}": report.live.value,
                f"live_{report.metric}_low": report.live.low,
                f"live_{report.metric}_high": report.live.high,
            }
        if report.score_drift is not None:
            values |= {"score_psi": report.score_drift.psi}
        if report.feature_drift is not None:
            values |= {"drifted_features": len(report.feature_drift.drifted)}
        mlflow.log_metrics({k: float(v) for k, v in values.items() if math.isfinite(float(v))})
        mlflow.log_dict(report.to_dict(), "monitor/report.json")
        mlflow.log_text(report.to_markdown(), "monitor/report.md")
        with tempfile.TemporaryDirectory() as plots:
            write_plots(report, reference, window, Path(plots))
            mlflow.log_artifacts(plots, "monitor")
        run_id = run.info.run_id
    delivery = send_message(
        slack_message(report, run_id, flow_run),
        webhook_url(params.notify),
        params.state_dir,
        params.notify.retries,
    )
    logger.info("monitor report: MLflow run %s, Slack %s", run_id, delivery.detail)
    return str(run_id)


@task(name="request-retraining", cache_policy=NONE)
def request_retraining(report: MonitorReport, params: Params) -> dict[str, Any]:
    """Emit the event that `continuous-training/<model>-on-new-data` listens for, with reasons."""
    from prefect.events import emit_event

    data = params.data
    version = resolve_version(data.repo, data.path, data.rev)
    payload = {
        "path": version.path,
        "rev": version.rev,
        "md5": version.md5,
        "repo": version.repo,
        "source": "production-monitor",
        "model_version": report.champion_version,
        "reasons": list(report.reasons),
    }
    emit_event(
        event=params.drift.event,
        resource={"prefect.resource.id": f"ctflows.data.{version.path}"},
        payload=payload,
    )
    get_run_logger().warning(
        "production monitor: emitted %s for %s md5=%s: %s",
        params.drift.event,
        version.path,
        version.md5[:10],
        "; ".join(report.reasons),
    )
    return payload
