"""Stage `evaluate`: score candidate and champion on the same held-out rows, then gate.

The gates come from the typed policy (``params.gates``); each is optional and reports
``passed``, ``failed`` or ``skipped`` with its measured values, threshold and a reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import DataParams, GateParams, Params, load_params
from tasks.data import DataVersion, read_batch, read_version, split_holdout

if TYPE_CHECKING:
    import pandas as pd

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
EXACT_BOOTSTRAP_CELLS = 20_000_000  # rows x resamples above which pr_auc is subsampled
QUANTILE_BINS = 4096
FORCE_SKIPS = ("no_regression", "significance")
RATIO_FLOOR_MS = 1.0  # the latency ratio is judged only when the candidate's p95 is above this
SliceTable = dict[str, dict[str, dict[str, float]]]  # column -> value -> {rows, metric, ...}


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
class Evidence:
    """The arrays behind a report, for its plots (not serialized)."""

    y: np.ndarray
    candidate_scores: np.ndarray
    champion_scores: np.ndarray | None
    bootstrap_gains: np.ndarray | None
    slices: dict[str, SliceTable]  # "candidate" / "champion" -> slice table


@dataclass(frozen=True)
class GateReport:
    decision: Decision
    primary_metric: str
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    gates: tuple[Gate, ...] = field(default_factory=tuple)
    holdout_rows: int = 0
    evidence: Evidence | None = field(default=None, compare=False, repr=False)

    @property
    def candidate_primary(self) -> float:
        return self.candidate_metrics[self.primary_metric]

    @property
    def champion_primary(self) -> float | None:
        return (self.champion_metrics or {}).get(self.primary_metric)

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if g.status == "failed"]

    def gate(self, name: str) -> Gate:
        return next(g for g in self.gates if g.name == name)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("evidence")
        if self.evidence is not None:
            out["slices"] = self.evidence.slices
        return _finite(out)

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
    if value is None:
        return ""
    return f"{value:.4g}" if abs(value) >= 1000 else f"{value:.4f}"


def _finite(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# -- metrics -------------------------------------------------------------------------------------


def compute_metrics(y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """All gate metrics; a metric undefined on this data (one class only) is NaN, never raised."""
    return {name: metric_value(name, y, scores, threshold) for name in HIGHER_IS_BETTER}


def metric_value(metric: str, y: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """One gate metric; NaN when undefined on this data (one class only)."""
    from sklearn import metrics as skm

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
    if one_class and metric in {"roc_auc", "pr_auc"}:
        return math.nan
    return float(fns[metric]())


def _better(metric: str, a: float, b: float) -> float:
    """How much ``a`` beats ``b`` on ``metric`` (positive is better, whatever the direction)."""
    return a - b if HIGHER_IS_BETTER[metric] else b - a


# -- paired bootstrap ----------------------------------------------------------------------------


def _poisson_mean(
    values: np.ndarray, rng: np.random.Generator, resamples: int, exact_cells: bool = False
) -> np.ndarray:
    """Poisson-bootstrap replicates of the mean of ``values`` (one per resample), vectorized.

    Rows are grouped into quantile cells of their value (or exact distinct values); each
    cell's bootstrap weight is Poisson(cell size), which is what per-row Poisson(1) weights
    sum to. Cost is resamples x cells, independent of the number of rows.
    """
    if len(values) == 0:
        return np.full(resamples, np.nan)
    if exact_cells or len(values) <= QUANTILE_BINS:
        cells, inverse = np.unique(values, return_inverse=True)
        counts = np.bincount(inverse).astype(float)
        means = cells.astype(float)
    else:
        order = np.argsort(values, kind="stable")
        edges = np.linspace(0, len(values), QUANTILE_BINS + 1).astype(int)
        counts = np.diff(edges).astype(float)
        sums = np.add.reduceat(values[order], edges[:-1])
        means = sums / counts
    weights = rng.poisson(counts, size=(resamples, len(counts))).astype(float)
    total = weights.sum(axis=1)
    total[total == 0] = np.nan
    result: np.ndarray = (weights @ means) / total
    return result


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong placement values: per positive, the share of negatives it outranks; per negative,
    the share of positives that outrank it (ties count half)."""
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    s_pos, s_neg = s[y == 1], s[y == 0]
    below = np.searchsorted(neg, s_pos, side="left")
    ties = np.searchsorted(neg, s_pos, side="right") - below
    v10 = (below + 0.5 * ties) / len(neg)
    above = len(pos) - np.searchsorted(pos, s_neg, side="right")
    ties_n = np.searchsorted(pos, s_neg, side="right") - np.searchsorted(pos, s_neg, side="left")
    v01 = (above + 0.5 * ties_n) / len(pos)
    return v10, v01


def bootstrap_gain(
    metric: str,
    y: np.ndarray,
    cand: np.ndarray,
    champ: np.ndarray,
    threshold: float,
    resamples: int,
    seed: int,
) -> np.ndarray:
    """Paired bootstrap replicates of the candidate's gain over the champion on ``metric``.

    Both models are resampled with the same row weights. Vectorized per metric: accuracy and
    F1 are exact on their few decision cells; log loss and Brier are means of per-row loss
    differences; ROC AUC uses DeLong placement values (its influence function); PR AUC falls
    uses Poisson row weights on each model's sorted scores, on a subsample of rows when
    rows x resamples would exceed 2e7.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(int)
    dc, dh = (cand >= threshold).astype(int), (champ >= threshold).astype(int)
    if metric == "accuracy":
        diff = (dc == y).astype(float) - (dh == y).astype(float)
        return _poisson_mean(diff, rng, resamples, exact_cells=True)
    if metric in {"log_loss", "brier"}:
        diff = _row_loss(metric, y, champ) - _row_loss(metric, y, cand)
        return _poisson_mean(diff, rng, resamples)
    if metric == "f1":
        return _f1_gain(y, dc, dh, rng, resamples)
    if metric == "roc_auc":
        if y.min() == y.max():
            return np.full(resamples, np.nan)
        c10, c01 = _placements(y, cand)
        h10, h01 = _placements(y, champ)
        point = float(np.mean(c10) - np.mean(h10))
        pos = _poisson_mean(c10 - h10, rng, resamples)
        neg = _poisson_mean(c01 - h01, rng, resamples)
        result: np.ndarray = pos + neg - point
        return result
    return _resample_rows(metric, y, cand, champ, threshold, resamples, rng)


def _row_loss(metric: str, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    if metric == "brier":
        out: np.ndarray = (p - y) ** 2
        return out
    out = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return out


def _f1_gain(
    y: np.ndarray, dc: np.ndarray, dh: np.ndarray, rng: np.random.Generator, resamples: int
) -> np.ndarray:
    cell = dc * 4 + dh * 2 + y
    counts = np.bincount(cell, minlength=8).astype(float)
    w = rng.poisson(counts, size=(resamples, 8)).astype(float)
    idx = np.arange(8)
    c_dec, h_dec, lab = idx // 4, (idx // 2) % 2, idx % 2

    def f1(dec: np.ndarray) -> np.ndarray:
        tp = w[:, (dec == 1) & (lab == 1)].sum(axis=1)
        fp = w[:, (dec == 1) & (lab == 0)].sum(axis=1)
        fn = w[:, (dec == 0) & (lab == 1)].sum(axis=1)
        denom = 2 * tp + fp + fn
        return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)

    result: np.ndarray = f1(c_dec) - f1(h_dec)
    return result


def _resample_rows(
    metric: str,
    y: np.ndarray,
    cand: np.ndarray,
    champ: np.ndarray,
    threshold: float,
    resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """PR AUC (average precision) under Poisson row weights, each model sorted once.

    Above ``EXACT_BOOTSTRAP_CELLS`` rows x resamples, a random subsample of rows is used,
    which widens the interval (never narrows it).
    """
    if metric != "pr_auc":
        raise ValueError(f"no bootstrap for metric {metric!r}")
    n = len(y)
    rows = min(n, max(1000, EXACT_BOOTSTRAP_CELLS // resamples))
    if rows < n:
        keep = rng.choice(n, rows, replace=False)
        y, cand, champ = y[keep], cand[keep], champ[keep]
    orders = [np.argsort(-cand, kind="stable"), np.argsort(-champ, kind="stable")]
    gains = np.empty(resamples)
    chunk = max(1, 2_000_000 // rows)
    for start in range(0, resamples, chunk):
        w = rng.poisson(1.0, size=(min(chunk, resamples - start), rows)).astype(float)
        ap = []
        for order in orders:
            ws, ys = w[:, order], y[order]
            hits = ws * ys
            precision = np.cumsum(hits, axis=1) / np.maximum(np.cumsum(ws, axis=1), 1e-12)
            positives = hits.sum(axis=1)
            ap.append(
                np.divide(
                    (precision * hits).sum(axis=1),
                    positives,
                    out=np.full(len(w), np.nan),
                    where=positives > 0,
                )
            )
        gains[start : start + len(w)] = ap[0] - ap[1]
    return gains


# -- other measurements ----------------------------------------------------------------------------


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` on its quantile bins."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:
        edges = np.linspace(
            min(expected.min(), actual.min()), max(expected.max(), actual.max()) + 1e-12, bins + 1
        )
    inner = edges[1:-1]
    e = np.bincount(np.searchsorted(inner, expected, side="right"), minlength=len(inner) + 1)
    a = np.bincount(np.searchsorted(inner, actual, side="right"), minlength=len(inner) + 1)
    pe = np.clip(e / e.sum(), 1e-6, None)
    pa = np.clip(a / a.sum(), 1e-6, None)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def measure_latency(
    candidate: Scorer, champion: Scorer | None, batch: pd.DataFrame, repeats: int, warmup: int
) -> tuple[float, float | None]:
    """p95 seconds of ``predict_proba`` on ``batch``, both models interleaved after a warm-up."""
    models = [candidate] if champion is None else [candidate, champion]
    for _ in range(warmup):
        for m in models:
            m.predict_proba(batch)
    times: list[list[float]] = [[] for _ in models]
    for i in range(repeats):
        order = range(len(models)) if i % 2 == 0 else reversed(range(len(models)))
        for k in order:
            started = time.perf_counter()
            models[k].predict_proba(batch)
            times[k].append(time.perf_counter() - started)
    p95 = [float(np.percentile(t, 95)) for t in times]
    return p95[0], (p95[1] if champion is not None else None)


def model_bytes(model: Any) -> int:
    import cloudpickle

    return len(cloudpickle.dumps(model))


def predict_peak_bytes(model: Scorer, batch: pd.DataFrame) -> int:
    """Peak memory traced (Python and NumPy allocations) during one prediction call."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    model.predict_proba(batch)
    peak = tracemalloc.get_traced_memory()[1] - base
    if not was_tracing:
        tracemalloc.stop()
    return int(peak)


def slice_metrics(
    holdout: pd.DataFrame,
    scores: np.ndarray,
    y: np.ndarray,
    column: str,
    metric: str,
    threshold: float,
    min_rows: int,
) -> dict[str, dict[str, float]]:
    """Per value of ``column``: rows, the metric and the positive-decision rate."""
    out: dict[str, dict[str, float]] = {}
    values = holdout[column].astype(str).to_numpy()
    for value in np.unique(values):
        mask = values == value
        rows = int(mask.sum())
        entry = {"rows": float(rows), "positive_rate": float(np.mean(scores[mask] >= threshold))}
        entry[metric] = (
            metric_value(metric, y[mask], scores[mask], threshold) if rows >= min_rows else math.nan
        )
        out[str(value)] = entry
    return out


# -- the gates -------------------------------------------------------------------------------------


def check_holdout(holdout: pd.DataFrame, data: DataParams) -> None:
    missing = sorted(set([*data.features, data.label]) - set(holdout.columns))
    if missing:
        raise EvaluationError(f"holdout lacks columns {missing}: cannot score or gate")
    if holdout.empty:
        raise EvaluationError("holdout is empty: nothing to score")


def score(model: Scorer, holdout: pd.DataFrame, who: str) -> np.ndarray:
    try:
        proba = np.asarray(model.predict_proba(holdout), dtype=float)
    except Exception as exc:  # any model failure must name the model, not pass silently
        raise EvaluationError(
            f"the {who} cannot score this data ({type(exc).__name__}: {exc})"
        ) from exc
    scores: np.ndarray = proba[:, 1] if proba.ndim == 2 else proba
    if len(scores) != len(holdout) or not np.all(np.isfinite(scores)):
        raise EvaluationError(f"the {who} returned {len(scores)} scores, some not finite")
    return scores


def compare(
    candidate: Scorer,
    champion: Scorer | None,
    holdout: pd.DataFrame,
    policy: GateParams,
    data: DataParams | None = None,
    extra_gates: tuple[Gate, ...] = (),
    force: bool = False,
) -> GateReport:
    """Gate ``candidate`` against ``champion`` on exactly the same ``holdout`` rows.

    ``data`` names the label and feature columns (default: the repo's params.yaml). A champion
    that cannot score the data is a failed gate; a holdout that cannot be scored is an error.
    ``force`` skips only the no-regression and significance gates (a manual override); every
    other gate, and data validation before it, still applies.
    """
    data = data or load_params().data
    check_holdout(holdout, data)
    y = holdout[data.label].to_numpy().astype(int)
    cand_s = score(candidate, holdout, "candidate")
    cand = compute_metrics(y, cand_s, policy.threshold)
    gates: list[Gate] = []
    champ_s: np.ndarray | None = None
    champ: dict[str, float] | None = None
    if champion is not None:
        try:
            champ_s = score(champion, holdout, "champion")
            champ = compute_metrics(y, champ_s, policy.threshold)
        except EvaluationError as exc:
            gates.append(Gate("champion_scoring", "failed", str(exc)))
            champion = None

    gates.extend(_minimum_gates(policy, cand))
    boot = None
    if force:
        why = "skipped by force=True (manual override)"
        gates += [Gate(n, "skipped", why, policy.primary_metric) for n in FORCE_SKIPS]
    else:
        gates.extend(_no_regression_gate(policy, cand, champ))
        boot, significance = _significance_gate(policy, y, cand_s, champ_s, cand, champ)
        gates.append(significance)
    batch = holdout.head(policy.latency.batch_size)
    gates.extend(_latency_gates(policy, candidate, champion, batch))
    gates.extend(_size_gates(policy, candidate, batch))
    slices, fairness = _fairness_gates(policy, holdout, y, cand_s, champ_s)
    gates.extend(fairness)
    gates.extend(_parity_gates(policy, cand_s, champ_s))
    gates.extend(extra_gates)
    decision: Decision = "reject" if any(g.status == "failed" for g in gates) else "promote"
    evidence = Evidence(y, cand_s, champ_s, boot, slices)
    return GateReport(
        decision, policy.primary_metric, cand, champ, tuple(gates), len(holdout), evidence
    )


def _minimum_gates(policy: GateParams, cand: dict[str, float]) -> list[Gate]:
    gates = []
    for metric, floor in policy.minimums.items():
        value = cand[metric]
        name = f"minimum_{metric}"
        if math.isnan(value):
            gates.append(Gate(name, "failed", f"{metric} is undefined on this holdout", metric))
            continue
        ok = _better(metric, value, floor) >= 0
        word = "at least" if HIGHER_IS_BETTER[metric] else "at most"
        status: Status = "passed" if ok else "failed"
        reason = f"{metric} {value:.4f} must be {word} {floor}"
        gates.append(Gate(name, status, reason, metric, value, threshold=floor))
    return gates


def _no_regression_gate(
    policy: GateParams, cand: dict[str, float], champ: dict[str, float] | None
) -> list[Gate]:
    rule, metric = policy.no_regression, policy.primary_metric
    if not rule.enabled:
        return [Gate("no_regression", "skipped", "disabled in params", metric)]
    if champ is None:
        return [Gate("no_regression", "skipped", "no champion to compare with", metric)]
    c, h = cand[metric], champ[metric]
    if math.isnan(c) or math.isnan(h):
        return [Gate("no_regression", "failed", f"{metric} is undefined here", metric, c, h)]
    gain = _better(metric, c, h)
    status: Status = "passed" if gain >= -rule.tolerance else "failed"
    reason = f"{metric} changed by {gain:+.4f}; tolerated drop {rule.tolerance}"
    return [Gate("no_regression", status, reason, metric, c, h, -rule.tolerance)]


def _significance_gate(
    policy: GateParams,
    y: np.ndarray,
    cand_s: np.ndarray,
    champ_s: np.ndarray | None,
    cand: dict[str, float],
    champ: dict[str, float] | None,
) -> tuple[np.ndarray | None, Gate]:
    rule, metric = policy.significance, policy.primary_metric
    if not rule.enabled:
        return None, Gate("significance", "skipped", "disabled in params", metric)
    if champ_s is None or champ is None:
        return None, Gate("significance", "skipped", "no champion to compare with", metric)
    c, h = cand[metric], champ[metric]
    if math.isnan(c) or math.isnan(h):
        return None, Gate("significance", "failed", f"{metric} is undefined here", metric, c, h)
    gain = _better(metric, c, h)
    boot = bootstrap_gain(metric, y, cand_s, champ_s, policy.threshold, rule.resamples, rule.seed)
    lo, hi = (float(q) for q in np.nanquantile(boot, [rule.alpha, 1 - rule.alpha]))
    ok = gain > rule.min_improvement and lo > rule.min_improvement
    reason = (
        f"gain {gain:+.4f}, {100 * (1 - 2 * rule.alpha):.0f}% CI [{lo:+.4f}, {hi:+.4f}] "
        f"over {rule.resamples} paired resamples; the lower bound must exceed "
        f"{rule.min_improvement} (a tie never promotes)"
    )
    return boot, Gate(
        "significance", "passed" if ok else "failed", reason, metric, c, h, rule.min_improvement
    )


def _latency_gates(
    policy: GateParams, candidate: Scorer, champion: Scorer | None, batch: pd.DataFrame
) -> list[Gate]:
    rule = policy.latency
    if not rule.enabled:
        return [Gate("latency", "skipped", "disabled in params")]
    c, h = measure_latency(candidate, champion, batch, rule.repeats, rule.warmup)
    c_ms, h_ms = 1000 * c, (None if h is None else 1000 * h)
    problems = []
    if rule.max_p95_ms is not None and c_ms > rule.max_p95_ms:
        problems.append(f"p95 {c_ms:.1f} ms over the {rule.max_p95_ms} ms budget")
    ratio = None if not h_ms else c_ms / h_ms
    judged = c_ms >= RATIO_FLOOR_MS  # below a millisecond, timer noise decides the ratio
    if rule.max_ratio is not None and ratio is not None and judged and ratio > rule.max_ratio:
        problems.append(f"{ratio:.2f}x the champion's p95, above {rule.max_ratio}x")
    where = f"p95 on {len(batch)} rows: {c_ms:.1f} ms" + (
        "" if h_ms is None else f" vs champion {h_ms:.1f} ms ({ratio:.2f}x)"
    )
    reason = "; ".join(problems) if problems else where
    status: Status = "failed" if problems else "passed"
    return [Gate("latency", status, reason, "p95_ms", c_ms, h_ms, rule.max_p95_ms)]


def _size_gates(policy: GateParams, candidate: Scorer, batch: pd.DataFrame) -> list[Gate]:
    rule = policy.size
    if not rule.enabled:
        return [Gate("size", "skipped", "disabled in params")]
    size = float(model_bytes(candidate))
    peak = float(predict_peak_bytes(candidate, batch))
    gates = []
    for name, value, budget, what in (
        ("model_size", size, rule.max_model_bytes, "serialized model"),
        ("predict_memory", peak, rule.max_predict_peak_bytes, f"peak of one {len(batch)}-row call"),
    ):
        if budget is None:
            gates.append(Gate(name, "skipped", f"no budget for the {what}", "bytes", value))
            continue
        ok = value <= budget
        status: Status = "passed" if ok else "failed"
        reason = f"{what}: {value / 1e6:.2f} MB, budget {budget / 1e6:.2f} MB"
        gates.append(Gate(name, status, reason, "bytes", value, threshold=float(budget)))
    return gates


def _gaps(slices: SliceTable, metric: str, sensitive: str) -> tuple[float, str, float, list[str]]:
    """Widest metric gap over slice columns (and where), parity difference, undefined slices."""
    worst, where, undefined = 0.0, "", []
    for column, groups in slices.items():
        values = {g: e[metric] for g, e in groups.items() if not math.isnan(e[metric])}
        undefined += [
            f"{column}={g}" for g, e in groups.items() if e["gated"] and math.isnan(e[metric])
        ]
        if len(values) >= 2:
            gap = max(values.values()) - min(values.values())
            if gap > worst:
                lo, hi = min(values, key=values.__getitem__), max(values, key=values.__getitem__)
                worst, where = gap, f"{column}: {hi} vs {lo}"
    rates = [e["positive_rate"] for e in slices.get(sensitive, {}).values()]
    parity = (max(rates) - min(rates)) if len(rates) >= 2 else 0.0
    return worst, where, parity, undefined


def _fairness_gates(
    policy: GateParams,
    holdout: pd.DataFrame,
    y: np.ndarray,
    cand_s: np.ndarray,
    champ_s: np.ndarray | None,
) -> tuple[dict[str, SliceTable], list[Gate]]:
    rule, metric = policy.fairness, policy.primary_metric
    if not rule.enabled:
        return {}, [Gate("fairness", "skipped", "disabled in params")]
    if rule.sensitive_column is None:
        why = "fairness skipped: no sensitive column (data.sensitive_column is null)"
        return {}, [Gate("fairness", "skipped", why)]
    columns = list(dict.fromkeys([rule.sensitive_column, *rule.slice_columns]))
    missing = [c for c in columns if c not in holdout.columns]
    if missing:
        return {}, [Gate("fairness", "failed", f"slice columns {missing} are not in the holdout")]

    def measure(scores: np.ndarray) -> SliceTable:
        out = {}
        for c in columns:
            groups = slice_metrics(
                holdout, scores, y, c, metric, policy.threshold, rule.min_slice_rows
            )
            for entry in groups.values():
                entry["gated"] = float(entry["rows"] >= rule.min_slice_rows)
            out[c] = groups
        return out

    cand_slices = measure(cand_s)
    c_gap, c_where, c_parity, undefined = _gaps(cand_slices, metric, rule.sensitive_column)
    report_slices = {"candidate": cand_slices}
    gates: list[Gate] = []
    if undefined:
        gates.append(
            Gate(
                "slice_metric",
                "failed",
                f"{metric} undefined (one class only) in slices {undefined[:5]}",
                metric,
            )
        )
    if rule.max_slice_gap is not None:
        gap_reason = f"widest {metric} gap {c_gap:.4f} ({c_where or 'single slice'})"
        gates.append(_bound_gate("slice_gap", c_gap, rule.max_slice_gap, gap_reason, metric))
    if rule.max_parity_difference is not None:
        parity_reason = f"positive-decision rate gap over {rule.sensitive_column}: {c_parity:.4f}"
        gates.append(
            _bound_gate(
                "demographic_parity",
                c_parity,
                rule.max_parity_difference,
                parity_reason,
                "parity_difference",
            )
        )
    if rule.max_gap_widening is not None:
        if champ_s is None:
            gates.append(Gate("gap_widening", "skipped", "no champion to compare with"))
        else:
            champ_slices = measure(champ_s)
            report_slices["champion"] = champ_slices
            h_gap, _, h_parity, _ = _gaps(champ_slices, metric, rule.sensitive_column)
            widening = max(c_gap - h_gap, c_parity - h_parity)
            widen_reason = (
                f"slice gap {h_gap:.4f} -> {c_gap:.4f}, parity gap {h_parity:.4f} -> {c_parity:.4f}"
            )
            gates.append(
                _bound_gate("gap_widening", widening, rule.max_gap_widening, widen_reason, metric)
            )
    return report_slices, gates


def _bound_gate(name: str, value: float, bound: float, reason: str, metric: str) -> Gate:
    """A gate that passes while ``value`` stays within ``bound``."""
    status: Status = "passed" if value <= bound else "failed"
    return Gate(name, status, f"{reason}; allowed {bound}", metric, value, threshold=bound)


def _parity_gates(policy: GateParams, cand_s: np.ndarray, champ_s: np.ndarray | None) -> list[Gate]:
    rule = policy.parity
    if not rule.enabled:
        return [Gate("prediction_parity", "skipped", "disabled in params")]
    if champ_s is None:
        return [Gate("prediction_parity", "skipped", "no champion to compare with")]
    value = psi(champ_s, cand_s)
    flips = float(np.mean((cand_s >= policy.threshold) != (champ_s >= policy.threshold)))
    problems = []
    if rule.max_psi is not None and value > rule.max_psi:
        problems.append(f"score PSI {value:.4f} above {rule.max_psi}")
    if rule.max_flip_rate is not None and flips > rule.max_flip_rate:
        problems.append(f"{100 * flips:.1f}% of decisions flip, above {100 * rule.max_flip_rate}%")
    reason = "; ".join(problems) or (
        f"score PSI {value:.4f}, {100 * flips:.2f}% of decisions flip at {policy.threshold}"
    )
    return [
        Gate(
            "prediction_parity",
            "failed" if problems else "passed",
            reason,
            "psi",
            value,
            threshold=rule.max_psi,
        )
    ]


def reproducibility_gate(
    model: Scorer, retrained: Scorer, holdout: pd.DataFrame, tolerance: float
) -> Gate:
    """Retraining on the same data and params must give the same predictions."""
    a, b = score(model, holdout, "candidate"), score(retrained, holdout, "retrained candidate")
    diff = float(np.max(np.abs(a - b))) if len(a) else 0.0
    ok = diff <= tolerance
    reason = f"max |prediction difference| after retraining {diff:.3g}, allowed {tolerance}"
    return Gate(
        "reproducibility",
        "passed" if ok else "failed",
        reason,
        "max_abs_diff",
        diff,
        threshold=tolerance,
    )


# -- reports ---------------------------------------------------------------------------------------


def write_plots(report: GateReport, folder: Path) -> list[Path]:
    """ROC and PR curves of both models, score distributions, slice bars, bootstrap gains."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn import metrics as skm

    ev = report.evidence
    if ev is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    models = [("candidate", ev.candidate_scores)]
    if ev.champion_scores is not None:
        models.append(("champion", ev.champion_scores))
    paths = []
    one_class = len(np.unique(ev.y)) < 2

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, s in models:
        if one_class:
            break
        fpr, tpr, _ = skm.roc_curve(ev.y, s)
        prec, rec, _ = skm.precision_recall_curve(ev.y, s)
        roc.plot(fpr, tpr, label=f"{name} (AUC {skm.roc_auc_score(ev.y, s):.4f})")
        pr.plot(rec, prec, label=f"{name} (AP {skm.average_precision_score(ev.y, s):.4f})")
    roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    pr.set(title="Precision-recall", xlabel="recall", ylabel="precision")
    roc.legend(loc="lower right")
    pr.legend(loc="upper right")
    paths.append(_save(fig, folder / "curves.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in models:
        ax.hist(s, bins=50, alpha=0.5, label=name, density=True)
    ax.set(title="Score distributions on the holdout", xlabel="P(positive)")
    ax.legend()
    paths.append(_save(fig, folder / "scores.png"))

    slices = ev.slices.get("candidate", {})
    if slices:
        fig, axes = plt.subplots(1, len(slices), figsize=(4 * len(slices), 4), squeeze=False)
        for ax, (column, groups) in zip(axes[0], slices.items(), strict=True):
            names = list(groups)
            cand_vals = [groups[g][report.primary_metric] for g in names]
            ax.bar(np.arange(len(names)) - 0.2, cand_vals, 0.4, label="candidate")
            champ_groups = ev.slices.get("champion", {}).get(column)
            if champ_groups:
                champ_vals = [champ_groups[g][report.primary_metric] for g in names]
                ax.bar(np.arange(len(names)) + 0.2, champ_vals, 0.4, label="champion")
            ax.set_xticks(np.arange(len(names)), names, rotation=30)
            ax.set(title=column, ylabel=report.primary_metric)
        axes[0][0].legend()
        paths.append(_save(fig, folder / "slices.png"))

    if ev.bootstrap_gains is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(ev.bootstrap_gains[np.isfinite(ev.bootstrap_gains)], bins=60)
        ax.axvline(0, color="k", lw=0.8)
        ax.set(
            title=f"Paired bootstrap of the {report.primary_metric} gain",
            xlabel="candidate - champion (positive: candidate better)",
        )
        paths.append(_save(fig, folder / "bootstrap.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def log_report(report: GateReport, run_id: str, plots_dir: Path) -> None:
    """Metrics, the report JSON/markdown and its plots on the candidate's MLflow run."""
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
    write_plots(report, plots_dir)
    client.log_artifacts(run_id, str(plots_dir), "gates")
    client.set_tag(run_id, "ct.decision", report.decision)


@task(name="evaluate-candidate", cache_policy=NONE)
def evaluate_candidate(
    candidate: Scorer,
    champion: Scorer | None,
    version: DataVersion,
    params: Params,
    run_id: str,
    force: bool = False,
) -> GateReport:
    """Gate the candidate on the batch's held-out rows; log the report to MLflow and Prefect."""
    import tempfile

    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    logger = get_run_logger()
    train_df, holdout = split_holdout(read_version(version), params.data)
    extra: tuple[Gate, ...] = ()
    if params.gates.reproducibility.enabled:
        from tasks.train import train_model

        extra = (
            reproducibility_gate(
                candidate,
                train_model(train_df, params),
                holdout,
                params.gates.reproducibility.tolerance,
            ),
        )
    report = compare(candidate, champion, holdout, params.gates, params.data, extra, force)
    with tempfile.TemporaryDirectory() as plots:
        log_report(report, run_id, Path(plots))
    create_table_artifact(report.table_rows(), key="gate-report", description=report.decision)
    create_markdown_artifact(report.to_markdown(), key="gate-summary")
    logger.info(
        "decision=%s %s candidate=%.4f champion=%s md5=%s run_id=%s",
        report.decision,
        report.primary_metric,
        report.candidate_primary,
        _fmt(report.champion_primary) or "none",
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
    y = holdout[params.data.label].to_numpy()
    metrics = compute_metrics(y, score(model, holdout, "model"), params.gates.threshold)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=1, sort_keys=True))
    print(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    main()
