"""Stage `drift`: the newest data against the champion's training data, per feature.

Numeric features: Kolmogorov-Smirnov (scipy) and the population stability index (PSI) on the
reference's quantile bins. Categorical features: chi-square on the category counts (scipy) and
PSI over categories. New categories, empty batches, constant and all-null columns are reported,
never a crash.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import DataParams, DriftParams

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

Kind = Literal["numeric", "categorical"]
EPS = 1e-6
KS_LIMIT_N = 20_000  # above this effective sample size the asymptotic KS distribution is used


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: Kind
    drifted: bool
    psi: float | None
    statistic: float | None  # KS D or chi-square
    p_value: float | None
    notes: tuple[str, ...] = ()

    def reason(self) -> str:
        parts = []
        if self.psi is not None:
            parts.append(f"PSI {self.psi:.3f}")
        if self.p_value is not None:
            test = "KS" if self.kind == "numeric" else "chi2"
            parts.append(f"{test} p={self.p_value:.2g}")
        return ", ".join([*parts, *self.notes]) or "no statistic"


@dataclass(frozen=True)
class DriftReport:
    reference_rows: int
    current_rows: int
    features: tuple[FeatureDrift, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = ()

    @property
    def drifted(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.drifted]

    def table_rows(self) -> list[dict[str, Any]]:
        rows = []
        for f in self.features:
            row = asdict(f)
            row["notes"] = "; ".join(f.notes)
            for key in ("psi", "statistic", "p_value"):
                if row[key] is not None:
                    row[key] = round(float(row[key]), 5)
            rows.append(row)
        return rows


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of ``current`` on the reference's quantile bins (values outside fall in the ends)."""
    return _psi_sorted(np.sort(reference), np.sort(current), bins)


def _psi_sorted(ref: np.ndarray, cur: np.ndarray, bins: int = 10) -> float:
    positions = (np.linspace(0, 1, bins + 1)[1:-1] * (len(ref) - 1)).round().astype(int)
    edges = np.unique(ref[positions])
    ref_at = np.searchsorted(ref, edges, side="right")
    cur_at = np.searchsorted(cur, edges, side="right")
    ref_counts = np.diff(np.concatenate([[0], ref_at, [len(ref)]]))
    cur_counts = np.diff(np.concatenate([[0], cur_at, [len(cur)]]))
    return _psi(ref_counts, cur_counts)


def ks_sorted(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov D and its asymptotic p-value, as scipy's
    ``ks_2samp(method="asymp")`` computes them, on already sorted samples."""
    from scipy.stats import distributions

    n, m = len(ref), len(cur)
    # the CDFs only step at sample values: evaluate each at the end of its own tie groups
    ends_r = np.flatnonzero(np.append(ref[1:] != ref[:-1], True))
    ends_c = np.flatnonzero(np.append(cur[1:] != cur[:-1], True))
    at_ref = (ends_r + 1) / n - np.searchsorted(cur, ref[ends_r], side="right") / m
    at_cur = np.searchsorted(ref, cur[ends_c], side="right") / n - (ends_c + 1) / m
    d = float(max(np.max(np.abs(at_ref)), np.max(np.abs(at_cur))))
    en = n * m / (n + m)
    if en > KS_LIMIT_N:  # kstwo.sf costs ~0.7 s at 1M rows; its limit is equal to 1e-4 there
        return d, float(np.clip(distributions.kstwobign.sf(d * np.sqrt(en)), 0, 1))
    return d, float(np.clip(distributions.kstwo.sf(d, np.round(en)), 0, 1))


def _psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    p = np.clip(ref_counts / max(ref_counts.sum(), 1), EPS, None)
    q = np.clip(cur_counts / max(cur_counts.sum(), 1), EPS, None)
    return float(np.sum((q - p) * np.log(q / p)))


def numeric_drift(name: str, ref: pd.Series, cur: pd.Series, policy: DriftParams) -> FeatureDrift:
    import pandas as pd

    notes = []
    r = pd.to_numeric(ref, errors="coerce").to_numpy(dtype=float)
    c = pd.to_numeric(cur, errors="coerce").to_numpy(dtype=float)
    r_null, c_null = np.isnan(r).mean() if len(r) else 1.0, np.isnan(c).mean() if len(c) else 1.0
    r, c = r[~np.isnan(r)], c[~np.isnan(c)]
    if c_null > r_null + policy.max_null_increase:
        notes.append(f"null share {r_null:.1%} -> {c_null:.1%}")
    if len(c) == 0 or len(r) == 0:
        which = "current" if len(c) == 0 else "reference"
        return FeatureDrift(
            name, "numeric", True, None, None, None, (*notes, f"all null in {which}")
        )
    if np.ptp(c) == 0:
        notes.append(f"constant in current ({c[0]:g})")
    r, c = np.sort(r), np.sort(c)
    value = _psi_sorted(r, c)
    d, p_value = ks_sorted(r, c)
    same_constant = np.ptp(c) == 0 and np.ptp(r) == 0 and c[0] == r[0]
    drifted = bool(value > policy.psi_threshold or p_value < policy.ks_pvalue or notes)
    return FeatureDrift(
        name, "numeric", drifted and not same_constant, value, d, p_value, tuple(notes)
    )


def categorical_drift(
    name: str, ref: pd.Series, cur: pd.Series, policy: DriftParams
) -> FeatureDrift:
    notes = []
    r_counts, c_counts = _category_counts(ref), _category_counts(cur)
    if len(c_counts) == 0:
        return FeatureDrift(name, "categorical", True, None, None, None, ("empty in current",))
    new = sorted(set(c_counts.index) - set(r_counts.index))
    if new:
        share = c_counts[new].sum() / c_counts.sum()
        notes.append(f"new categories {new[:5]} ({share:.1%} of rows)")
    if set(c_counts.index) == {"<null>"}:
        notes.append("all null in current")
    elif len(c_counts) == 1 and len(r_counts) > 1:
        notes.append(f"constant in current ({c_counts.index[0]})")
    categories = sorted(set(r_counts.index) | set(c_counts.index))
    r = r_counts.reindex(categories, fill_value=0).to_numpy(dtype=float)
    c = c_counts.reindex(categories, fill_value=0).to_numpy(dtype=float)
    value = _psi(r, c)
    p_value: float | None = None
    statistic: float | None = None
    table = np.vstack([r, c])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] >= 2:
        from scipy import stats

        chi2 = stats.chi2_contingency(table)
        statistic, p_value = float(chi2.statistic), float(chi2.pvalue)
    drifted = bool(
        value > policy.psi_threshold
        or (p_value is not None and p_value < policy.chi2_pvalue)
        or new
        or "all null in current" in notes
    )
    return FeatureDrift(name, "categorical", drifted, value, statistic, p_value, tuple(notes))


def _category_counts(values: pd.Series) -> pd.Series:
    """Counts per category as strings, nulls counted as ``<null>`` (counting first is fast)."""
    import pandas as pd

    counts = values.value_counts(dropna=False)
    counts.index = ["<null>" if pd.isna(v) else str(v) for v in counts.index]
    return counts.groupby(level=0).sum()


def detect_drift(
    reference: pd.DataFrame, current: pd.DataFrame, data: DataParams, policy: DriftParams
) -> DriftReport:
    """Per-feature drift of ``current`` against ``reference``; never raises on odd data."""
    notes = []
    if current.empty:
        notes.append("current batch is empty")
    features: list[FeatureDrift] = []
    for name in data.features:
        if name not in current.columns or name not in reference.columns:
            where = "current" if name not in current.columns else "reference"
            features.append(
                FeatureDrift(
                    name,
                    _kind(name, data),
                    True,
                    None,
                    None,
                    None,
                    (f"missing from the {where} data",),
                )
            )
            continue
        if name in data.categorical_features:
            features.append(categorical_drift(name, reference[name], current[name], policy))
        else:
            features.append(numeric_drift(name, reference[name], current[name], policy))
    return DriftReport(len(reference), len(current), tuple(features), tuple(notes))


def _kind(name: str, data: DataParams) -> Kind:
    return "categorical" if name in data.categorical_features else "numeric"


def should_retrain(report: DriftReport, policy: DriftParams) -> bool:
    return report.current_rows > 0 and len(report.drifted) >= policy.min_drifted_features


@task(name="detect-drift", cache_policy=NONE)
def measure_drift(
    reference: pd.DataFrame, current: pd.DataFrame, data: DataParams, policy: DriftParams
) -> DriftReport:
    from prefect.artifacts import create_table_artifact

    report = detect_drift(reference, current, data, policy)
    create_table_artifact(
        report.table_rows(),
        key="drift-report",
        description=f"{len(report.drifted)} of {len(report.features)} features drifted",
    )
    logger = get_run_logger()
    for f in report.drifted:
        logger.warning("drift in %s: %s", f.feature, f.reason())
    logger.info(
        "%d of %d features drifted (%d reference rows, %d current rows)",
        len(report.drifted),
        len(report.features),
        report.reference_rows,
        report.current_rows,
    )
    return report
