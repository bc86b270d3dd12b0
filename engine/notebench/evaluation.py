"""Holdout metrics for a model's probabilities, overall and per segment, as plain dicts and as MLflow metric names.

`metrics` measures one set of scores; `evaluate` does so overall and for every value of a few categorical columns
(`column=value`, a missing value being its own segment, `missing`); `flatten` names the results for MLflow
(`segment.<column>.<value>.<metric>`). `positive_scores` and `primary_score` take the task and the primary
metric from the use-case contract.

Every report has the same keys whatever the data; a metric the data cannot define is NaN, never a made-up 0 and
never missing (a small segment where no positive occurred is normal, and a gate must skip it and say so):

- `n`, `positive_rate`, `mean_score`: rows, share of positives, mean probability (compare the last two for
  calibration-in-the-large); always defined.
- `auc`: ROC AUC, how well scores rank positives above negatives, the number the gates use; NaN with one class.
- `average_precision`: area under the precision-recall curve, the honest ranking metric for rare positives; NaN
  with one class.
- `log_loss`, `brier`: calibration and sharpness of the probabilities, lower is better; always defined.
- `accuracy`, `precision`, `recall`, `f1`: quality of the decisions at `threshold`; precision is NaN when nothing
  is predicted positive, recall when there is no positive, f1 when both.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, f1_score, log_loss, precision_score, recall_score, roc_auc_score

__all__ = ["evaluate", "flatten", "metrics", "positive_scores", "primary_score"]


def _checked(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """`y_true` as ints and `y_score` as floats, after checking they are labels and probabilities that pair up."""
    y, s = np.asarray(y_true), np.asarray(y_score, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"y_score must hold one probability per row, got shape {s.shape}; "
                         "pass predict_proba(X)[:, 1]")
    if len(y) != len(s) or len(y) == 0:
        raise ValueError(f"need as many labels as scores, at least one: got {len(y)} and {len(s)}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0/1 labels only")
    if not ((s >= 0) & (s <= 1)).all():
        raise ValueError("y_score must hold probabilities in [0, 1]; NaN is not one")
    return y.astype(int), s


def metrics(y_true,  # 0/1 labels
            y_score,  # probabilities of the positive class
            threshold: float = 0.5,  # a score at or above it predicts the positive class
            ) -> dict[str, float]:
    """Quality of `y_score` against `y_true`: ranking, calibration and thresholded metrics; NaN where undefined."""
    y, s = _checked(y_true, y_score)
    pred = (s >= threshold).astype(int)
    both = len(np.unique(y)) == 2  # ranking metrics need both classes
    out = {
        "n": len(y),
        "positive_rate": y.mean(),
        "mean_score": s.mean(),
        "auc": roc_auc_score(y, s) if both else np.nan,
        "average_precision": average_precision_score(y, s) if both else np.nan,
        "log_loss": log_loss(y, s, labels=[0, 1]),
        "brier": np.mean((s - y) ** 2),
        "accuracy": np.mean(pred == y),
        "precision": precision_score(y, pred, zero_division=np.nan),
        "recall": recall_score(y, pred, zero_division=np.nan),
        "f1": f1_score(y, pred, zero_division=np.nan),
    }
    return {name: float(value) for name, value in out.items()}


def evaluate(y_true,  # 0/1 labels
             y_score,  # probabilities of the positive class
             frame: pd.DataFrame | None = None,  # rows aligned with the labels, holding the `segments` columns
             segments=(),  # a column, or columns, whose values are evaluated separately
             threshold: float = 0.5,  # a score at or above it predicts the positive class
             ) -> dict:
    """`metrics` overall and per value of each `segments` column: `{'overall': ..., 'segments': {'col=v': ...}}`."""
    y, s = _checked(y_true, y_score)
    segments = [segments] if isinstance(segments, str) else list(segments)
    if segments and (frame is None or len(frame) != len(y)):
        raise ValueError("segments need a `frame` with one row per label")
    report = {"overall": metrics(y, s, threshold), "segments": {}}
    for column in segments:
        values = frame[column].astype("string").fillna("missing").to_numpy()
        for value in sorted(set(values)):
            report["segments"][f"{column}={value}"] = metrics(y[values == value], s[values == value], threshold)
    return report


def _name_part(text) -> str:
    """`text` with every character other than letters, digits, `_` and `-` replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(text))


def flatten(report: dict) -> dict[str, float]:
    """`report` (as `evaluate` returns it) as MLflow metrics: `auc`, ..., then `segment.<column>.<value>.<metric>`.

    Dots separate the levels, so names stay valid on every platform and unambiguous to split; two values that
    become the same name are an error rather than one silently overwriting the other."""
    flat = dict(report["overall"])
    for key, values in report["segments"].items():
        column, value = key.split("=", 1)
        for metric, number in values.items():
            name = f"segment.{_name_part(column)}.{_name_part(value)}.{metric}"
            if name in flat:
                raise ValueError(f"two segments map to the metric name {name!r}; rename a value of {column!r}")
            flat[name] = number
    return flat


def positive_scores(model, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """A binary classifier's probabilities of the positive class for the `features` columns of `frame`."""
    return np.asarray(model.predict_proba(frame[features]))[:, 1]


def primary_score(uc, model, frame: pd.DataFrame) -> float:
    """The contract's primary metric of a fitted model on labelled rows (binary tasks)."""
    if uc.task != "binary":
        raise NotImplementedError(f"task {uc.task!r}: only binary use cases are scored so far")
    return metrics(frame[uc.target], positive_scores(model, frame, uc.features))[uc.metric]
