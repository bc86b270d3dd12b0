"""What the user's data is: the timestamp, the entity columns, the target and its task, the features.

Each role comes from an option when one is given, else from the data: the timestamp is the one date column (or the
one with a timestamp's name), the entities are the id-like columns that with the timestamp make every row unique
(with separate labels: the columns both kinds of file share), the target is the one column only the label files have
(or the one named like a target). What cannot be told is asked for in one message, each with its candidates.

The task follows from the target: two values make a binary task; text, or a few whole numbers, a multiclass one; other
numbers a regression. Every other column is a feature: numbers (and booleans) numeric, text with few values
categorical; dates, free text, ids and constant or empty columns are left out, each with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from notebench.new.errors import NeedAnswers, NewProjectError
from notebench.new.sources import kind_of

__all__ = ["MAX_CATEGORIES", "MAX_CLASSES", "Options", "Roles", "infer_roles", "safe_names"]

MAX_CATEGORIES = 50  # a text column with more distinct values is left out (an id, or free text)
MAX_CLASSES = 20  # a whole-number target with at most this many values is a class (multiclass), else a quantity
TASKS = ("binary", "multiclass", "regression")
_TARGET_NAMES = ("target", "label", "labels", "y", "class", "outcome", "response")
_TIME_NAMES = re.compile(r"(^|_)(timestamp|ts|time|date|datetime|event_time|created_at)$|_(at|time|date|ts)$", re.I)
_ID_NAMES = re.compile(r"(^|_)(id|key|uuid|no|number|code)$|[a-z0-9](Id|ID)$", re.I)


@dataclass
class Options:
    """What the user said on the command line (None: infer it)."""

    target: str | None = None
    entities: tuple[str, ...] = ()
    timestamp: str | None = None
    task: str | None = None
    row_id: bool = False  # the rows have no entity: number them (`row_id`)


@dataclass
class Roles:
    """Every column's role in the project."""

    timestamp: str
    entities: list[str]
    target: str
    task: str
    numeric: list[str]
    categorical: list[str]
    left_out: dict[str, str] = field(default_factory=dict)  # column -> why it is not a feature
    how: dict[str, str] = field(default_factory=dict)  # timestamp, entities, target, task -> how it was decided


def safe_names(columns) -> dict[str, str]:
    """{original: name} for the columns whose names are not plain identifiers (`Price (USD)` -> `price_usd`)."""
    columns = list(dict.fromkeys(map(str, columns)))
    taken, out = set(columns), {}
    for col in columns:
        if col == "_file" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", col):
            continue
        base = re.sub(r"[^0-9a-zA-Z]+", "_", col).strip("_").lower() or "column"
        base = f"c_{base}" if base[0].isdigit() else base
        name, n = base, 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        out[col] = name
    return out


def _kind(frame: pd.DataFrame, col: str) -> str:
    return kind_of(frame[col].dtype)


def _whole(values: pd.Series) -> bool:
    """True when numbers are all whole (ints, or floats without a fraction)."""
    values = values.dropna()
    return pd.api.types.is_integer_dtype(values) or bool(((values % 1) == 0).all())


def _row_number(values: pd.Series) -> bool:
    """True when whole numbers number the rows: all distinct, from 0 or 1, no gap (a CSV's index, a row id)."""
    if not pd.api.types.is_integer_dtype(values) or values.isna().any() or len(values) < 2:
        return False
    low, high = int(values.min()), int(values.max())
    return low in (0, 1) and high - low + 1 == len(values) and values.is_unique


def _unique_keys(frame: pd.DataFrame, columns: list[str]) -> bool:
    """True when `columns` hold no null and no two rows share their values."""
    part = frame[columns]
    return not part.isna().any().any() and not part.duplicated().any()


def _ask_list(names, limit: int = 10) -> str:
    names = list(names)
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return shown or "none found"


# ---------------------------------------------------------------------------------------------------------
# the timestamp, the target, the entities


def _timestamp(features: pd.DataFrame, given: str | None) -> tuple[str | None, list[str]]:
    """The timestamp column (or None) and the candidates; NewProjectError when there is none at all."""
    dates = [c for c in features.columns if c != "_file" and _kind(features, c) == "time"]
    if given:
        if given not in features.columns:
            raise NewProjectError(f"--timestamp {given!r}: not a column of the data; its columns are "
                                  f"{_ask_list([c for c in features.columns if c != '_file'], 30)}")
        if given not in dates:
            raise NewProjectError(f"--timestamp {given!r}: the column holds {features[given].dtype}, not dates or "
                                  f"times; the date columns are {_ask_list(dates)}")
        return given, dates
    if not dates:
        raise NewProjectError("no timestamp column: none of the data's columns holds dates or times ("
                              f"{_ask_list([c for c in features.columns if c != '_file'], 30)}). A project learns "
                              "from the past and is judged on the future, so every row needs the time it was "
                              "observed: add one (Parquet timestamp, or ISO dates like 2026-01-31 in CSV)")
    if len(dates) == 1:
        return dates[0], dates
    named = [c for c in dates if _TIME_NAMES.search(c)]
    return (named[0] if len(named) == 1 else None), dates


def _target(features: pd.DataFrame, labels: pd.DataFrame | None, given: str | None, timestamp: str | None):
    """The target column (or None) and the candidates."""
    frame = labels if labels is not None else features
    if given:
        if given not in frame.columns:
            where = "label files" if labels is not None else "data"
            raise NewProjectError(f"--target {given!r}: not a column of the {where}; its columns are "
                                  f"{_ask_list([c for c in frame.columns if c != '_file'], 30)}")
        return given, [given]
    if labels is not None:
        own = [c for c in labels.columns if c not in features.columns and c != "_file"
               and _kind(labels, c) != "time"]
        return (own[0] if len(own) == 1 else None), own
    others = [c for c in features.columns if c not in ("_file", timestamp) and _kind(features, c) != "time"]
    named = [c for c in others if c.lower() in _TARGET_NAMES]
    return (named[0] if len(named) == 1 else None), [*named, *[c for c in reversed(others) if c not in named]]


def _entity_candidates(features: pd.DataFrame, labels: pd.DataFrame | None, timestamp: str | None,
                       target: str | None) -> list[str]:
    """Columns that could say whom a row is about: whole numbers or text, never null; id-like names first."""
    shared = set(labels.columns) if labels is not None else set(features.columns)
    out = []
    for col in features.columns:
        if col in ("_file", timestamp, target) or col not in shared or features[col].isna().any():
            continue
        kind = _kind(features, col)
        if kind == "text" or (kind == "number" and _whole(features[col])):
            out.append(col)
    return sorted(out, key=lambda c: not _ID_NAMES.search(c))


def _entities(features: pd.DataFrame, labels: pd.DataFrame | None, given: tuple[str, ...], timestamp: str | None,
              target: str | None) -> tuple[list[str] | None, list[str]]:
    """The entity columns (or None) and the candidates."""
    candidates = _entity_candidates(features, labels, timestamp, target)
    if given:
        for col in given:
            if col not in features.columns:
                raise NewProjectError(f"--entity {col!r}: not a column of the data; candidates are "
                                      f"{_ask_list(candidates)}")
        return list(given), candidates
    if timestamp is None:
        return None, candidates
    ids = [c for c in candidates if _ID_NAMES.search(c)]
    rows = [c for c in candidates if _row_number(features[c])]  # 1..n or 0..n-1: a row id whatever its name
    if not ids and len(rows) == 1:
        ids = rows
    if labels is not None:  # the label files share the entity columns with the features (and the timestamp)
        shared = [c for c in candidates if c in labels.columns]
        if shared and _unique_keys(features, [*shared, timestamp]):
            return shared, candidates
    unique = [c for c in ids if _unique_keys(features, [c, timestamp])]
    if len(unique) == 1:
        return unique, candidates
    if not unique:
        pairs = [[a, b] for i, a in enumerate(ids) for b in ids[i + 1:] if _unique_keys(features, [a, b, timestamp])]
        if len(pairs) == 1:
            return pairs[0], candidates
    return None, candidates


def _ask(data, roles: dict, candidates: dict, options: Options) -> None:
    """NeedAnswers listing every role that is still unknown, with its candidates and an example command."""
    questions, example = [], []
    if roles["timestamp"] is None:
        questions.append(f"the timestamp (when each row was observed): --timestamp COLUMN; date columns: "
                         f"{_ask_list(candidates['timestamp'])}")
        example.append(f"--timestamp {candidates['timestamp'][0]}")
    if roles["target"] is None:
        found = candidates["target"]
        questions.append(f"the target (what the model predicts): --target COLUMN; candidates: {_ask_list(found)}")
        example.append(f"--target {found[0] if found else 'COLUMN'}")
    if roles["entities"] is None:
        found = candidates["entities"]
        questions.append("the entity (whom or what a row is about; with the timestamp it makes rows unique): "
                         f"--entity COLUMN, repeatable; candidates: {_ask_list(found)}; or --row-id if rows are "
                         "about nothing that recurs (each row gets a number)")
        example.append(f"--entity {found[0]}" if found else "--row-id")
    if questions:
        raise NeedAnswers(data, questions, example)


# ---------------------------------------------------------------------------------------------------------
# the task and the features


def infer_task(values: pd.Series, target: str, given: str | None = None) -> str:
    """binary | multiclass | regression from the target's known values; NewProjectError when none fits."""
    known = values.dropna()
    n, kind = known.nunique(), kind_of(known.dtype)
    if n == 0:
        raise NewProjectError(f"target {target!r}: no row has a value; a project needs labelled rows")
    if n == 1:
        raise NewProjectError(f"target {target!r}: every one of the {len(known):,} labelled rows holds the same "
                              f"value ({known.iloc[0]!r}): there is nothing to learn; choose another --target or "
                              "add rows with other outcomes")
    numeric = kind in ("number", "bool")
    if given:
        if given not in TASKS:
            raise NewProjectError(f"--task {given!r}: expected one of {', '.join(TASKS)}")
        if given == "binary" and n != 2:
            raise NewProjectError(f"--task binary, but target {target!r} holds {n} values; use --task "
                                  f"{'multiclass' if n <= MAX_CATEGORIES else 'regression'}")
        if given == "regression" and not numeric:
            raise NewProjectError(f"--task regression, but target {target!r} holds {known.dtype} values, not numbers")
        if given == "multiclass" and n > MAX_CATEGORIES:
            raise NewProjectError(f"--task multiclass, but target {target!r} holds {n} values (at most "
                                  f"{MAX_CATEGORIES} classes); use --task regression, or group the values")
        return given
    if n == 2:
        return "binary"
    if not numeric:
        if n > MAX_CATEGORIES:
            raise NewProjectError(f"target {target!r}: {n} distinct text values: too many classes (at most "
                                  f"{MAX_CATEGORIES}); group them, or choose another --target")
        return "multiclass"
    return "multiclass" if _whole(known) and n <= MAX_CLASSES else "regression"


def _feature_kind(values: pd.Series) -> tuple[str, str]:
    """('numeric' | 'categorical' | 'out', why it is out)."""
    known = values.dropna()
    kind = kind_of(values.dtype)
    if known.empty:
        return "out", "always empty"
    if known.nunique() == 1:
        return "out", f"one value only ({known.iloc[0]}): nothing to learn from"
    if kind in ("number", "bool"):
        return "numeric", ""
    if kind == "time":
        return "out", "a date or time other than the timestamp (derive a number from it in 01_data if it matters)"
    if kind == "text":
        if known.map(type).ne(str).any():
            return "out", f"mixed types ({', '.join(sorted({type(v).__name__ for v in known.head(1000)}))})"
        n = known.nunique()
        if n <= MAX_CATEGORIES:
            return "categorical", ""
        return "out", f"{n:,} distinct text values: an id or free text (at most {MAX_CATEGORIES} make a category)"
    return "out", f"values of type {values.dtype} are not supported"


def infer_roles(data, features: pd.DataFrame, labels: pd.DataFrame | None, options: Options) -> Roles:
    """Every column's role, or NeedAnswers / NewProjectError saying what to tell or fix."""
    timestamp, ts_candidates = _timestamp(features, options.timestamp)
    target, target_candidates = _target(features, labels, options.target, timestamp)
    if options.row_id:
        if labels is not None:
            raise NewProjectError("--row-id numbers the rows of the data, which separate label files cannot refer "
                                  "to: name the --entity the label files share with the data")
        entities, entity_candidates = ["row_id"], []
    else:
        entities, entity_candidates = _entities(features, labels, tuple(options.entities), timestamp, target)
    _ask(data, {"timestamp": timestamp, "target": target, "entities": entities},
         {"timestamp": ts_candidates, "target": target_candidates, "entities": entity_candidates}, options)
    if target in entities:
        raise NewProjectError(f"target {target!r} is also an entity: the column that says whom a row is about cannot "
                              "be what the model predicts; choose another --target or --entity")
    if target == timestamp:
        raise NewProjectError(f"target {target!r} is also the timestamp; choose another --target or --timestamp")
    if timestamp in entities:
        raise NewProjectError(f"--entity {timestamp!r} is the timestamp; the entity says whom a row is about")
    values = (labels if labels is not None else features)[target]
    task = infer_task(values, target, options.task)
    roles = Roles(timestamp=timestamp, entities=list(entities), target=target, task=task, numeric=[],
                  categorical=[])
    for col in features.columns:
        if col in ("_file", timestamp, target, *entities):
            continue
        kind, why = _feature_kind(features[col])
        if kind == "out":
            roles.left_out[col] = why
        else:
            getattr(roles, kind).append(col)
    if not roles.numeric and not roles.categorical:
        raise NewProjectError(f"no feature left: every column other than the timestamp, entities and target was left "
                              f"out ({'; '.join(f'{c}: {w}' for c, w in roles.left_out.items()) or 'there are none'})")
    roles.how = {"timestamp": "given" if options.timestamp else "inferred",
                 "entities": "given" if options.entities or options.row_id else "inferred",
                 "target": "given" if options.target else "inferred",
                 "task": "given" if options.task else f"inferred from {values.dropna().nunique():,} distinct values"}
    return roles
