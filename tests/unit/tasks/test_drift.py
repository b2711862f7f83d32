import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tasks.data import make_batch
from tasks.drift import detect_drift, psi_numeric, should_retrain
from tests.helpers import small_params


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    return small_params(tmp_path_factory.mktemp("drift"))


def by_name(report):
    return {f.feature: f for f in report.features}


def test_ks_matches_scipy_on_known_distributions(params):
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"age": rng.normal(0, 1, 5_000)})
    cur = pd.DataFrame({"age": rng.normal(0.3, 1, 5_000)})
    data = params.data.model_copy(update={"numeric_features": ["age"], "categorical_features": []})
    f = by_name(detect_drift(ref, cur, data, params.drift))["age"]
    expected = stats.ks_2samp(ref["age"], cur["age"], method="asymp")
    assert f.statistic == pytest.approx(expected.statistic)
    assert f.p_value == pytest.approx(expected.pvalue, rel=1e-3, abs=1e-12)
    assert f.drifted


def test_chi_square_matches_scipy(params):
    ref = pd.DataFrame({"contract": ["a"] * 600 + ["b"] * 400})
    cur = pd.DataFrame({"contract": ["a"] * 450 + ["b"] * 550})
    data = params.data.model_copy(
        update={"numeric_features": [], "categorical_features": ["contract"]}
    )
    f = by_name(detect_drift(ref, cur, data, params.drift))["contract"]
    expected = stats.chi2_contingency([[600, 400], [450, 550]])
    assert f.statistic == pytest.approx(expected.statistic)
    assert f.p_value == pytest.approx(expected.pvalue)


@pytest.mark.parametrize("shift", [0.0, 0.02, 0.5])
def test_ks_agrees_with_scipy_across_shifts(shift):
    from tasks.drift import ks_sorted

    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 3_000), rng.normal(shift, 1, 4_000)
    expected = stats.ks_2samp(a, b, method="asymp")
    d, p = ks_sorted(np.sort(a), np.sort(b))
    assert d == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)


def test_ks_on_large_samples_uses_the_limit_distribution_within_tolerance():
    from tasks.drift import ks_sorted

    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 60_000), rng.normal(0.012, 1, 60_000)
    expected = stats.ks_2samp(a, b, method="asymp")
    d, p = ks_sorted(np.sort(a), np.sort(b))
    assert d == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue, rel=0.02)


def test_psi_known_values():
    rng = np.random.default_rng(1)
    x = rng.normal(size=100_000)
    assert psi_numeric(x, rng.normal(size=100_000)) < 0.01
    assert psi_numeric(x, rng.normal(1.0, 1, 100_000)) > 0.5


def test_same_distribution_is_not_drift_and_drifted_batches_are(params):
    ref, same = make_batch(1, 20_000), make_batch(2, 20_000)
    report = detect_drift(ref, same, params.data, params.drift)
    assert report.drifted == [], [f.reason() for f in report.drifted]
    assert not should_retrain(report, params.drift)
    drifted = detect_drift(ref, make_batch(3, 20_000, drift=1.0), params.data, params.drift)
    names = {f.feature for f in drifted.drifted}
    assert {"contract", "monthly_charges"} <= names
    assert should_retrain(drifted, params.drift)


def test_odd_columns_are_reported_never_raised(params):
    ref = make_batch(1, 2_000)
    cur = make_batch(2, 2_000)
    cur["region"] = cur["region"].where(cur.index % 10 != 0, "atlantis")
    cur["age"] = 40
    cur["tenure_months"] = np.nan
    cur = cur.drop(columns=["devices"])
    f = by_name(detect_drift(ref, cur, params.data, params.drift))
    assert "new categories ['atlantis']" in f["region"].reason()
    assert "constant" in f["age"].reason()
    assert "all null" in f["tenure_months"].reason()
    assert "missing" in f["devices"].reason()
    assert all(f[n].drifted for n in ("region", "age", "tenure_months", "devices"))


def test_empty_batch_is_reported(params):
    ref = make_batch(1, 1_000)
    report = detect_drift(ref, ref.head(0), params.data, params.drift)
    assert "current batch is empty" in report.notes
    assert not should_retrain(report, params.drift)


# -- many features at once, and effect sizes (issue 9, item 25) ------------------------------


def test_pvalue_corrections_match_their_definitions():
    from tasks.drift import adjust_pvalues

    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    holm = adjust_pvalues(p, "holm")
    # sorted: 0.005*5, 0.01*4, 0.03*3, 0.04*2, 0.5*1 -> running maximum
    assert holm == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.5])
    assert adjust_pvalues(p, "bonferroni") == pytest.approx(np.minimum(p * 5, 1))
    assert adjust_pvalues(p, "bh") == pytest.approx(stats.false_discovery_control(p))
    assert adjust_pvalues(p, "none") == pytest.approx(p)


def test_a_tiny_significant_shift_on_a_million_rows_is_not_drift(params):
    rng = np.random.default_rng(4)
    ref = pd.DataFrame({"age": rng.normal(0, 1, 1_000_000)})
    cur = pd.DataFrame({"age": rng.normal(0.01, 1, 1_000_000)})
    data = params.data.model_copy(update={"numeric_features": ["age"], "categorical_features": []})
    f = by_name(detect_drift(ref, cur, data, params.drift))["age"]
    assert f.p_value < params.drift.ks_pvalue  # significant ...
    assert f.effect < params.drift.min_ks_statistic  # ... but a negligible distance
    assert not f.drifted, f.reason()
    moved = pd.DataFrame({"age": rng.normal(0.3, 1, 1_000_000)})
    assert by_name(detect_drift(ref, moved, data, params.drift))["age"].drifted


def test_many_features_are_corrected_for_testing_them_together(params):
    """40 features from unchanged distributions: uncorrected, some pass p < 0.05 by chance."""
    rng = np.random.default_rng(12)
    names = [f"x{i}" for i in range(40)]
    ref = pd.DataFrame({n: rng.normal(0, 1, 2_000) for n in names})
    cur = pd.DataFrame({n: rng.normal(0, 1, 2_000) for n in names})
    data = params.data.model_copy(update={"numeric_features": names, "categorical_features": []})
    loose = params.drift.model_copy(update={"ks_pvalue": 0.05, "min_ks_statistic": 0.0})
    uncorrected = detect_drift(ref, cur, data, loose.model_copy(update={"correction": "none"}))
    assert len(uncorrected.drifted) >= 3  # false alarms without a correction
    for method in ("holm", "bonferroni", "bh"):
        corrected = detect_drift(ref, cur, data, loose.model_copy(update={"correction": method}))
        assert corrected.drifted == [], (method, [f.reason() for f in corrected.drifted])
