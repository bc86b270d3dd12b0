"""Holdout metrics of a model's predictions for each task, overall and per segment, as plain dicts and MLflow names.

`predictions(uc, model, frame)` gives what a task is judged on: a binary classifier's probabilities of the positive
class, a multiclass classifier's probability matrix (a DataFrame whose columns are the class labels), a regressor's
values. `task_metrics` measures one set of them; `evaluate` does so overall and for every value of a few
categorical columns (`column=value`, a missing value being its own segment, `missing`); `flatten` names the results
for MLflow (`segment.<column>.<value>.<metric>`). `score` and `primary_score` measure one metric by name: a
built-in one of the task, or any scikit-learn scorer (`neg_mean_absolute_error`, `top_k_accuracy`, ...), whose
value is as `sklearn.metrics.get_scorer(name)` gives it (larger is better).

Every report of a task has the same keys whatever the data (`notebench.usecase.TASK_METRICS`); a metric the data
cannot define is NaN, never a made-up 0 and never missing (a small segment where no positive occurred is normal,
and a gate must skip it and say so).

Binary (`metrics`), from the probabilities of the positive class:

- `n`, `positive_rate`, `mean_score`: rows, share of positives, mean probability (compare the last two for
  calibration-in-the-large); always defined.
- `auc`: ROC AUC, how well scores rank positives above negatives; NaN with one class.
- `average_precision`: area under the precision-recall curve, the honest ranking metric for rare positives; NaN
  with one class.
- `log_loss`, `brier`: calibration and sharpness of the probabilities, lower is better; always defined.
- `accuracy`, `precision`, `recall`, `f1`: quality of the decisions at `threshold`; precision is NaN when nothing
  is predicted positive, recall when there is no positive, f1 when both.

Multiclass (`multiclass_metrics`), from the probability matrix; the decision is the most probable class:

- `n`, `accuracy`; `balanced_accuracy`: the mean recall of the classes present (robust to a rare class);
- `precision_macro`, `recall_macro`, `f1_macro`: unweighted means over the classes, a class where the metric is
  undefined (never predicted, or absent) left out of the mean;
- `log_loss`: lower is better; always defined;
- `roc_auc_ovr`: the mean one-vs-rest ROC AUC of the classes present that are neither all nor none of the rows;
  NaN with one class.

Regression (`regression_metrics`), from the predicted values:

- `n`, `mean_target`, `mean_prediction` (their difference is the bias);
- `rmse`, `mae`: lower is better, in the target's units; always defined;
- `r2`: NaN with fewer than two rows or a constant target; `mape`: mean absolute error relative to the target,
  NaN when a target is 0.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    get_scorer,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from notebench.usecase import TASK_METRICS, TASKS

__all__ = ["KEY_METRICS", "as_predictions", "evaluate", "flatten", "key_metrics", "metrics", "multiclass_metrics",
           "positive_scores", "predictions", "primary_score", "regression_metrics", "score", "task_metrics"]

# the metrics worth a registry tag (and a live comparison by monitoring) for each task, besides the primary one
KEY_METRICS = {"binary": ("auc", "average_precision", "log_loss", "brier"),
               "multiclass": ("log_loss", "accuracy", "balanced_accuracy", "f1_macro", "roc_auc_ovr"),
               "regression": ("rmse", "mae", "r2", "mape")}


# ---------------------------------------------------------------------------------------------------------
# binary


def _checked(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """`y_true` as ints and `y_score` as floats, after checking they are labels and probabilities that pair up."""
    y, s = np.asarray(y_true), np.asarray(y_score, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"y_score must hold one probability per row, got shape {s.shape}; "
                         "pass predict_proba(X)[:, 1]")
    _same_length(y, s)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0/1 labels only")
    if not ((s >= 0) & (s <= 1)).all():
        raise ValueError("y_score must hold probabilities in [0, 1]; NaN is not one")
    return y.astype(int), s


def _same_length(y: np.ndarray, out: np.ndarray) -> None:
    if len(y) != len(out) or len(y) == 0:
        raise ValueError(f"need as many labels as scores, at least one: got {len(y)} and {len(out)}")


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


# ---------------------------------------------------------------------------------------------------------
# multiclass


def _matrix(y_proba, classes) -> tuple[np.ndarray, np.ndarray]:
    """The probability matrix and its class labels (a DataFrame's columns unless `classes` are given)."""
    if classes is None:
        if not isinstance(y_proba, pd.DataFrame):
            raise ValueError("multiclass probabilities need their class labels: pass a DataFrame whose columns are "
                             "the classes (as `predictions` returns it) or `classes=model.classes_`")
        classes = y_proba.columns
    return np.asarray(y_proba, dtype=float), np.asarray(list(classes))


def _checked_classes(y_true, y_proba, classes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probability matrix and classes, after checking that they pair up and the labels are known classes."""
    y = np.asarray(y_true)
    p, classes = _matrix(y_proba, classes)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"y_proba must hold one probability per class and row ({len(classes)} classes), got shape "
                         f"{p.shape}; pass predict_proba(X) with classes=model.classes_")
    _same_length(y, p)
    if not ((p >= 0) & (p <= 1)).all() or not np.allclose(p.sum(axis=1), 1, atol=1e-6):
        raise ValueError("y_proba must hold probabilities in [0, 1] that sum to 1 on every row; NaN is not one")
    unknown = sorted({str(v) for v in y[~np.isin(y, classes)]})
    if unknown:
        raise ValueError(f"y_true holds labels that are not classes of the model: {', '.join(unknown[:5])} "
                         f"(classes: {', '.join(map(str, classes))})")
    return y, p, classes


def _ovr_auc(y: np.ndarray, p: np.ndarray, classes: np.ndarray) -> float:
    """Mean one-vs-rest ROC AUC over the classes that are some but not all of the rows; NaN when none is."""
    aucs = [roc_auc_score(y == c, p[:, i]) for i, c in enumerate(classes) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(aucs)) if aucs else np.nan


def multiclass_metrics(y_true,  # class labels
                       y_proba,  # probability matrix, one column per class (a DataFrame: its columns are the classes)
                       classes=None,  # the class of each column, as model.classes_; None: y_proba's columns
                       ) -> dict[str, float]:
    """Quality of a class-probability matrix against `y_true`: decisions (most probable class), log loss, OvR AUC."""
    y, p, classes = _checked_classes(y_true, y_proba, classes)
    pred = classes[p.argmax(axis=1)]
    macro = dict(average="macro", zero_division=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class absent from a small segment is normal: its metric is left out
        out = {
            "n": len(y),
            "accuracy": np.mean(pred == y),
            "balanced_accuracy": np.mean([np.mean(pred[y == c] == c) for c in classes if (y == c).any()]),
            "precision_macro": precision_score(y, pred, **macro),
            "recall_macro": recall_score(y, pred, **macro),
            "f1_macro": f1_score(y, pred, **macro),
            "log_loss": log_loss(y, p, labels=classes),
            "roc_auc_ovr": _ovr_auc(y, p, classes),
        }
    return {name: float(value) for name, value in out.items()}


# ---------------------------------------------------------------------------------------------------------
# regression


def regression_metrics(y_true,  # observed values
                       y_pred,  # predicted values
                       ) -> dict[str, float]:
    """Errors of `y_pred` against `y_true`: RMSE, MAE, R², MAPE; NaN where undefined."""
    y, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"y_pred must hold one value per row, got shape {p.shape}; pass model.predict(X)")
    _same_length(y, p)
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError("y_true and y_pred must hold finite numbers; NaN is not one")
    err = p - y
    spread = np.sum((y - y.mean()) ** 2)
    out = {
        "n": len(y),
        "mean_target": y.mean(),
        "mean_prediction": p.mean(),
        "rmse": np.sqrt(np.mean(err ** 2)),
        "mae": np.mean(np.abs(err)),
        "r2": 1 - np.sum(err ** 2) / spread if len(y) > 1 and spread > 0 else np.nan,
        "mape": np.mean(np.abs(err) / np.abs(y)) if (y != 0).all() else np.nan,
    }
    return {name: float(value) for name, value in out.items()}


# ---------------------------------------------------------------------------------------------------------
# any task, any scikit-learn scorer


class _ReplayClassifier(ClassifierMixin, BaseEstimator):
    """Predictions already made, answered by row position (X's one column): lets a scorer judge any model's output."""

    def __init__(self, proba=None, classes=None, threshold=0.5):
        self.proba, self.classes, self.threshold = proba, classes, threshold

    def fit(self, X, y=None):
        self.classes_ = np.asarray(self.classes)
        return self

    def predict_proba(self, X):
        return self.proba[np.asarray(X)[:, 0].astype(int)]

    def predict(self, X):
        p = self.predict_proba(X)
        if len(self.classes_) == 2:
            return self.classes_[(p[:, 1] >= self.threshold).astype(int)]
        return self.classes_[p.argmax(axis=1)]


class _ReplayRegressor(RegressorMixin, BaseEstimator):
    """A regressor's values, answered by row position (X's one column)."""

    def __init__(self, values=None):
        self.values = values

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def predict(self, X):
        return self.values[np.asarray(X)[:, 0].astype(int)]


def _scorer_value(name: str, task: str, y, output, classes, threshold: float) -> float:
    """The scikit-learn scorer `name` on predictions already made; NaN when the scorer cannot define it here."""
    try:
        scorer = get_scorer(name)
    except ValueError as exc:
        raise ValueError(f"{name!r} is neither a {task} metric ({', '.join(TASK_METRICS[task])}) nor a scikit-learn "
                         "scorer (sklearn.metrics.get_scorer_names())") from exc
    if task == "regression":
        model = _ReplayRegressor(np.asarray(output, dtype=float)).fit(None)
    elif task == "binary":
        s = np.asarray(output, dtype=float)
        model = _ReplayClassifier(np.column_stack([1 - s, s]), [0, 1], threshold).fit(None)
    else:
        p, classes = _matrix(output, classes)
        model = _ReplayClassifier(p, classes).fit(None)
    rows = np.arange(len(y)).reshape(-1, 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(scorer(model, rows, np.asarray(y)))
    except ValueError:  # e.g. ROC AUC of one class
        return float("nan")


def _task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    return task


def task_metrics(task: str,  # binary | multiclass | regression
                 y_true,  # labels or values
                 output,  # what `predictions` returns for the task
                 classes=None,  # multiclass: the class of each column of `output` (None: its DataFrame columns)
                 threshold: float = 0.5,  # binary: a score at or above it predicts the positive class
                 extra=(),  # metric names beyond the task's own (scikit-learn scorers) to measure too
                 ) -> dict[str, float]:
    """The task's metrics (`TASK_METRICS[task]`), and any `extra` scorer, of one set of predictions."""
    if _task(task) == "binary":
        y = _checked(y_true, output)[0]
        out = metrics(y, output, threshold)
    elif task == "multiclass":
        y = np.asarray(y_true)
        out = multiclass_metrics(y, output, classes)
    else:
        y = np.asarray(y_true, dtype=float)
        out = regression_metrics(y, output)
    for name in extra:
        if name not in out:
            out[name] = _scorer_value(name, task, y, output, classes, threshold)
    return out


def score(task: str, metric: str, y_true, output, classes=None, threshold: float = 0.5) -> float:
    """One metric by name of one set of predictions: a built-in one of the task, or a scikit-learn scorer."""
    return task_metrics(task, y_true, output, classes, threshold, extra=(metric,))[metric]


def key_metrics(task: str, metric: str = "") -> tuple[str, ...]:
    """The task's key metrics (`KEY_METRICS`), the primary `metric` first."""
    return tuple(dict.fromkeys([m for m in (metric,) if m] + list(KEY_METRICS[_task(task)])))


# ---------------------------------------------------------------------------------------------------------
# reports: overall and per segment


def _rows(output, mask: np.ndarray):
    """The rows of `mask` of an output (array or DataFrame)."""
    return output.iloc[np.flatnonzero(mask)] if isinstance(output, pd.DataFrame) else output[mask]


def evaluate(y_true,  # labels (binary: 0/1) or values
             y_score,  # what `predictions` returns: positive-class probabilities, a probability matrix, or values
             frame: pd.DataFrame | None = None,  # rows aligned with the labels, holding the `segments` columns
             segments=(),  # a column, or columns, whose values are evaluated separately
             threshold: float = 0.5,  # binary: a score at or above it predicts the positive class
             *,
             task: str = "binary",  # binary | multiclass | regression
             classes=None,  # multiclass: the class of each column of `y_score` (None: its DataFrame columns)
             extra=(),  # metric names beyond the task's own (scikit-learn scorers) to measure too
             ) -> dict:
    """`task_metrics` overall and per value of each `segments` column: `{"overall": {...}, "segments": {...}}`."""
    y = np.asarray(y_true)
    output = y_score if isinstance(y_score, pd.DataFrame) else np.asarray(y_score)
    if task == "multiclass" and classes is None and isinstance(output, pd.DataFrame):
        classes = list(output.columns)
    segments = [segments] if isinstance(segments, str) else list(segments)
    if segments and (frame is None or len(frame) != len(y)):
        raise ValueError("segments need a `frame` with one row per label")
    report = {"overall": task_metrics(task, y, output, classes, threshold, extra), "segments": {}}
    for column in segments:
        values = frame[column].astype("string").fillna("missing").to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            report["segments"][f"{column}={value}"] = task_metrics(task, y[mask], _rows(output, mask), classes,
                                                                   threshold, extra)
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


# ---------------------------------------------------------------------------------------------------------
# a model's predictions


def positive_scores(model, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """A binary classifier's probabilities of the positive class for the `features` columns of `frame`."""
    return np.asarray(model.predict_proba(frame[features]))[:, 1]


def predictions(uc, model, frame: pd.DataFrame):
    """What the use case's task is judged on, for the contract's feature columns of `frame`: binary, the positive
    class's probabilities; multiclass, the probability matrix as a DataFrame whose columns are the classes;
    regression, the predicted values."""
    if _task(uc.task) == "binary":
        return positive_scores(model, frame, uc.features)
    if uc.task == "multiclass":
        return pd.DataFrame(np.asarray(model.predict_proba(frame[uc.features])), columns=list(model.classes_))
    return np.asarray(model.predict(frame[uc.features]), dtype=float)


def as_predictions(task: str, output, classes=None):
    """A logged model's raw output (`mlflow.pyfunc` or the service: probabilities, a matrix, values) in the shape
    `predictions` gives; `classes`: the class of each column, for multiclass."""
    out = np.asarray(output)
    if _task(task) == "binary":
        return out[:, -1].astype(float) if out.ndim == 2 else out.astype(float)
    if task == "multiclass":
        if classes is None:
            raise ValueError("a multiclass output needs its class labels (model.classes_)")
        return pd.DataFrame(out.astype(float), columns=list(classes))
    return out.reshape(len(out), -1)[:, 0].astype(float)


def primary_score(uc, model, frame: pd.DataFrame) -> float:
    """The contract's primary metric (built in, or a scikit-learn scorer) of a fitted model on labelled rows."""
    return score(uc.task, uc.metric, frame[uc.target], predictions(uc, model, frame))
