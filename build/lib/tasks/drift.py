"""Stage `drift`: the newest data against the champion's training data, per feature.

Numeric features: Kolmogorov-Smirnov (scipy) and the population stability index (PSI) on the
reference's quantile bins. Categorical features: chi-square on the category counts (scipy) and
PSI over categories. New categories, empty batches, constant and all-null columns are reported,
never a crash.

Every feature is tested at once, so the p-values are corrected for multiple testing (Holm by
default: the chance that any feature is flagged by chance stays under the threshold), and a
significant test counts as drift only when the shift is large enough to matter: KS distance D
or Cramér's V past a floor. On a million rows a shift of 0.01 standard deviations is
"significant" and still not drift.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
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
    effect: float | None = None  # KS D or Cramér's V: how large the shift is
    p_adjusted: float | None = None  # p_value corrected for the number of features tested

    def reason(self) -> str:
        parts = []
        if self.psi is not None:
            parts.append(f"PSI {self.psi:.3f}")
        if self.p_value is not None:
            test = "KS" if self.kind == "numeric" else "chi2"
            adjusted = f" (corrected {self.p_adjusted:.2g})" if self.p_adjusted is not None else ""
            parts.append(f"{test} p={self.p_value:.2g}{adjusted}")
        if self.effect is not None:
            parts.append(f"{'D' if self.kind == 'numeric' else 'V'}={self.effect:.3f}")
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
            for key in ("psi", "statistic", "p_value", "effect", "p_adjusted"):
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
    flagged = bool(value > policy.psi_threshold or notes) and not same_constant
    # the KS test joins the decision once corrected for all features (see apply_tests)
    return FeatureDrift(name, "numeric", flagged, value, d, p_value, tuple(notes), effect=d)


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
    effect: float | None = None
    table = np.vstack([r, c])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] >= 2:
        from scipy import stats

        chi2 = stats.chi2_contingency(table)
        statistic, p_value = float(chi2.statistic), float(chi2.pvalue)
        effect = float(np.sqrt(statistic / table.sum()))  # Cramér's V of a 2 x k table
    flagged = bool(value > policy.psi_threshold or new or "all null in current" in notes)
    return FeatureDrift(
        name, "categorical", flagged, value, statistic, p_value, tuple(notes), effect=effect
    )


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
    return DriftReport(len(reference), len(current), apply_tests(features, policy), tuple(notes))


def adjust_pvalues(p_values: np.ndarray, method: str) -> np.ndarray:
    """P-values corrected for testing them all at once: ``holm`` (step-down, family-wise error),
    ``bonferroni``, ``bh`` (Benjamini-Hochberg, false discovery rate) or ``none``."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0 or method == "none":
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "bh":
        adjusted = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    else:
        raise ValueError(f"unknown correction {method!r}: holm, bonferroni, bh or none")
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def apply_tests(features: list[FeatureDrift], policy: DriftParams) -> tuple[FeatureDrift, ...]:
    """Add the corrected significance tests to each feature's decision.

    A feature drifted when its PSI or notes say so, or when its test is significant after the
    correction *and* its effect (KS D, Cramér's V) is past the floor in params.
    """
    tested = [i for i, f in enumerate(features) if f.p_value is not None]
    raw = np.array([features[i].p_value for i in tested], dtype=float)
    adjusted = dict(zip(tested, adjust_pvalues(raw, policy.correction), strict=True))
    out = []
    for i, f in enumerate(features):
        if i not in adjusted:
            out.append(f)
            continue
        numeric = f.kind == "numeric"
        alpha = policy.ks_pvalue if numeric else policy.chi2_pvalue
        floor = policy.min_ks_statistic if numeric else policy.min_cramers_v
        material = f.effect is not None and f.effect >= floor
        drifted = f.drifted or (bool(adjusted[i] < alpha) and material)
        out.append(replace(f, drifted=drifted, p_adjusted=float(adjusted[i])))
    return tuple(out)


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
