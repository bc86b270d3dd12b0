"""Reference profiles and drift: per-feature statistics computed once, then compared with any new window.

A `profile` is plain JSON (it travels with a model as an MLflow artifact): for a numeric column its null rate,
range, mean, std and 1,001 quantiles; for a categorical column its null rate and value counts. `compare` measures
a window against it with the tests Evidently uses by default, choosing by window size:

- numeric, window of at most `small` rows: Kolmogorov–Smirnov against the reference's distribution (its
  1,001 quantiles), drift when p < `p_value`;
- numeric, larger window: Wasserstein distance normed by the reference's std, drift when > `distance`;
- categorical, small window: chi-squared on the reference/window contingency table, drift when p < `p_value`;
- categorical, larger window: Jensen–Shannon distance (base 2), drift when > `distance`.

Working from quantiles and counts keeps the reference out of memory: a window of a million rows costs one
quantile pass per numeric column. Data quality (null rates, values outside the reference range, unseen
categories) is measured beside drift.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["column_drift", "compare", "profile", "quality"]

QUANTILES = np.linspace(0, 1, 1001)  # the reference's distribution, kept as its quantile function


def _numeric_profile(values: pd.Series) -> dict:
    clean = values.dropna().to_numpy(dtype=float)
    return {"kind": "numeric", "count": int(len(values)), "null_rate": float(values.isna().mean()),
            "min": float(clean.min()) if len(clean) else None, "max": float(clean.max()) if len(clean) else None,
            "mean": float(clean.mean()) if len(clean) else None, "std": float(clean.std()) if len(clean) else None,
            "quantiles": np.quantile(clean, QUANTILES).round(10).tolist() if len(clean) else []}


def _categorical_profile(values: pd.Series) -> dict:
    counts = values.dropna().astype(str).value_counts()
    return {"kind": "categorical", "count": int(len(values)), "null_rate": float(values.isna().mean()),
            "counts": {str(k): int(v) for k, v in counts.items()}}


def profile(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> dict:
    """The reference profile of `frame`'s numeric and categorical columns."""
    cols = {c: _numeric_profile(frame[c]) for c in numeric}
    cols.update({c: _categorical_profile(frame[c]) for c in categorical})
    return {"rows": int(len(frame)), "columns": cols}


def _numeric_drift(ref: dict, values: np.ndarray, small: int, p_value: float, distance: float) -> dict:
    from scipy import stats

    if len(values) == 0 or not ref["quantiles"]:
        return {"test": "none", "score": None, "drift": False, "note": "no values to compare"}
    quantiles = np.asarray(ref["quantiles"])
    if len(values) <= small:
        p = float(stats.kstest(values, lambda x: np.interp(x, quantiles, QUANTILES)).pvalue)
        return {"test": "ks", "score": p, "threshold": p_value, "drift": p < p_value}
    current_q = np.quantile(values, QUANTILES)
    w = float(np.trapezoid(np.abs(current_q - quantiles), QUANTILES))
    scale = ref["std"] or 1.0  # a constant reference: the raw distance
    score = w / scale
    return {"test": "wasserstein", "score": score, "threshold": distance, "drift": score > distance}


def _categorical_drift(ref: dict, values: pd.Series, small: int, p_value: float, distance: float) -> dict:
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    current = values.dropna().astype(str).value_counts()
    if current.sum() == 0:
        return {"test": "none", "score": None, "drift": False, "note": "no values to compare"}
    keys = sorted(set(ref["counts"]) | set(current.index))
    r = np.array([ref["counts"].get(k, 0) for k in keys], dtype=float)
    c = np.array([current.get(k, 0) for k in keys], dtype=float)
    if current.sum() <= small:
        table = np.vstack([r, c])[:, (r + c) > 0]
        if table.shape[1] < 2:
            return {"test": "chi2", "score": 1.0, "threshold": p_value, "drift": False}
        p = float(stats.chi2_contingency(table).pvalue)
        return {"test": "chi2", "score": p, "threshold": p_value, "drift": p < p_value}
    score = float(jensenshannon(r / r.sum(), c / c.sum(), base=2))
    return {"test": "jensen_shannon", "score": score, "threshold": distance, "drift": score > distance}


def column_drift(ref: dict, values: pd.Series, small: int = 1000, p_value: float = 0.05,
                 distance: float = 0.1) -> dict:
    """Drift of one column against its reference profile, with the test chosen by window size."""
    if ref["kind"] == "numeric":
        clean = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
        return _numeric_drift(ref, clean, small, p_value, distance)
    return _categorical_drift(ref, values, small, p_value, distance)


def quality(ref: dict, values: pd.Series) -> dict:
    """Null rate, share outside the reference range, share of unseen categories of one column."""
    out = {"null_rate": float(values.isna().mean()), "reference_null_rate": ref["null_rate"]}
    if ref["kind"] == "numeric" and ref["min"] is not None:
        clean = pd.to_numeric(values, errors="coerce").dropna()
        outside = ((clean < ref["min"]) | (clean > ref["max"])).mean() if len(clean) else 0.0
        out["out_of_range"] = float(outside)
    elif ref["kind"] == "categorical":
        clean = values.dropna().astype(str)
        unseen = ~clean.isin(list(ref["counts"]))
        out["unseen"] = float(unseen.mean()) if len(clean) else 0.0
        out["unseen_values"] = sorted(clean[unseen].unique().tolist())[:10]
    return out


def compare(reference: dict, frame: pd.DataFrame, small: int = 1000, p_value: float = 0.05,
            distance: float = 0.1, drift_share: float = 0.5) -> dict:
    """Per-column drift and quality of `frame` against a reference profile, and the dataset verdict."""
    columns = {}
    for name, ref in reference["columns"].items():
        if name not in frame:
            columns[name] = {"drift": {"test": "missing", "drift": True, "score": None}, "quality": {}}
            continue
        columns[name] = {"drift": column_drift(ref, frame[name], small, p_value, distance),
                         "quality": quality(ref, frame[name])}
    drifted = [n for n, c in columns.items() if c["drift"]["drift"]]
    share = len(drifted) / max(len(columns), 1)
    return {"rows": int(len(frame)), "columns": columns, "drifted": drifted, "drift_share": share,
            "dataset_drift": share >= drift_share}
