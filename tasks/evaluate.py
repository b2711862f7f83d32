"""Stage `evaluate`: score candidate and champion on the same held-out rows, then gate.

The gates are units of their own (``tasks/gates/``), configured under ``gates:`` in
params.yaml; each reports ``passed``, ``failed`` or ``skipped`` with its measured values,
threshold and a reason. Metrics live in ``tasks.metrics``, the paired bootstrap in
``tasks.resampling``, the report in ``tasks.reports``, its plots in ``tasks.plots``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import DataParams, GateParams, Params, load_params
from tasks.data import DataVersion, read_batch, read_version, split_holdout
from tasks.gates.evidence import Scorer, build_evidence, check_holdout, measure_latency, score
from tasks.gates.fairness import slice_metrics
from tasks.gates.model_size import model_bytes
from tasks.gates.registry import build_gates, run_gates
from tasks.gates.reproducibility import reproducibility_result
from tasks.metrics import HIGHER_IS_BETTER, TaskType, compute_metrics, metric_value, psi
from tasks.plots import write_gate_overview, write_plots
from tasks.reports import (
    Decision,
    EvaluationError,
    Gate,
    GateError,
    GateRejected,
    GateReport,
    GateResult,
    fmt,
)
from tasks.resampling import bootstrap_gain

if TYPE_CHECKING:
    from concurrent.futures import Future

    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "HIGHER_IS_BETTER",
    "EvaluationError",
    "Gate",
    "GateError",
    "GateRejected",
    "GateReport",
    "GateResult",
    "bootstrap_gain",
    "check_holdout",
    "compare",
    "compute_metrics",
    "measure_latency",
    "metric_value",
    "model_bytes",
    "psi",
    "reproducibility_gate",
    "score",
    "slice_metrics",
    "write_plots",
]


def compare(
    candidate: Scorer,
    champion: Scorer | None,
    holdout: pd.DataFrame,
    policy: GateParams,
    data: DataParams | None = None,
    extra_gates: tuple[GateResult, ...] = (),
    force: bool = False,
    task: TaskType = "binary",
    retrain: Callable[[], Any] | None = None,
    scorer: Callable[[Any, str], np.ndarray] | None = None,
) -> GateReport:
    """Gate ``candidate`` against ``champion`` on exactly the same ``holdout`` rows.

    ``data`` names the label and feature columns (default: the repo's params.yaml). Every gate
    of the policy (built-in and ``gates.custom``) sees the same evidence, computed once.
    A champion that lost columns it was trained on is a schema change, judged by the
    ``champion_scoring`` gate; any other error (a model that cannot score, a gate that
    raises, a disturbed timer) raises: an error is never a decision. ``force`` skips the
    gates that allow it (no-regression and significance) and, with a declared schema change,
    the comparison with the champion; every other gate still applies. ``scorer(model, who)``
    scores the holdout's rows elsewhere (the Dask engine's workers) instead of here.
    """
    data = data or load_params().data
    evidence = build_evidence(
        candidate, champion, holdout, policy, data, task, force, retrain, scorer
    )
    gates = build_gates(policy)
    evidence.artifacts["plotting_gates"] = [g for g in gates if callable(getattr(g, "plot", None))]
    results = run_gates(gates, evidence) + list(extra_gates)
    decision: Decision = "reject" if any(g.status == "failed" for g in results) else "promote"
    if policy.defaulted:
        evidence.notes.append(
            f"task defaults ({task}) used where params set no value: {', '.join(policy.defaulted)}"
        )
    return GateReport(
        decision,
        policy.primary_metric,
        evidence.candidate_metrics,
        evidence.champion_metrics,
        tuple(results),
        len(holdout),
        evidence,
        task,
        tuple(evidence.notes),
    )


def reproducibility_gate(
    model: Scorer, retrained: Scorer, holdout: pd.DataFrame, tolerance: float
) -> GateResult:
    """Retraining on the same data and params must give the same predictions."""
    return reproducibility_result(model, retrained, holdout, tolerance)


def with_gate(report: GateReport, result: GateResult) -> GateReport:
    """The report with one more gate's result (a gate run after the image was built); a
    failed result turns the decision to reject."""
    from dataclasses import replace

    decision = "reject" if result.status == "failed" else report.decision
    return replace(report, gates=(*report.gates, result), decision=decision)


def log_report(report: GateReport, run_id: str) -> None:
    """Metrics, the report JSON/markdown and the decision on the candidate's MLflow run."""
    import time

    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{prefix}{_metric_key(name)}", value, now, 0)
        for prefix, values in (
            ("holdout_", report.candidate_metrics),
            ("champion_holdout_", report.champion_metrics or {}),
        )
        for name, value in values.items()
        if not math.isnan(value)
    ]
    client.log_dict(run_id, report.to_dict(), "gates/report.json")
    client.log_text(run_id, report.to_markdown(), "gates/report.md")
    # one write for all metrics and the decision (one store round trip each, otherwise)
    failed = ",".join(sorted({g.gate or g.name for g in report.failed}))  # read by --redecide
    client.log_batch(
        run_id,
        metrics=metrics,
        tags=[RunTag("ct.decision", report.decision), RunTag("ct.failed_gates", failed)],
    )


def log_report_plots(report: GateReport, run_id: str) -> int:
    """The report's plots (PNG) under ``gates/`` on the candidate's MLflow run; how many."""
    import tempfile

    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        drawn = [*write_plots(report, folder), write_gate_overview(report, folder)]
        MlflowClient().log_artifacts(run_id, str(folder), "gates")
    return len(drawn)


def start_plots(report: GateReport, run_id: str) -> Future[int]:
    """Draw and log the report's plots in a thread of this process while the flow goes on
    (they decide nothing); ``wait_for_plots`` before the run ends. A thread, not a Prefect
    task: its state changes would be writes to the Prefect API alongside the flow's own, and
    a SQLite-backed server answers those with "database is locked"."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gate-plots")
    try:
        return pool.submit(log_report_plots, report, run_id)
    finally:
        pool.shutdown(wait=False)  # the thread finishes its one job, then ends


def wait_for_plots(plots: Future[int] | None) -> None:
    """Wait for ``start_plots``; plots that failed cost a warning, not the run."""
    if plots is None:
        return
    logger = get_run_logger()
    try:
        drawn = plots.result()
    except Exception as exc:
        logger.warning("gate plots not logged: %s: %s", type(exc).__name__, exc)
    else:
        logger.info("%d gate plots logged to MLflow", drawn)


def _metric_key(name: str) -> str:
    """MLflow metric names allow no brackets: ``recall[barolo]`` is logged as
    ``recall_barolo``; other characters MLflow refuses become ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name.replace("[", "_").replace("]", ""))


@task(name="evaluate-candidate", cache_policy=NONE)
def evaluate_candidate(
    candidate: Scorer,
    champion: Scorer | None,
    version: DataVersion,
    params: Params,
    run_id: str,
    force: bool = False,
) -> GateReport:
    """Gate the candidate on the batch's held-out rows; log the report to MLflow and Prefect
    (its plots: ``start_plots``)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    logger = get_run_logger()
    with contextlib.ExitStack() as stack:
        retrain: Callable[[], Any]
        scorer: Callable[[Any, str], np.ndarray] | None = None
        if params.train.engine == "dask":  # the holdout stays on the workers; they score it
            from tasks.dask_engine import train_on_dask
            from tasks.dask_scoring import holdout_on_dask

            held = stack.enter_context(holdout_on_dask(version, params))
            holdout, scorer = held.frame, held.score

            def retrain() -> Any:
                return train_on_dask(version, params).pipeline
        else:
            train_df, holdout = split_holdout(read_version(version), params.data)

            def retrain() -> Any:
                from tasks.train import train_model

                return train_model(train_df, params)

        report = compare(
            candidate,
            champion,
            holdout,
            params.gates,
            params.data,
            (),
            force,
            params.train.task,
            retrain,
            scorer,
        )
    for note in report.notes:
        (logger.warning if note.startswith("WARNING") else logger.info)("%s", note)
    log_report(report, run_id)
    create_table_artifact(report.table_rows(), key="gate-report", description=report.decision)
    create_markdown_artifact(report.to_markdown(), key="gate-summary")
    logger.info(
        "decision=%s %s candidate=%.4f champion=%s md5=%s run_id=%s",
        report.decision,
        report.primary_metric,
        report.candidate_primary,
        fmt(report.champion_primary) or "none",
        version.short,
        run_id,
    )
    for gate in report.failed:
        logger.warning("gate %s failed: %s", gate.name, gate.reason)
    return report


def main(argv: list[str] | None = None) -> None:
    """dvc.yaml stage `evaluate`: the candidate's holdout metrics as JSON."""
    parser = argparse.ArgumentParser(description="Score a trained pipeline on the holdout split.")
    parser.add_argument("batch", type=Path, help="parquet batch the model was trained on")
    parser.add_argument("--model", type=Path, required=True, help="pickled pipeline")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics to write")
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)
    _, holdout = split_holdout(read_batch(args.batch), params.data)
    model = pickle.loads(args.model.read_bytes())
    check_holdout(holdout, params.data)
    from tasks.gates.evidence import encode_labels

    task_type = params.train.task
    y = encode_labels(holdout[params.data.label].to_numpy(), model, task_type)
    scores = score(model, holdout, "model", task_type)
    metrics = compute_metrics(
        y, scores, params.gates.threshold, task_type, getattr(model, "classes_", None)
    )
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=1, sort_keys=True))
    print(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    main()
