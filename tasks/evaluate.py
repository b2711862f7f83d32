"""Stage `evaluate`: score candidate and champion on the same held-out rows, then gate."""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from sklearn import metrics as skm

from tasks.config import DataParams, GateParams, Params, load_params
from tasks.data import DataVersion, read_batch, read_version, split_holdout

log = logging.getLogger(__name__)

Decision = Literal["promote", "reject"]
Status = Literal["passed", "failed", "skipped"]
HIGHER_IS_BETTER = {
    "roc_auc": True,
    "pr_auc": True,
    "f1": True,
    "accuracy": True,
    "log_loss": False,
    "brier": False,
}


class Scorer(Protocol):
    def predict_proba(self, X: pd.DataFrame) -> np.ndarray: ...


class EvaluationError(ValueError):
    """The holdout or a model cannot be evaluated; the message names the cause."""


class GateRejected(RuntimeError):
    """Raised only when the policy says a rejection fails the run."""

    def __init__(self, report: GateReport) -> None:
        self.report = report
        names = ", ".join(g.name for g in report.failed)
        super().__init__(f"candidate rejected by gates: {names}")


@dataclass(frozen=True)
class Gate:
    name: str
    status: Status
    reason: str
    metric: str | None = None
    candidate: float | None = None
    champion: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class GateReport:
    decision: Decision
    primary_metric: str
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    gates: tuple[Gate, ...] = field(default_factory=tuple)
    holdout_rows: int = 0

    @property
    def candidate_primary(self) -> float:
        return self.candidate_metrics[self.primary_metric]

    @property
    def champion_primary(self) -> float | None:
        return (self.champion_metrics or {}).get(self.primary_metric)

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if g.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [
            f"**Decision: {self.decision}** on {self.holdout_rows} held-out rows "
            f"(primary metric `{self.primary_metric}`)",
            "",
            "| gate | status | metric | candidate | champion | threshold | reason |",
            "|---|---|---|---|---|---|---|",
        ]
        for g in self.gates:
            lines.append(
                f"| {g.name} | {g.status} | {g.metric or ''} | {_fmt(g.candidate)} | "
                f"{_fmt(g.champion)} | {_fmt(g.threshold)} | {g.reason} |"
            )
        return "\n".join(lines)

    def table_rows(self) -> list[dict[str, Any]]:
        return [
            {k: (_fmt(v) if isinstance(v, float) else v) for k, v in asdict(g).items()}
            for g in self.gates
        ]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def compute_metrics(y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """All gate metrics; a metric undefined on this data (one class only) is NaN, never raised."""
    y = np.asarray(y)
    p = np.clip(np.asarray(scores, dtype=float), 1e-15, 1 - 1e-15)
    decided = (p >= threshold).astype(int)
    one_class = len(np.unique(y)) < 2
    fns: dict[str, Callable[[], float]] = {
        "roc_auc": lambda: skm.roc_auc_score(y, p),
        "pr_auc": lambda: skm.average_precision_score(y, p),
        "f1": lambda: skm.f1_score(y, decided, zero_division=0.0),
        "accuracy": lambda: skm.accuracy_score(y, decided),
        "log_loss": lambda: skm.log_loss(y, p, labels=[0, 1]),
        "brier": lambda: skm.brier_score_loss(y, p),
    }
    out = {}
    for name, fn in fns.items():
        out[name] = math.nan if one_class and name in {"roc_auc", "pr_auc"} else float(fn())
    return out


def _better(metric: str, a: float, b: float) -> float:
    """How much ``a`` beats ``b`` on ``metric`` (positive is better, whatever the direction)."""
    return a - b if HIGHER_IS_BETTER[metric] else b - a


def check_holdout(holdout: pd.DataFrame, data: DataParams) -> None:
    missing = sorted(set([*data.features, data.label]) - set(holdout.columns))
    if missing:
        raise EvaluationError(f"holdout lacks columns {missing}: cannot score or gate")
    if holdout.empty:
        raise EvaluationError("holdout is empty: nothing to score")


def score(model: Scorer, holdout: pd.DataFrame, who: str) -> np.ndarray:
    try:
        proba = np.asarray(model.predict_proba(holdout))
    except Exception as exc:  # any model failure must name the model, not pass silently
        raise EvaluationError(
            f"the {who} cannot score this data ({type(exc).__name__}: {exc})"
        ) from exc
    return proba[:, 1] if proba.ndim == 2 else proba


def compare(
    candidate: Scorer,
    champion: Scorer | None,
    holdout: pd.DataFrame,
    policy: GateParams,
    data: DataParams | None = None,
) -> GateReport:
    """Gate ``candidate`` against ``champion`` on exactly the same ``holdout`` rows.

    ``data`` names the label and feature columns (default: the repo's params.yaml).
    """
    data = data or load_params().data
    check_holdout(holdout, data)
    y = holdout[data.label].to_numpy()
    cand = compute_metrics(y, score(candidate, holdout, "candidate"))
    gates: list[Gate] = []
    champ: dict[str, float] | None = None
    if champion is not None:
        try:
            champ = compute_metrics(y, score(champion, holdout, "champion"))
        except EvaluationError as exc:
            gates.append(Gate("champion_scoring", "failed", str(exc)))

    for metric, floor in policy.minimums.items():
        value = cand[metric]
        if math.isnan(value):
            gates.append(Gate(f"minimum_{metric}", "failed", f"{metric} is undefined here", metric))
            continue
        ok = _better(metric, value, floor) >= 0
        word = "at least" if HIGHER_IS_BETTER[metric] else "at most"
        gates.append(
            Gate(
                f"minimum_{metric}",
                "passed" if ok else "failed",
                f"{metric} {value:.4f} must be {word} {floor}",
                metric,
                candidate=value,
                threshold=floor,
            )
        )
    gates.extend(_champion_gates(policy, cand, champ))
    decision: Decision = "reject" if any(g.status == "failed" for g in gates) else "promote"
    return GateReport(decision, policy.primary_metric, cand, champ, tuple(gates), len(holdout))


def _champion_gates(
    policy: GateParams, cand: dict[str, float], champ: dict[str, float] | None
) -> list[Gate]:
    metric = policy.primary_metric
    if champ is None:
        reason = "no champion yet"
        return [
            Gate("no_regression", "skipped", reason, metric, cand[metric]),
            Gate("improvement", "skipped", reason, metric, cand[metric]),
        ]
    c, h = cand[metric], champ[metric]
    if math.isnan(c) or math.isnan(h):
        why = f"{metric} is undefined on this holdout"
        return [
            Gate("no_regression", "failed", why, metric, c, h),
            Gate("improvement", "failed", why, metric, c, h),
        ]
    gain = _better(metric, c, h)
    regression_ok = gain >= -policy.max_regression
    improvement_ok = gain > policy.min_improvement
    return [
        Gate(
            "no_regression",
            "passed" if regression_ok else "failed",
            f"{metric} changed by {gain:+.4f}; tolerated drop {policy.max_regression}",
            metric,
            c,
            h,
            -policy.max_regression,
        ),
        Gate(
            "improvement",
            "passed" if improvement_ok else "failed",
            f"gain {gain:+.4f} must exceed {policy.min_improvement} (a tie never promotes)",
            metric,
            c,
            h,
            policy.min_improvement,
        ),
    ]


def log_report(report: GateReport, run_id: str) -> None:
    """Metrics and the report JSON on the candidate's MLflow run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for name, value in report.candidate_metrics.items():
        if not math.isnan(value):
            client.log_metric(run_id, f"holdout_{name}", value)
    for name, value in (report.champion_metrics or {}).items():
        if not math.isnan(value):
            client.log_metric(run_id, f"champion_holdout_{name}", value)
    client.log_dict(run_id, report.to_dict(), "gates/report.json")
    client.log_text(run_id, report.to_markdown(), "gates/report.md")
    client.set_tag(run_id, "ct.decision", report.decision)


@task(name="evaluate-candidate", cache_policy=NONE)
def evaluate_candidate(
    candidate: Scorer, champion: Scorer | None, version: DataVersion, params: Params, run_id: str
) -> GateReport:
    """Gate the candidate on the batch's held-out rows; log the report to MLflow and Prefect."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    logger = get_run_logger()
    _, holdout = split_holdout(read_version(version), params.data)
    report = compare(candidate, champion, holdout, params.gates, params.data)
    log_report(report, run_id)
    create_table_artifact(report.table_rows(), key="gate-report", description=report.decision)
    create_markdown_artifact(report.to_markdown(), key="gate-summary")
    metric = params.gates.primary_metric
    logger.info(
        "decision=%s %s candidate=%.4f champion=%s md5=%s run_id=%s",
        report.decision,
        metric,
        report.candidate_metrics[metric],
        _fmt((report.champion_metrics or {}).get(metric)) or "none",
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
    report = compare(model, None, holdout, params.gates, params.data)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report.candidate_metrics, indent=1, sort_keys=True))
    print(json.dumps(report.candidate_metrics, sort_keys=True))


if __name__ == "__main__":
    main()
