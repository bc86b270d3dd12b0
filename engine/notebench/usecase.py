"""The use-case contract: the one object through which the engine knows a use case.

A project's notebooks export one `UseCase` (the reference project: `nbs_lib.use_case.USE_CASE`), and
`settings.ini` names it (`[use_case] object = module:NAME`). Every stage takes what it needs from it — the
entity keys and timestamp, the target and the task, how labels arrive, the pandera schema of a landed batch, the
features, the model factory and its search space, the primary metric and its direction, the segments, a sample —
and nothing in the engine imports a use-case module by name. `load_use_case` finds it; `UseCase.problems` lists
what is wrong with a declaration, one line each, for `notebench check`.

Landing layouts (`labels`), under `<workspace>/landing/`:

- `separate`: `features/*.parquet` (entities, timestamp, features) and `labels/*.parquet` (entities, timestamp,
  target), each batch named by the day it arrived; label rows are the rows of `labels/`, matched with features
  point in time.
- `in_batches`: `features/*.parquet` hold the target column too (null while a label is not known); label rows are
  the rows of `features/` whose target is known.

Timestamps are UTC (`datetime64[us, UTC]`); a batch is named `YYYY-MM-DD.parquet` by the day it landed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notebench.errors import UseCaseError

__all__ = ["DIRECTIONS", "LABEL_LAYOUTS", "METRICS", "TASKS", "TASK_METRICS", "UseCase", "is_scorer",
           "load_use_case", "metric_direction", "primary_metric", "use_case_module"]

TASKS = ("binary", "multiclass", "regression")
LABEL_LAYOUTS = ("separate", "in_batches")
# the primary metric of each task unless the contract names one, and every metric's better direction
METRICS = {"binary": "auc", "multiclass": "log_loss", "regression": "rmse"}
DIRECTIONS = {"auc": "maximize", "average_precision": "maximize", "accuracy": "maximize", "f1": "maximize",
              "precision": "maximize", "recall": "maximize", "r2": "maximize", "balanced_accuracy": "maximize",
              "precision_macro": "maximize", "recall_macro": "maximize", "f1_macro": "maximize",
              "roc_auc_ovr": "maximize",
              "log_loss": "minimize", "brier": "minimize", "rmse": "minimize", "mae": "minimize", "mape": "minimize"}
# the metrics `notebench.evaluation` measures for each task (the report's keys; the ones with a direction can gate)
TASK_METRICS = {
    "binary": ("n", "positive_rate", "mean_score", "auc", "average_precision", "log_loss", "brier", "accuracy",
               "precision", "recall", "f1"),
    "multiclass": ("n", "accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "log_loss",
                   "roc_auc_ovr"),
    "regression": ("n", "mean_target", "mean_prediction", "rmse", "mae", "r2", "mape"),
}


def is_scorer(name: str) -> bool:
    """True when `name` is a scikit-learn scorer (`sklearn.metrics.get_scorer_names()`), e.g. `neg_log_loss`."""
    from sklearn.metrics import get_scorer_names

    return name in get_scorer_names()


class _Derived(str):
    """A value the contract filled in from another field (the task's metric, the metric's direction). It is a plain
    string to every reader, but `dataclasses.replace(use_case, metric="rmse")` derives it again from the new metric
    instead of carrying the old metric's direction over."""

    __slots__ = ()


def metric_direction(name: str) -> str:
    """`maximize` or `minimize` for a built-in metric; `maximize` for a scikit-learn scorer (a scorer's value is
    larger when better: the `neg_` ones negate a loss); empty for anything else."""
    if name in DIRECTIONS:
        return DIRECTIONS[name]
    return "maximize" if name and is_scorer(name) else ""


def _names(value) -> tuple[str, ...]:
    """A column name or a list of them as a tuple."""
    return (value,) if isinstance(value, str) else tuple(value or ())


@dataclass(frozen=True)
class UseCase:
    """Everything the engine knows about a use case; see the module's docstring and the README."""

    name: str  # short name: the Feast feature view is `<name>_features`
    entities: tuple[str, ...]  # entity key columns: whom a prediction is about (one or more)
    timestamp: str  # when the features were observed (UTC)
    target: str  # what the model predicts
    task: str  # binary | multiclass | regression
    schema: Any  # pandera DataFrameSchema of a landed feature batch (with the target when labels = in_batches)
    numeric: tuple[str, ...]  # numeric feature columns
    categorical: tuple[str, ...]  # categorical feature columns (strings)
    make_model: Callable[[dict], Any]  # params -> an unfitted scikit-learn estimator over `features`
    search_space: Callable[[Any], dict]  # an Optuna trial -> params for `make_model`
    labels: str = "separate"  # how labels arrive: separate | in_batches (see the module's docstring)
    label_delay_days: int = 0  # days after a row's timestamp until its label is known
    derived: tuple[str, ...] = ()  # names of the features the model derives inside itself (documentation, plots)
    metric: str = ""  # the primary metric: a TASK_METRICS name or a scikit-learn scorer; empty: the task's (METRICS)
    direction: str = ""  # maximize | minimize; empty: the metric's (`metric_direction`)
    segments: tuple[str, ...] = ()  # categorical columns evaluated separately; may be none
    sample: Callable[[Path], None] | None = None  # writes a small landing area into a folder (lessons, smoke)
    simulate: Callable[..., None] | None = None  # (landing, start_day, days, seed, shift_day) -> lands a world's days
    description: str = ""  # one line, shown by `notebench check`
    extra: dict = field(default_factory=dict)  # anything else the use case's own notebooks want to carry

    def __post_init__(self):
        for name in ("entities", "numeric", "categorical", "derived", "segments"):
            object.__setattr__(self, name, _names(getattr(self, name)))
        if not self.metric or isinstance(self.metric, _Derived):
            object.__setattr__(self, "metric", _Derived(METRICS.get(self.task, "")))
        if not self.direction or isinstance(self.direction, _Derived):
            object.__setattr__(self, "direction", _Derived(metric_direction(self.metric)))

    # ------------------------------------------------------------------------------------------------------
    # derived names

    @property
    def features(self) -> list[str]:
        """The model's input columns, as landed: numeric, then categorical."""
        return [*self.numeric, *self.categorical]

    @property
    def keys(self) -> list[str]:
        """Entity columns and the timestamp: what makes a row unique."""
        return [*self.entities, self.timestamp]

    @property
    def feature_view(self) -> str:
        """The Feast feature view holding `features`."""
        return f"{self.name}_features"

    @property
    def entity_types(self) -> dict[str, str]:
        """Each entity column's type as the schema declares it: `int64` or `string`."""
        out = {}
        for col in self.entities:
            column = self.schema.columns.get(col)
            dtype = str(column.dtype) if column is not None and column.dtype is not None else ""
            out[col] = "int64" if dtype.startswith(("int", "uint")) else "string"
        return out

    @property
    def maximize(self) -> bool:
        """True when a larger primary metric is better."""
        return self.direction == "maximize"

    # ------------------------------------------------------------------------------------------------------
    # the contract's own checks

    def problems(self) -> list[str]:
        """What is wrong with this declaration, one readable line each (empty: nothing)."""
        out = []
        if not self.name or not self.name.replace("_", "").isalnum():
            out.append(f"name {self.name!r}: give a short name of letters, digits and underscores")
        if self.task not in TASKS:
            out.append(f"task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.labels not in LABEL_LAYOUTS:
            out.append(f"labels {self.labels!r}: expected one of {', '.join(LABEL_LAYOUTS)}")
        if not self.entities:
            out.append("entities: name at least one entity key column")
        if self.task in TASKS and not self._metric_fits():
            names = [m for m in TASK_METRICS[self.task] if m in DIRECTIONS]
            out.append(f"metric {self.metric!r}: not a {self.task} metric; expected one of {', '.join(names)}, or the "
                       "name of a scikit-learn scorer (sklearn.metrics.get_scorer_names())")
        # a derived direction is only ever empty for an unknown task or metric, reported above
        if not isinstance(self.direction, _Derived) and self.direction not in ("maximize", "minimize"):
            out.append(f"direction {self.direction!r}: expected maximize or minimize")
        if not isinstance(self.label_delay_days, int) or self.label_delay_days < 0:
            out.append(f"label_delay_days {self.label_delay_days!r}: expected a whole number of days >= 0")
        out += self._column_problems()
        for name in ("make_model", "search_space"):
            if not callable(getattr(self, name)):
                out.append(f"{name}: expected a function, got {type(getattr(self, name)).__name__}")
        return out

    def _metric_fits(self) -> bool:
        """The metric is one the task measures with a direction, or a scikit-learn scorer."""
        builtin = [m for name, names in TASK_METRICS.items() for m in names if m in DIRECTIONS]
        if self.metric in builtin:
            return self.metric in TASK_METRICS[self.task]
        return bool(self.metric) and is_scorer(self.metric)

    def _column_problems(self) -> list[str]:
        columns = getattr(self.schema, "columns", None)
        if columns is None:
            return [f"schema: expected a pandera DataFrameSchema, got {type(self.schema).__name__}"]
        out = []
        declared = {"entity": self.entities, "timestamp": (self.timestamp,), "numeric feature": self.numeric,
                    "categorical feature": self.categorical, "segment": self.segments}
        for what, names in declared.items():
            out += [f"{what} {c!r}: not a column of the schema; add it to the schema or fix the name"
                    for c in names if c not in columns]
        if self.labels == "in_batches" and self.target not in columns:
            out.append(f"target {self.target!r}: labels = in_batches, so the schema must hold the target column")
        if self.labels == "separate" and self.target in columns:
            out.append(f"target {self.target!r} is a column of the feature batches: set labels = 'in_batches', or "
                       "drop it from the schema and land labels separately")
        both = (set(self.features) & set(self.keys)) | ({self.target} & (set(self.features) | set(self.keys)))
        out += [f"column {c!r} is declared twice (as a feature and a key or target); keep one role"
                for c in sorted(both)]
        out += [f"segment {c!r}: a segment must be a categorical feature" for c in self.segments
                if c in columns and c not in self.categorical]
        return out


def use_case_module(reference: str) -> str:
    """The module part of `module:NAME`."""
    return reference.partition(":")[0].strip()


def load_use_case(settings=None, reference: str | None = None) -> UseCase:
    """The `UseCase` named by `[use_case] object` (`module:NAME`), or UseCaseError saying what to fix."""
    if reference is None:
        from notebench.settings import load_settings

        settings = settings or load_settings()
        reference = settings.value("use_case", "object")
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise UseCaseError(f"[use_case] object = {reference!r}: expected module:NAME, e.g. nbs_lib.use_case:USE_CASE")
    try:
        module = importlib.import_module(module_name.strip())
    except ImportError as exc:
        raise UseCaseError(f"[use_case] object = {reference!r}: cannot import {module_name!r} ({exc}); export the "
                           "use-case notebooks with `nbdev-export` and install the project (`make install`)") from exc
    found = getattr(module, attr.strip(), None)
    if not isinstance(found, UseCase):
        what = "nothing" if found is None else f"a {type(found).__name__}"
        raise UseCaseError(f"[use_case] object = {reference!r}: {module_name}.{attr} is {what}, not a "
                           "notebench.usecase.UseCase; declare one in the use-case notebooks")
    return found


def primary_metric(settings=None) -> tuple[str, str, bool]:
    """(task, primary metric, larger is better) of the settings' use case; a binary task's defaults when the use
    case cannot be loaded (e.g. where the dashboards run without the project installed)."""
    try:
        uc = load_use_case(settings)
    except UseCaseError:
        return "binary", METRICS["binary"], DIRECTIONS[METRICS["binary"]] == "maximize"
    return uc.task, uc.metric, uc.maximize
