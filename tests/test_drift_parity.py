"""drift.py's statistics against scipy's, on random and adversarial data (ties, constant columns, unseen categories,
NaN, tiny and large samples), each within the tolerance stated beside its test.

The references go through `profile` and a JSON round trip, as they travel with a model; scipy gets the raw rows.
The two bounds of the 1,001-quantile approximation (KS statistic, Wasserstein distance) are derived in drift.py's
docstring and asserted here from the raw samples, independently of drift.py's code. Seeded numpy, no hypothesis
(installed only as schemathesis's dependency, not declared by the project).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from notebench.monitoring.drift import QUANTILES, _ks_pvalue, column_drift, profile
from scipy import stats
from scipy.spatial.distance import jensenshannon

G = len(QUANTILES) - 1  # steps between the kept quantiles
TESTS, DISTANCES = 10**12, 0  # `small` that makes column_drift choose the tests (KS, chi2) or the distances
FLOAT = 1e-9  # slack for floating-point arithmetic, relative to the values' scale


def reference(values, kind: str = "numeric") -> dict:
    """The column's profile as it travels with a model (JSON)."""
    frame = pd.DataFrame({"v": values})
    prof = profile(frame, ["v"] if kind == "numeric" else [], ["v"] if kind == "categorical" else [])
    return json.loads(json.dumps(prof))["columns"]["v"]


def clean(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[~np.isnan(values)]


def _numeric_cases() -> dict[str, tuple[np.ndarray, object]]:
    """name -> (reference rows, draw(rng, n): a window of n rows)."""
    rng = np.random.default_rng(0)
    nan_ref = rng.normal(5, 2, 20_000)
    nan_ref[rng.random(20_000) < 0.2] = np.nan
    point_mass = np.where(rng.random(30_000) < 0.4, 0.0, rng.exponential(3, 30_000))
    thirds = [1 / 3, 2 / 3, 1.0]
    return {
        "normal": (rng.normal(10, 2, 30_000), lambda g, n: g.normal(10, 2, n)),
        "normal shifted": (rng.normal(10, 2, 30_000), lambda g, n: g.normal(10.8, 2, n)),
        "normal wider": (rng.normal(10, 2, 30_000), lambda g, n: g.normal(10, 3, n)),
        "student t, 2 dof": (rng.standard_t(2, 30_000), lambda g, n: g.standard_t(2, n)),
        "lognormal, sigma 2": (rng.lognormal(0, 2, 30_000), lambda g, n: g.lognormal(0.3, 2, n)),
        "counts (ties)": (rng.poisson(3, 30_000).astype(float), lambda g, n: g.poisson(3.3, n).astype(float)),
        "thirds (ties off the decimal grid)": (rng.choice(thirds, 30_000),
                                               lambda g, n: g.choice(thirds, n, p=[.3, .3, .4])),
        "point mass at 0 + exponential": (point_mass, lambda g, n: np.where(g.random(n) < 0.5, 0.0,
                                                                           g.exponential(3, n))),
        "binary 0/1": (rng.integers(0, 2, 30_000).astype(float), lambda g, n: (g.random(n) < 0.55).astype(float)),
        "constant reference": (np.full(10_000, 7.0), lambda g, n: np.where(g.random(n) < 0.9, 7.0, 8.0)),
        "constant reference and window": (np.full(10_000, 7.0), lambda g, n: np.full(n, 7.0)),
        "constant window": (rng.normal(0, 1, 20_000), lambda g, n: np.full(n, 0.5)),
        "window outside the reference range": (rng.uniform(0, 1, 20_000), lambda g, n: g.uniform(2, 3, n)),
        "NaN in both": (nan_ref, lambda g, n: np.where(g.random(n) < 0.5, np.nan, g.normal(5.5, 2, n))),
        "tiny scale (1e-12)": (rng.normal(0, 1e-12, 20_000), lambda g, n: g.normal(0, 1e-12, n)),
        "large offset (1e9 + noise)": (1e9 + rng.normal(0, 1, 20_000), lambda g, n: 1e9 + g.normal(0.2, 1, n)),
        "tiny reference (5 rows)": (rng.normal(0, 1, 5), lambda g, n: g.normal(0, 1, n)),
        "reference of 1,000 rows": (rng.normal(0, 1, 1000), lambda g, n: g.normal(0.1, 1, n)),
    }


NUMERIC = _numeric_cases()


@pytest.fixture(scope="module")
def numeric() -> dict[str, tuple[np.ndarray, dict, object]]:
    """name -> (reference rows, their profile, draw(rng, n)): the profiles computed once."""
    return {name: (ref, reference(ref), draw) for name, (ref, draw) in NUMERIC.items()}


def ks_statistic_bound(n_ref: int) -> float:
    """|D - D_exact| <= 1/G + 1/n_r (drift.py's docstring)."""
    return 1 / G + 1 / n_ref


def wasserstein_bound(ref: np.ndarray, win: np.ndarray) -> float:
    """|W - W_exact| <= (R_r + R_w)/(2G) + R_r/(n_r - 1) + R_w/(n_w - 1) (drift.py's docstring)."""
    r_ref, r_win = np.ptp(ref), np.ptp(win)
    return (r_ref + r_win) / (2 * G) + r_ref / max(len(ref) - 1, 1) + r_win / max(len(win) - 1, 1)


# ---------------------------------------------------------------------------------------------------------
# Kolmogorov–Smirnov


@pytest.mark.parametrize("window", [1, 2, 3, 7, 30, 300, 999])
def test_ks_statistic_is_within_the_quantile_bound_of_ks_2samp(numeric, window):
    """Tolerance: 1/1000 + 1/n_r, the bound derived in drift.py (plus float slack)."""
    rng = np.random.default_rng(window)
    for name, (ref, prof, draw) in numeric.items():
        win = draw(rng, window)
        if not len(clean(win)):
            continue
        ours = column_drift(prof, pd.Series(win), small=TESTS)
        exact = stats.ks_2samp(clean(ref), clean(win)).statistic
        assert ours["test"] == "ks", name
        assert abs(ours["statistic"] - exact) <= ks_statistic_bound(len(clean(ref))) + FLOAT, (name, ours, exact)


def test_ks_statistic_on_ties_is_exact_where_the_quantiles_hold_every_value():
    """A count feature whose every value is a run of tied quantiles: the rebuilt CDF is the reference's own up to
    1/G at each value (the old profile, rounded to 10 decimals, put 1/3 beside its quantile: D = 0.5, p = 1e-48)."""
    rng = np.random.default_rng(3)
    ref, win = rng.choice([1 / 3, 2 / 3, 1.0], 50_000), rng.choice([1 / 3, 2 / 3, 1.0], 500)
    ours = column_drift(reference(ref), pd.Series(win), small=TESTS)
    exact = stats.ks_2samp(ref, win)
    assert abs(ours["statistic"] - exact.statistic) <= 1 / G + 1 / len(ref)
    assert ours["drift"] is False and exact.pvalue > 0.05


@pytest.mark.parametrize("en", [*range(1, 13), 15, 20, 30, 50, 100, 140, 141, 250, 999])
def test_ks_pvalue_follows_scipys_two_sample_distribution(en):
    """Against `kstwo.sf(D, round(en))`, what `ks_2samp` uses for references over 10,000 rows. Tolerance: 1e-12
    where round(en) < 10 (kstwo itself); else Stephens' approximation: 0.025 everywhere, 0.001 where the p-value
    is between 0.01 and 0.1."""
    m = 10**9  # a reference this large makes en = n (to 1e-6)
    d = np.unique(np.clip(np.linspace(0.02, 2.5, 300) / np.sqrt(en), 1e-4, 1.0))  # p from 1 down to 1e-5
    ours = np.array([_ks_pvalue(x, en, m) for x in d])
    theirs = stats.kstwo.sf(d, max(np.round(en * m / (en + m)), 1))
    err = np.abs(ours - theirs)
    if np.round(en) < 10:
        assert err.max() <= 1e-12
    else:
        band = (theirs >= 0.01) & (theirs <= 0.1)
        assert band.sum() >= 10  # the grid reaches where verdicts turn
        assert err.max() <= 0.025 and err[band].max() <= 0.001, (err.max(), err[band].max())


@pytest.mark.parametrize("window", [1, 2, 5, 12, 40, 200, 999])
def test_ks_pvalue_is_within_the_propagated_bound_of_ks_2samp(numeric, window):
    """drift.py's p-value against `ks_2samp`'s (method auto, as Evidently calls it), within what the two bounds
    allow: the statistic's (1/G + 1/n_r) moved through kstwo.sf, plus Stephens' 0.025 where en >= 10, plus 0.01
    where scipy computes the exact permutation distribution (references of 1,000 to 10,000 rows; measured: 0.0097
    at most on a grid of sizes and statistics)."""
    rng = np.random.default_rng(100 + window)
    for name, (ref, prof, draw) in numeric.items():
        ref_clean, win = clean(ref), clean(draw(rng, window))
        if not len(win) or len(ref_clean) < 1000:  # a tiny reference's exact distribution is not what we compute
            continue
        ours = column_drift(prof, pd.Series(win), small=TESTS)["score"]
        exact = stats.ks_2samp(ref_clean, win)
        en = max(np.round(len(win) * len(ref_clean) / (len(win) + len(ref_clean))), 1)
        delta = ks_statistic_bound(len(ref_clean)) + FLOAT
        slack = (0.025 if en >= 10 else 1e-12) + (0.01 if len(ref_clean) <= 10_000 else 0.0)
        low = stats.kstwo.sf(min(exact.statistic + delta, 1.0), en) - slack
        high = stats.kstwo.sf(max(exact.statistic - delta, 0.0), en) + slack
        assert low <= ours <= high, (name, ours, exact.pvalue, low, high)


def test_ks_verdicts_agree_with_scipy_away_from_the_threshold():
    """Over 200 seeded windows (shifted half the time): wherever scipy's p-value is outside [0.04, 0.06], the
    verdict at 0.05 is scipy's."""
    rng = np.random.default_rng(7)
    ref = rng.normal(0, 1, 40_000)
    prof = reference(ref)
    for _ in range(200):
        n, shift = int(rng.integers(5, 999)), rng.choice([0.0, rng.uniform(0, 0.5)])
        win = rng.normal(shift, 1, n)
        theirs = stats.ks_2samp(ref, win).pvalue
        if 0.04 <= theirs <= 0.06:
            continue
        assert column_drift(prof, pd.Series(win), small=TESTS)["drift"] == (theirs < 0.05), (n, shift, theirs)


# ---------------------------------------------------------------------------------------------------------
# Wasserstein, normed by the reference's std


@pytest.mark.parametrize("window", [1, 2, 50, 1000, 20_000])
def test_normed_wasserstein_is_within_the_quantile_bound_of_scipy(numeric, window):
    """`wasserstein_distance(ref, win) / std(ref)` (std 1 for a constant reference: drift.py then scores the raw
    distance). Tolerance: the bound derived in drift.py, normed alike (plus float slack)."""
    rng = np.random.default_rng(200 + window)
    for name, (ref, prof, draw) in numeric.items():
        ref_clean, win = clean(ref), clean(draw(rng, window))
        if not len(win):
            continue
        ours = column_drift(prof, pd.Series(win), small=DISTANCES)
        norm = np.std(ref_clean) or 1.0
        exact = stats.wasserstein_distance(ref_clean, win) / norm
        bound = wasserstein_bound(ref_clean, win) / norm
        scale = max(np.abs(ref_clean).max(), np.abs(win).max()) / norm
        assert ours["test"] == "wasserstein", name
        assert abs(ours["score"] - exact) <= bound + FLOAT * scale, (name, ours["score"], exact, bound)


def test_normed_wasserstein_on_a_million_rows():
    """A window of 1M rows against 200k reference rows, both normal: within the bound, and the bound (normed) is
    under 0.02, a fifth of the default threshold: the approximation cannot flip a verdict of a clear shift."""
    rng = np.random.default_rng(11)
    ref, win = rng.normal(50, 10, 200_000), rng.normal(51, 10, 1_000_000)
    ours = column_drift(reference(ref), pd.Series(win), small=DISTANCES)["score"]
    exact = stats.wasserstein_distance(ref, win) / ref.std()
    bound = wasserstein_bound(ref, win) / ref.std()
    assert abs(ours - exact) <= bound and bound < 0.02, (ours, exact, bound)


def test_wasserstein_of_a_window_with_infinite_values_is_infinite_and_drifts():
    """scipy answers NaN (inf - inf), which compared with any threshold says no drift: drift.py scores inf."""
    rng = np.random.default_rng(12)
    prof = reference(rng.normal(0, 1, 10_000))
    win = rng.normal(0, 1, 5000)
    win[:3] = np.inf
    with np.errstate(invalid="ignore"):
        assert np.isnan(stats.wasserstein_distance(rng.normal(0, 1, 100), win))
    ours = column_drift(prof, pd.Series(win), small=DISTANCES)
    assert ours["score"] == np.inf and ours["drift"] is True
    win[:3] = -np.inf
    assert column_drift(prof, pd.Series(win), small=DISTANCES)["drift"] is True


# ---------------------------------------------------------------------------------------------------------
# categorical: chi-squared on the contingency table, Jensen–Shannon


def categorical_cases(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, object]]:
    levels = np.array(list("abcdef"), dtype=object)

    def with_nan(values, share):
        values = values.astype(object)
        values[rng.random(len(values)) < share] = None
        return values

    return {
        "two levels (Yates)": (rng.choice(levels[:2], 20_000, p=[.7, .3]),
                               lambda n: rng.choice(levels[:2], n, p=[.65, .35])),
        "six levels": (rng.choice(levels, 20_000), lambda n: rng.choice(levels, n)),
        "six levels, moved": (rng.choice(levels, 20_000),
                              lambda n: rng.choice(levels, n, p=[.3, .2, .2, .1, .1, .1])),
        "rare level absent from the window": (rng.choice(levels, 20_000, p=[.5, .3, .1, .05, .04, .01]),
                                              lambda n: rng.choice(levels[:3], n)),
        "unseen categories": (rng.choice(levels[:4], 20_000),
                              lambda n: rng.choice(np.array(list("abcdxyz"), dtype=object), n)),
        "only unseen categories": (rng.choice(levels[:3], 20_000), lambda n: rng.choice(["x", "y"], n)),
        "one level in both": (np.full(5000, "a", dtype=object), lambda n: np.full(n, "a", dtype=object)),
        "NaN in both": (with_nan(rng.choice(levels[:3], 20_000), 0.2),
                        lambda n: with_nan(rng.choice(levels[:3], n, p=[.5, .3, .2]), 0.4)),
        "integers as categories": (rng.integers(0, 4, 20_000), lambda n: rng.integers(0, 5, n)),
        "tiny reference (3 rows)": (np.array(["a", "b", "b"], dtype=object), lambda n: rng.choice(levels[:3], n)),
    }


def pooled_table(ref, win) -> np.ndarray:
    """The 2 x k contingency table drift.py documents: reference categories in the reference's order, the window's
    unseen ones pooled in one last column, nulls left out, empty columns dropped."""
    ref_counts = pd.Series(ref).dropna().astype(str).value_counts()
    win_counts = pd.Series(win).dropna().astype(str).value_counts()
    seen = [win_counts.get(k, 0) for k in ref_counts.index]
    unseen = win_counts[~win_counts.index.isin(ref_counts.index)].sum()
    table = np.array([[*ref_counts.to_numpy(), 0], [*seen, unseen]], dtype=float)
    return table[:, table.sum(axis=0) > 0]


@pytest.mark.parametrize("window", [1, 3, 20, 500])
def test_chi2_matches_chi2_contingency(window):
    """`chi2_contingency` (Yates' correction at one degree of freedom, its default) on the pooled table: statistic
    and p-value equal up to 1e-9 relative, 1e-12 absolute. Unseen categories are pooled by design (drift.py's
    docstring): scipy on the unpooled table would count each unseen category as its own degree of freedom."""
    rng = np.random.default_rng(300 + window)
    for name, (ref, draw) in categorical_cases(rng).items():
        win = draw(window)
        if pd.Series(win).isna().all():
            continue
        ours = column_drift(reference(ref, "categorical"), pd.Series(win), small=TESTS)
        table = pooled_table(ref, win)
        assert ours["test"] == "chi2", name
        if table.shape[1] < 2:  # nothing to compare: scipy's dof 0 gives p = 1 alike
            assert ours["score"] == 1.0 and ours["drift"] is False, name
            continue
        exact = stats.chi2_contingency(table)
        assert ours["statistic"] == pytest.approx(exact.statistic, rel=1e-9, abs=1e-12), name
        assert ours["score"] == pytest.approx(exact.pvalue, rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("window", [1, 3, 500, 50_000])
def test_jensen_shannon_matches_scipy(window):
    """`jensenshannon` (natural logarithm, scipy's default) on the count vectors over every category of either
    side, each unseen category its own entry: equal up to 1e-12, because pooling the unseen ones changes nothing."""
    rng = np.random.default_rng(400 + window)
    for name, (ref, draw) in categorical_cases(rng).items():
        win = draw(window)
        if pd.Series(win).isna().all():
            continue
        ours = column_drift(reference(ref, "categorical"), pd.Series(win), small=DISTANCES)
        ref_counts = pd.Series(ref).dropna().astype(str).value_counts()
        win_counts = pd.Series(win).dropna().astype(str).value_counts()
        keys = sorted(set(ref_counts.index) | set(win_counts.index))
        exact = jensenshannon([ref_counts.get(k, 0) for k in keys], [win_counts.get(k, 0) for k in keys])
        assert ours["test"] == "jensen_shannon", name
        assert ours["score"] == pytest.approx(exact, abs=1e-12), (name, ours["score"], exact)


def test_a_reference_without_values_compares_nothing():
    """An all-null reference column: no test (its JS would be 0/0, NaN, read as no drift)."""
    empty = reference(pd.Series([None] * 100, dtype=object), "categorical")
    assert column_drift(empty, pd.Series(["a"] * 5000))["test"] == "none"
    assert reference(np.full(100, np.nan))["quantiles"] == []
    assert column_drift(reference(np.full(100, np.nan)), pd.Series(np.ones(50)))["test"] == "none"
