"""Shadow replay: the candidate scores the last logged production requests offline.

Against what the champion answered for the same requests, it reports the share of decisions
that flip, the PSI of the scores, the candidate's p95 latency at the batch sizes production
actually sent and, for requests that have labels, a paired bootstrap of the primary metric's
gain with its interval. Judged only when the log holds at least ``min_rows`` predictions;
otherwise skipped, and the report says so.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tasks.drift import psi_numeric
from tasks.metrics import HIGHER_IS_BETTER, category_psi, metric_value
from tasks.resampling import bootstrap_gain

if TYPE_CHECKING:
    import pandas as pd

    from tasks.gates.shadow import ShadowRule
    from tasks.inference_log import LabelledPredictions, LogWindow

log = logging.getLogger(__name__)

Status = Literal["passed", "failed", "skipped"]
MAX_BATCH_SIZES = 3


@dataclass(frozen=True)
class ShadowCheck:
    name: str
    status: Status
    value: float | None
    threshold: float | None
    reason: str


@dataclass(frozen=True)
class ShadowReport:
    rows: int
    labelled_rows: int
    checks: tuple[ShadowCheck, ...]
    flip_rate: float | None = None
    score_psi: float | None = None
    p95_ms: dict[int, float] | None = None  # per production batch size
    metric: str = ""
    gain: float | None = None
    gain_low: float | None = None
    gain_high: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> list[ShadowCheck]:
        return [c for c in self.checks if c.status == "failed"]

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def skipped(self) -> bool:
        return all(c.status == "skipped" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out


def production_batch_sizes(log: pd.DataFrame, limit: int = MAX_BATCH_SIZES) -> list[int]:
    """The batch sizes production sent: the most common, the median and the largest."""
    sizes = log.drop_duplicates("request_id")["batch_size"] if "request_id" in log else None
    if sizes is None or sizes.isna().all():
        return [1]
    sizes = sizes.dropna().astype(int)
    picked = [int(sizes.mode().iloc[0]), int(sizes.median()), int(sizes.max())]
    return sorted(set(picked))[:limit]


class ShadowSkip(Exception):
    """The replay cannot compare (no champion to replay multiclass decisions with)."""


def _compare(
    candidate: Any,
    champion: Any,
    rows: pd.DataFrame,
    window: LogWindow,
    task: str,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, float | None, float, str]:
    """Candidate and champion answers on the logged rows, the share of flipped decisions
    (None for regression) and the PSI: of the scores (binary: production's logged scores),
    of the decided classes (multiclass: the champion re-scores the logged rows, since the
    log keeps only the decided class's probability), of the predictions (regression)."""
    logged = window.log["score"].to_numpy(dtype=float)
    if task == "regression":
        cand = np.asarray(candidate.predict(rows), dtype=float)
        return cand, logged, None, psi_numeric(logged, cand), "prediction"
    if task == "multiclass":
        if champion is None:
            raise ShadowSkip("no champion to replay multiclass decisions against")
        cand, champ = (
            np.asarray(m.predict_proba(rows), dtype=float) for m in (candidate, champion)
        )
        ours, theirs = (list(getattr(m, "classes_", [])) for m in (candidate, champion))
        if ours != theirs:
            raise ShadowSkip(f"candidate classes {ours} differ from the champion's {theirs}")
        dc, dh = np.argmax(cand, axis=1), np.argmax(champ, axis=1)
        flips = float(np.mean(dc != dh))
        return cand, champ, flips, category_psi(dh, dc, cand.shape[1]), "decided-class"
    cand = np.asarray(candidate.predict_proba(rows)[:, 1], dtype=float)
    champ_decision = window.log["decision"].to_numpy().astype(int)
    flips = float(np.mean((cand >= threshold).astype(int) != champ_decision))
    return cand, logged, flips, psi_numeric(logged, cand), "score"


def p95_latency_ms(model: Any, rows: pd.DataFrame, batch: int, repeats: int) -> float:
    """p95 wall time of one prediction call (``predict_proba``, or ``predict`` for a
    regressor) on ``batch`` production rows, after one warm-up."""
    frame = rows.iloc[: max(1, min(batch, len(rows)))]
    call = model.predict_proba if hasattr(model, "predict_proba") else model.predict
    call(frame)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call(frame)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 95))


def replay(
    candidate: Any,
    window: LogWindow,
    labelled: LabelledPredictions | None,
    features: list[str],
    policy: ShadowRule,
    metric: str,
    threshold: float,
    resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    task: str = "binary",
    champion: Any = None,
) -> ShadowReport:
    """The candidate on the champion's logged production requests; never raises on odd logs.
    Binary: flips of the decision and score PSI against what production answered;
    multiclass: flips of the decided class and its PSI against the champion on the same
    logged rows; regression: the PSI and change of predictions. Each with the paired metric
    on the labelled requests."""
    notes = list(window.notes)
    if window.rows < policy.min_rows:
        reason = (
            f"only {window.rows} logged production predictions "
            f"(gates.shadow.min_rows {policy.min_rows}): shadow replay skipped"
        ) + "".join(f"; {n}" for n in notes[:2])
        check = ShadowCheck("shadow", "skipped", float(window.rows), policy.min_rows, reason)
        return ShadowReport(window.rows, 0, (check,), notes=tuple(notes))
    missing = [f for f in features if f not in window.inputs.columns]
    try:
        if missing:
            raise ValueError(f"the logged records lack features {missing}")
        rows = window.inputs[features]
        cand, champ, flips, psi, what = _compare(candidate, champion, rows, window, task, threshold)
    except ShadowSkip as skip:
        check = ShadowCheck("shadow", "skipped", float(window.rows), None, str(skip))
        return ShadowReport(window.rows, 0, (check,), notes=tuple(notes))
    except Exception as exc:  # a candidate that cannot score production fails the gate
        reason = f"the candidate cannot score logged production requests: {exc}"
        check = ShadowCheck("shadow", "failed", None, None, reason)
        return ShadowReport(window.rows, 0, (check,), notes=tuple(notes))
    checks = [_bound("shadow_score_psi", psi, policy.max_score_psi, f"{what} PSI vs champion")]
    if flips is not None:
        checks.insert(
            0, _bound("shadow_flip_rate", flips, policy.max_flip_rate, "decisions flipped")
        )
    else:  # regression: how far the predictions move, said; the PSI and paired error judge
        change = float(np.mean(np.abs(cand - champ)) / (np.mean(np.abs(champ)) or 1.0))
        notes.append(f"predictions change by {100 * change:.2f}% of their mean on average")
    sizes = production_batch_sizes(window.log)
    p95 = {b: p95_latency_ms(candidate, rows, b, policy.latency_repeats) for b in sizes}
    worst = max(p95, key=lambda b: p95[b])
    checks.append(
        _bound("shadow_p95_ms", p95[worst], policy.max_p95_ms, f"p95 ms at batch size {worst}")
    )
    paired, gain = _paired(
        window,
        labelled,
        cand,
        champ,
        policy,
        metric,
        threshold,
        resamples,
        alpha,
        seed,
        task,
        getattr(candidate, "classes_", None),
    )
    checks.append(paired)
    labelled_rows = gain[3] if paired.status != "skipped" else int(paired.value or 0)
    return ShadowReport(
        window.rows,
        labelled_rows,
        tuple(checks),
        flips,
        psi,
        p95,
        metric,
        gain[0],
        gain[1],
        gain[2],
        tuple(notes),
    )


def _paired(
    window: LogWindow,
    labelled: LabelledPredictions | None,
    cand: np.ndarray,
    champ: np.ndarray,
    policy: ShadowRule,
    metric: str,
    threshold: float,
    resamples: int,
    alpha: float,
    seed: int,
    task: str = "binary",
    classes: Any = None,
) -> tuple[ShadowCheck, tuple[float | None, float | None, float | None, int]]:
    none: tuple[float | None, float | None, float | None, int] = (None, None, None, 0)
    if labelled is None or labelled.frame.empty:
        reason = "no labelled production requests: paired metric comparison skipped"
        return ShadowCheck("shadow_paired_metric", "skipped", 0.0, None, reason), none
    position = {pid: i for i, pid in enumerate(window.log["prediction_id"])}
    frame = labelled.frame[labelled.frame["prediction_id"].isin(position)]
    n = len(frame)
    if n < policy.min_labelled_rows:
        reason = (
            f"only {n} replayed requests have labels (gates.shadow.min_labelled_rows "
            f"{policy.min_labelled_rows}): paired metric comparison skipped"
        )
        return ShadowCheck("shadow_paired_metric", "skipped", float(n), None, reason), none
    at = frame["prediction_id"].map(position).to_numpy()
    raw, c, h = frame["y"].to_numpy(), cand[at], champ[at]
    # join_labels gives labels as the scores index them: the class's index, or the value
    y = raw.astype(float) if task == "regression" else raw.astype(int)
    kind = task if task in {"binary", "multiclass", "regression"} else None
    point = metric_value(metric, y, c, threshold, kind) - metric_value(  # type: ignore[arg-type]
        metric,
        y,
        h,
        threshold,
        kind,  # type: ignore[arg-type]
    )
    point = point if HIGHER_IS_BETTER[metric] else -point
    gains = bootstrap_gain(
        metric, y, c, h, threshold, resamples, seed, regression=task == "regression"
    )
    gains = gains[np.isfinite(gains)]
    if len(gains) == 0 or not math.isfinite(point):
        reason = f"{metric} is undefined on the {n} labelled requests (one class?)"
        return ShadowCheck("shadow_paired_metric", "skipped", float(n), None, reason), none
    low, high = (float(q) for q in np.quantile(gains, [alpha / 2, 1 - alpha / 2]))
    drop = 0.002 if policy.tolerance is None else policy.tolerance
    if policy.relative_tolerance is not None:
        drop = policy.relative_tolerance * abs(
            metric_value(metric, y, h, threshold, kind)  # type: ignore[arg-type]
        )
    worse = high < -drop
    reason = (
        f"{metric} gain on {n} labelled production requests {point:+.4f} "
        f"[{low:+.4f}, {high:+.4f}]" + (" : candidate is worse" if worse else "")
    )
    status: Status = "failed" if worse else "passed"
    check = ShadowCheck("shadow_paired_metric", status, point, -drop, reason)
    return check, (point, low, high, n)


def _bound(name: str, value: float, bound: float | None, what: str) -> ShadowCheck:
    if bound is None:
        return ShadowCheck(name, "skipped", value, None, f"{what} {value:.4f}: no bound set")
    ok = value <= bound
    verdict = "<=" if ok else ">"
    return ShadowCheck(
        name, "passed" if ok else "failed", value, bound, f"{what} {value:.4f} {verdict} {bound}"
    )
