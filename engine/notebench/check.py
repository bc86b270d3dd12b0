"""`notebench check`: the use case and the landed data, checked before anything runs, one line per problem.

Each `*_problems` function returns readable lines, each naming the file, column or contract name at fault and
the fix; an empty list means that part is fine. `check` runs them all over the workspace's landing area. It only
reads: it creates no folder and opens no MLflow store, so it is safe before the first run. `notebench run` calls
it (without the batch schema, which the pipeline's own validate step gates and records) when a step it would
run reads the landing area (`inputs: [landing/...]`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from notebench.data.batches import validate_batch
from notebench.errors import BatchSchemaError, NotebenchError
from notebench.usecase import UseCase

__all__ = ["MIN_CLASS_ROWS", "Landed", "Report", "batch_problems", "check", "entity_problems", "labelled_rows",
           "layout_problems", "model_problems", "reads_landing", "read_landing", "segment_problems",
           "split_problems", "target_problems"]

MIN_CLASS_ROWS = 10  # rows of each class (regression: rows) a fit, validation or holdout slice needs
CLASSES = ("binary", "multiclass")  # tasks whose target is a class


def _error(exc: Exception) -> str:
    """An exception as `Type: first line`."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _plural(n: int, word: str) -> str:
    """`n word` or `n words` (`batches`)."""
    return f"{n:,} {word}{('es' if word.endswith(('ch', 'sh', 's', 'x')) else 's') * (n != 1)}"


# ---------------------------------------------------------------------------------------------------------
# the landing area, read once


@dataclass
class Landed:
    """The batches of a landing area, by file, and the files that could not be read."""

    root: Path  # shown file names are relative to it (the workspace)
    folder: Path  # the landing folder
    features: dict[Path, pd.DataFrame] = field(default_factory=dict)  # features/*.parquet, oldest first
    labels: dict[Path, pd.DataFrame] = field(default_factory=dict)  # labels/*.parquet, oldest first
    unreadable: list[str] = field(default_factory=list)  # one problem line per file that is not parquet

    def name(self, path: Path) -> str:
        """`path` as shown: relative to the workspace when inside it."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)


def read_landing(folder: Path, root: Path | None = None) -> Landed:
    """Every batch under `folder`/features and `folder`/labels (reads only; a missing folder holds nothing)."""
    landed = Landed(Path(root or folder), Path(folder))
    for stream in ("features", "labels"):
        for path in sorted((Path(folder) / stream).glob("*.parquet")):
            try:
                getattr(landed, stream)[path] = pd.read_parquet(path)
            except Exception as exc:  # any unreadable file is a problem line, not a crash
                landed.unreadable.append(f"{landed.name(path)}: cannot be read as parquet ({_error(exc)}); "
                                         "re-land it or remove it")
    return landed


# ---------------------------------------------------------------------------------------------------------
# the contract


def model_problems(uc: UseCase, seed: int = 0) -> list[str]:
    """`search_space` on an Optuna trial (and replayed on a FixedTrial, as the refit does), then `make_model`."""
    if not (callable(uc.make_model) and callable(uc.search_space)):
        return []  # UseCase.problems says so
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)  # no "A new study created in memory" line
    try:
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
        params = uc.search_space(trial)
        uc.search_space(optuna.trial.FixedTrial(trial.params))
    except Exception as exc:
        return [f"search_space: fails on an Optuna trial ({_error(exc)}); return a dict of make_model's "
                "parameters drawn with trial.suggest_*"]
    finally:
        optuna.logging.set_verbosity(level)
    if not isinstance(params, dict):
        return [f"search_space: returns a {type(params).__name__}; return a dict of make_model's parameters"]
    try:
        model = uc.make_model({**params, "random_state": seed})
    except Exception as exc:
        return [f"make_model: fails on search_space's parameters plus random_state ({_error(exc)}); accept "
                "every parameter search_space draws, and random_state"]
    needed = ("fit", "predict", *(("predict_proba",) if uc.task in CLASSES else ()))
    missing = [m for m in needed if not callable(getattr(model, m, None))]
    return [f"make_model: returns a {type(model).__name__} without {', '.join(missing)}; return an unfitted "
            "scikit-learn estimator"] if missing else []


# ---------------------------------------------------------------------------------------------------------
# the landed data against the contract


def batch_problems(uc: UseCase, landed: Landed, skip: tuple[str, ...] = ()) -> list[str]:
    """The first feature batch that fails the schema, and the first label batch without its columns.

    `skip`: columns whose problems are told elsewhere (an entity of the wrong type)."""
    out = []
    for path, frame in landed.features.items():
        try:
            validate_batch(frame, uc.schema, uc.keys, file=landed.name(path))
        except BatchSchemaError as exc:
            found = [p for p in exc.problems if not p.startswith(tuple(f"{c}: " for c in skip))]
            if not found:
                continue
            more = f" (and {_plural(len(found) - 1, 'more problem')})" if len(found) > 1 else ""
            out.append(f"{exc.file}: {found[0]}{more}; fix the batch (land a corrected one under a new name) or the "
                       "use case's schema")
            break
    needed = [*uc.keys, uc.target]
    for path, frame in landed.labels.items():
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            out.append(f"{landed.name(path)}: no column {', '.join(map(repr, missing))}; a label batch holds "
                       f"{', '.join(needed)}")
            break
    return out


def layout_problems(uc: UseCase, landed: Landed) -> list[str]:
    """Landed batches against the contract's label layout (`separate` or `in_batches`)."""
    features, labels = landed.folder / "features", landed.folder / "labels"
    if not landed.features:
        return [f"{landed.name(features)}: no feature batches; land some (for the demo world: "
                "`notebench demo-data`)"]
    with_target = [p for p, f in landed.features.items() if uc.target in f.columns]
    if uc.labels == "separate":
        out = [] if landed.labels else [
            f"{landed.name(labels)}: no label batches, but the use case's labels = 'separate'; land "
            f"labels/*.parquet ({', '.join([*uc.keys, uc.target])}), or set labels = 'in_batches'"]
        if with_target:
            out.append(f"{landed.name(with_target[0])}: holds the target {uc.target!r}, but labels = 'separate'; "
                       "set labels = 'in_batches' (and add the target to the schema), or land it in labels/")
        return out
    out = [] if not landed.labels else [
        f"{landed.name(labels)}: label batches landed, but the use case's labels = 'in_batches' (read from the "
        "feature batches); set labels = 'separate', or put the target into the feature batches"]
    without = [p for p in landed.features if p not in with_target]
    if without:
        out.append(f"{landed.name(without[0])}: no target column {uc.target!r}, but labels = 'in_batches'; land "
                   "the target inside the feature batches (null until known), or set labels = 'separate'")
    return out


def _kind(dtype) -> str:
    """`int64` for integer columns, `string` for the rest (how Feast types an entity)."""
    return "int64" if pd.api.types.is_integer_dtype(dtype) else "string"


def entity_problems(uc: UseCase, landed: Landed) -> list[str]:
    """Each entity column's type in the first batch of each stream against the schema's declaration."""
    out = []
    for stream in (landed.features, landed.labels):
        path, frame = next(iter(stream.items()), (None, None))
        for col, declared in uc.entity_types.items():
            if frame is None or col not in frame.columns or _kind(frame[col].dtype) == declared:
                continue
            fix = "int64 (pa.Column('int64'))" if declared == "string" else "a string (pa.Column(str))"
            example = "".join(f" (e.g. {v!r})" for v in frame[col].dropna().head(1))
            out.append(f"entity {col!r}: {landed.name(path)} holds {frame[col].dtype} values{example}, but the schema "
                       f"declares {declared}; declare it as {fix}, or land the type the schema declares")
    return out


def segment_problems(uc: UseCase, landed: Landed) -> list[str]:
    """Each declared segment column present, and not only null, in the feature batches."""
    out = []
    for col in uc.segments:
        missing = [p for p, f in landed.features.items() if col not in f.columns]
        if missing:
            out.append(f"segment {col!r}: no such column in {landed.name(missing[0])} "
                       f"({_plural(len(missing), 'batch')} without it); land it, or drop it from the segments")
        elif landed.features and all(f[col].isna().all() for f in landed.features.values()):
            out.append(f"segment {col!r}: null in every landed row; land its values, or drop it from the segments")
    return out


def labelled_rows(uc: UseCase, landed: Landed) -> pd.DataFrame | None:
    """Keys and target of every row whose label is known, in the contract's layout (None: none can be read)."""
    stream = landed.labels if uc.labels == "separate" else landed.features
    needed = [*uc.keys, uc.target]
    frames = [f[needed] for f in stream.values() if set(needed) <= set(f.columns)]
    if not frames:
        return None
    rows = pd.concat(frames, ignore_index=True)
    return rows[rows[uc.target].notna()].reset_index(drop=True)


def target_problems(uc: UseCase, rows: pd.DataFrame) -> list[str]:
    """No labelled row at all, a class target with one class, a binary one with more than two, a regression one
    that is not numeric."""
    if rows.empty:
        return [f"target {uc.target!r}: no labelled rows (no label has arrived yet); land batches whose labels "
                "are known"]
    if uc.task == "regression" and not pd.api.types.is_numeric_dtype(rows[uc.target]):
        values = ", ".join(map(repr, rows[uc.target].drop_duplicates().head(3).tolist()))
        return [f"target {uc.target!r}: task = 'regression' needs numbers, the labelled rows hold {values}; set "
                "task = 'multiclass' (or 'binary'), or land numeric labels"]
    if uc.task not in CLASSES:
        return []
    counts = rows[uc.target].value_counts()
    if len(counts) < 2:
        only = f" ({counts.index.tolist()[0]!r})" if len(counts) else ""
        return [f"target {uc.target!r}: the {_plural(len(rows), 'labelled row')} hold one class{only}; a "
                f"{uc.task} model needs at least two: land data with other outcomes"]
    if uc.task == "binary" and len(counts) > 2:
        return [f"target {uc.target!r}: {len(counts)} classes ({', '.join(map(repr, counts.index.tolist()[:5]))}) but "
                "task = 'binary'; set task = 'multiclass', or land two classes"]
    return []


def _slices(rows: pd.DataFrame, timestamp: str, holdout_days: int, validation_days: int) -> dict[str, pd.DataFrame]:
    """fit, validation and holdout as the train step cuts them (the last days of the rows, then of the rest)."""
    day = rows[timestamp].dt.floor("D")
    holdout_start = day.max() - pd.Timedelta(days=holdout_days - 1)
    validation_start = holdout_start - pd.Timedelta(days=validation_days)
    return {"fit": rows[day < validation_start], "validation": rows[(day >= validation_start) & (day < holdout_start)],
            "holdout": rows[day >= holdout_start]}


def _short(uc: UseCase, part: pd.DataFrame, classes) -> str:
    """What a slice lacks, '' when nothing: too few rows of a class (of any, for regression)."""
    if uc.task not in CLASSES:
        return "" if len(part) >= MIN_CLASS_ROWS else f"needs {MIN_CLASS_ROWS}"
    counts = part[uc.target].value_counts()
    low = [f"{int(counts.get(c, 0))} of class {c!r}" for c in classes if counts.get(c, 0) < MIN_CLASS_ROWS]
    return f"{', '.join(low)} (each class needs {MIN_CLASS_ROWS})" if low else ""


def split_problems(uc: UseCase, rows: pd.DataFrame, holdout_days: int, validation_days: int) -> list[str]:
    """The fit / validation / holdout split by time, each slice with enough rows of each class."""
    if rows.empty or not pd.api.types.is_datetime64_any_dtype(rows[uc.timestamp]):
        return []  # the schema check names a wrong timestamp; no labelled rows: target_problems
    days = rows[uc.timestamp].dt.floor("D")
    span = (days.max() - days.min()).days + 1
    knob = "[training] holdout_days (NOTEBENCH_TRAINING_HOLDOUT_DAYS)"
    if span <= holdout_days + validation_days:
        return [f"labelled rows span {_plural(span, 'day')} ({days.min().date()} to {days.max().date()}): the "
                f"{holdout_days}-day holdout and the {validation_days}-day validation slice leave nothing to fit "
                f"on; land at least {holdout_days + validation_days + 1 - span} more day(s), or lower {knob}"]
    widths = {"fit": span - holdout_days - validation_days, "validation": validation_days, "holdout": holdout_days}
    classes = sorted(rows[uc.target].unique().tolist()) if uc.task in CLASSES else []
    out = []
    for name, part in _slices(rows, uc.timestamp, holdout_days, validation_days).items():
        short = _short(uc, part, classes)
        fix = f"land more days, or lower {knob}" if name == "fit" else f"land more data, or raise {knob}"
        if short:
            out.append(f"the {widths[name]}-day {name} slice would hold {_plural(len(part), 'labelled row')}: "
                       f"{short}; {fix}")
    return out


# ---------------------------------------------------------------------------------------------------------
# everything, over the workspace


@dataclass
class Report:
    """What `check` found: the problems, one line each, and a summary line for each part that passed."""

    problems: list[str] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)

    def add(self, problems: list[str], ok: str) -> bool:
        """Record a part's problems, or its summary when it has none; True when it passed."""
        self.problems += problems
        if not problems:
            self.ok.append(ok)
        return not problems


def _load(settings) -> UseCase | str:
    """The contract `[use_case] object` names, or the problem line saying why it cannot be loaded."""
    from notebench.usecase import load_use_case

    try:
        return load_use_case(settings)
    except NotebenchError as exc:
        return str(exc)


def check(settings=None, batches: bool = True) -> Report:
    """Check the use case, then the landed data against it (`batches`: also each batch against the schema)."""
    from notebench.settings import load_settings

    settings = settings or load_settings()
    report = Report()
    uc = _load(settings)
    if isinstance(uc, str):
        report.problems.append(uc)
        return report
    seed = settings.value("training", "seed")
    report.add(uc.problems(), f"use case {uc.name!r}: {uc.task} on {uc.target!r}, labels {uc.labels}, "
                              f"{len(uc.features)} features{': ' + uc.description if uc.description else ''}")
    report.add(model_problems(uc, seed), "model: make_model builds an estimator from a search_space draw")
    root = settings.path("workspace", "path")
    landed = read_landing(root / "landing", root)
    _data(uc, landed, report, settings, batches)
    return report


def _data(uc: UseCase, landed: Landed, report: Report, settings, batches: bool) -> None:
    """The data parts of `check`, each only once what it reads is sound."""
    rows = sum(map(len, landed.features.values()))
    labels = f", {_plural(len(landed.labels), 'label batch')}" if landed.labels else ""
    if not report.add(landed.unreadable + layout_problems(uc, landed),
                      f"landing: {_plural(len(landed.features), 'feature batch')} ({rows:,} rows){labels} under "
                      f"{landed.folder}, labels {uc.labels}"):
        return
    entities = entity_problems(uc, landed)
    report.add(entities, "entities: " + ", ".join(f"{c} ({t})" for c, t in uc.entity_types.items()))
    if batches:
        wrong = tuple(c for c in uc.entities if any(p.startswith(f"entity {c!r}") for p in entities))
        report.add(batch_problems(uc, landed, skip=wrong), "batches: every landed batch matches the schema")
    report.add(segment_problems(uc, landed), f"segments: {', '.join(uc.segments) or 'none declared'}")
    labelled = labelled_rows(uc, landed)
    if labelled is None or not report.add(target_problems(uc, labelled), _classes(uc, labelled)):
        return
    holdout = settings.value("training", "holdout_days")  # the train step's validation slice is as long
    problems = split_problems(uc, labelled, holdout, holdout)
    report.add(problems, "" if problems else _split_summary(uc, labelled, holdout))


def _split_summary(uc: UseCase, rows: pd.DataFrame, holdout_days: int) -> str:
    """The summary of the split: each slice's days and rows."""
    slices = _slices(rows, uc.timestamp, holdout_days, holdout_days).items()
    parts = [f"{n} {_plural(p[uc.timestamp].dt.floor('D').nunique(), 'day')} ({len(p):,} rows)" for n, p in slices]
    each = " of each class" if uc.task in CLASSES else ""
    return (f"split ([training] holdout_days = {holdout_days}): {', '.join(parts)}; each at least {MIN_CLASS_ROWS} "
            f"rows{each}")


def _classes(uc: UseCase, rows: pd.DataFrame) -> str:
    """The summary of the labelled rows: how many, and of which class."""
    counts = rows[uc.target].value_counts() if uc.task in CLASSES else pd.Series(dtype=int)
    per = f", {', '.join(f'{c!r}: {n:,}' for c, n in counts.items())}" if len(counts) else ""
    return f"labels: {_plural(len(rows), 'labelled row')}{per}"


def reads_landing(spec, only: str | None = None, to_step: str | None = None) -> bool:
    """Whether a step the run would consider reads the landing area (`inputs: [landing/...]`)."""
    steps = [only] if only else spec.upstream_of(to_step) if to_step else list(spec.steps)
    globs = [p.removeprefix("./") for s in steps if s in spec.steps for p in spec.steps[s].inputs]
    return any(p.startswith("landing/") for p in globs)
