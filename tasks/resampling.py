"""Paired resampling: bootstrap replicates of the candidate's gain over the champion.

Both models are resampled with the same row weights (Poisson(1) per row, grouped into cells
where the metric allows it, so cost does not grow with the holdout). One entry point,
``bootstrap_gain``, for every metric of every task type (see ``tasks.metrics``).
"""

from __future__ import annotations

import numpy as np

from tasks.metrics import METRICS

EXACT_BOOTSTRAP_CELLS = 20_000_000  # rows x resamples above which rows are subsampled
QUANTILE_BINS = 4096


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
        return _weighted_means(counts, [cells.astype(float)], rng, resamples)[0]
    return _quantile_means([values], rng, resamples)[0]


def _quantile_means(
    arrays: list[np.ndarray], rng: np.random.Generator, resamples: int
) -> list[np.ndarray]:
    """``_poisson_mean`` of several arrays of the same length in quantile cells, with one
    weight matrix: the cells' sizes depend only on the number of rows, so each array's
    replicates are exactly what a bootstrap of it alone, from the same seed, would give."""
    edges = np.linspace(0, len(arrays[0]), QUANTILE_BINS + 1).astype(int)
    counts = np.diff(edges).astype(float)
    means = []
    for values in arrays:
        order = np.argsort(values, kind="stable")
        means.append(np.add.reduceat(values[order], edges[:-1]) / counts)
    return _weighted_means(counts, means, rng, resamples)


def _weighted_means(
    counts: np.ndarray, means: list[np.ndarray], rng: np.random.Generator, resamples: int
) -> list[np.ndarray]:
    weights = rng.poisson(counts, size=(resamples, len(counts))).astype(float)
    total = weights.sum(axis=1)
    total[total == 0] = np.nan
    return [(weights @ m) / total for m in means]


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
    regression: bool = False,
) -> np.ndarray:
    """Paired bootstrap replicates of the candidate's gain over the champion on ``metric``
    (positive: the candidate is better, whatever the metric's direction).

    The task follows the scores: 2-d scores are multiclass probabilities, ``regression=True``
    marks predicted values, else binary probabilities. Vectorized per metric: accuracy and F1
    are exact on their few decision cells; log loss, Brier and MAE are means of per-row loss
    differences; ROC AUC uses DeLong placement values (its influence function); PR AUC, RMSE
    and R² use Poisson row weights, on a subsample of rows when rows x resamples would
    exceed 2e7 (which widens the interval, never narrows it).
    """
    rng = np.random.default_rng(seed)
    if regression:
        if metric not in METRICS["regression"]:
            raise ValueError(f"no regression bootstrap for metric {metric!r}")
        return _regression_gain(metric, np.asarray(y, dtype=float), cand, champ, resamples, rng)
    y = np.asarray(y).astype(int)
    if np.ndim(cand) == 2:
        return _multiclass_gain(metric, y, cand, champ, resamples, rng)
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


def bootstrap_gains(
    metric: str,
    y: np.ndarray,
    cands: list[np.ndarray],
    champ: np.ndarray,
    threshold: float,
    resamples: int,
    seed: int,
) -> list[np.ndarray]:
    """``bootstrap_gain`` of several candidates' binary scores against one champion, each
    exactly as its own call would give it (same seed). ROC AUC and the losses on more rows
    than quantile cells share their Poisson draws (most of the cost) between candidates."""
    y = np.asarray(y).astype(int)
    n_pos = int(y.sum()) if len(y) else 0
    if metric == "roc_auc" and min(n_pos, len(y) - n_pos) > QUANTILE_BINS:
        placements = [_placements(y, s) for s in (*cands, champ)]
        h10, h01 = placements[-1]
        rng = np.random.default_rng(seed)
        pos = _quantile_means([c10 - h10 for c10, _ in placements[:-1]], rng, resamples)
        neg = _quantile_means([c01 - h01 for _, c01 in placements[:-1]], rng, resamples)
        points = [float(np.mean(c10) - np.mean(h10)) for c10, _ in placements[:-1]]
        return [p + q - point for p, q, point in zip(pos, neg, points, strict=True)]
    if metric in {"log_loss", "brier"} and len(y) > QUANTILE_BINS:
        base = _row_loss(metric, y, champ)
        diffs = [base - _row_loss(metric, y, c) for c in cands]
        return _quantile_means(diffs, np.random.default_rng(seed), resamples)
    return [bootstrap_gain(metric, y, c, champ, threshold, resamples, seed) for c in cands]


def _multiclass_gain(
    metric: str,
    y: np.ndarray,
    cand: np.ndarray,
    champ: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Log loss: mean of row differences. Accuracy and F1: exact on the cells (candidate's
    class, champion's class, true class), k^3 of them, whatever the number of rows."""
    if metric == "log_loss":
        rows = np.arange(len(y))

        def loss(p: np.ndarray) -> np.ndarray:
            out: np.ndarray = -np.log(np.clip(p[rows, y], 1e-15, 1.0))
            return out

        return _poisson_mean(loss(champ) - loss(cand), rng, resamples)
    k = cand.shape[1]
    dc, dh = np.argmax(cand, axis=1), np.argmax(champ, axis=1)
    cell = (dc * k + dh) * k + y
    counts = np.bincount(cell, minlength=k**3).astype(float)
    w = rng.poisson(counts, size=(resamples, k**3)).astype(float)
    idx = np.arange(k**3)
    c_dec, h_dec, lab = idx // (k * k), (idx // k) % k, idx % k
    onehot = np.eye(k)

    def score(dec: np.ndarray) -> np.ndarray:
        tp = w @ (onehot[dec] * onehot[lab])
        predicted, actual = w @ onehot[dec], w @ onehot[lab]
        total = w.sum(axis=1)
        if metric == "accuracy":
            out: np.ndarray = tp.sum(axis=1) / np.where(total > 0, total, np.nan)
            return out
        denom = predicted + actual
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        if metric == "macro_f1":
            out = f1.mean(axis=1)
            return out
        out = (f1 * actual).sum(axis=1) / np.where(total > 0, total, np.nan)
        return out

    result: np.ndarray = score(c_dec) - score(h_dec)
    return result


def _regression_gain(
    metric: str,
    y: np.ndarray,
    cand: np.ndarray,
    champ: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """MAE: mean of row differences. RMSE and R²: weighted sums under Poisson row weights."""
    ec, eh = np.asarray(cand, dtype=float) - y, np.asarray(champ, dtype=float) - y
    if metric == "mae":
        return _poisson_mean(np.abs(eh) - np.abs(ec), rng, resamples)
    n = len(y)
    rows = min(n, max(1000, EXACT_BOOTSTRAP_CELLS // resamples))
    if rows < n:
        keep = rng.choice(n, rows, replace=False)
        y, ec, eh = y[keep], ec[keep], eh[keep]
    gains = np.empty(resamples)
    chunk = max(1, 2_000_000 // rows)
    for start in range(0, resamples, chunk):
        w = rng.poisson(1.0, size=(min(chunk, resamples - start), rows)).astype(float)
        total = np.where(w.sum(axis=1) > 0, w.sum(axis=1), np.nan)
        mse_c, mse_h = (w @ ec**2) / total, (w @ eh**2) / total
        if metric == "rmse":
            gains[start : start + len(w)] = np.sqrt(mse_h) - np.sqrt(mse_c)
        else:
            var = (w @ y**2) / total - ((w @ y) / total) ** 2
            var = np.where(var > 0, var, np.nan)
            gains[start : start + len(w)] = (mse_h - mse_c) / var  # r2_c - r2_h
    return gains


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
