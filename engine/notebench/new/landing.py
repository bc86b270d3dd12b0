"""The user's rows made into landed batches: normalized, cut into batches by time, split into training and replay.

What the engine expects of a landed batch (see `notebench.usecase`): UTC timestamps in microseconds, one row per
entity and timestamp, a file per batch named by the day it starts. Rows are cut into days when the data spans up to
`MAX_BATCHES` days, else into weeks, months, quarters or years, whichever first gives at most that many batches. The
earlier batches (about three quarters) are what the first model trains on; the later ones are kept for `make demo`
to replay as traffic, with their labels as feedback. A binary target becomes 0/1 (the rarer value, or `True`/1, is
the positive class).

The training batches fix two settings: `[training] holdout_days`, the largest holdout of at most a fifth of the
training days whose fit, validation and holdout slices each hold enough rows of each class (as `notebench check`
judges them), and the monitoring window, a fifth of the replayed rows. The sample (`data/sample/`) is a slice of
every training batch, stratified by class, just large enough for the same split: the lessons and the smoke run use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from notebench.new.errors import NewProjectError
from notebench.new.infer import Roles

__all__ = ["MAX_BATCHES", "Landing", "land", "write_batches"]

MAX_BATCHES = 120  # at most this many batches: days, else weeks, months, quarters or years
PERIODS = (("D", "day"), ("W", "week"), ("M", "month"), ("Q", "quarter"), ("Y", "year"))
SAMPLE_ROWS = 3000  # about this many rows in data/sample (more when a class is rare)
REPLAY_SHARE = 0.25  # the later share of batches kept for the demo's replay


@dataclass
class Landing:
    """The user's rows as the engine will see them, and how they are cut."""

    features: pd.DataFrame  # keys, features (and the target when labels are in the batches), in time order
    labels: pd.DataFrame | None  # keys and target (separate labels), or None
    layout: str  # separate | in_batches
    batch: pd.Series  # each feature row's batch name (YYYY-MM-DD), aligned with `features`
    period: str  # day | week | month | quarter | year
    names: list[str]  # batch names, oldest first
    n_train: int  # the first n_train batches are the training data; the rest are replayed by the demo
    holdout_days: int
    window: int  # [monitoring] window
    min_labels: int  # [monitoring] min_labels
    codes: dict | None = None  # binary: {the user's value: 0 or 1}
    sample: pd.Index | None = None  # rows of `features` in the sample
    notes: list[str] = field(default_factory=list)

    @property
    def replay(self) -> list[str]:
        return self.names[self.n_train:]


# ---------------------------------------------------------------------------------------------------------
# normalizing


def _utc(values: pd.Series) -> pd.Series:
    """Times as UTC microseconds (naive times are taken as UTC)."""
    out = pd.to_datetime(values, utc=True)
    return out.dt.as_unit("us")


def _key_columns(frame: pd.DataFrame, roles: Roles, source) -> pd.DataFrame:
    """The timestamp as UTC and the entities as int64 or text; rows without them dropped (and counted)."""
    frame = frame.copy()
    frame[roles.timestamp] = _utc(frame[roles.timestamp])
    missing = frame[[roles.timestamp, *[e for e in roles.entities if e in frame]]].isna().any(axis=1)
    if missing.any():
        source.notes.append(f"{int(missing.sum()):,} row(s) without a timestamp or entity were dropped")
        frame = frame[~missing]
    for col in roles.entities:
        if col in frame and pd.api.types.is_numeric_dtype(frame[col]):
            frame[col] = frame[col].astype("int64")
        elif col in frame:
            frame[col] = frame[col].astype(str).astype(object)
    return frame


def _features(frame: pd.DataFrame, roles: Roles) -> pd.DataFrame:
    """Numeric features as int64 or float64 (booleans 0/1), categorical ones as text with None for missing."""
    out = {}
    for col in roles.numeric:
        values = frame[col]
        if pd.api.types.is_bool_dtype(values) or values.dtype == object:
            values = values.map(lambda v: v if v is None or v != v else float(v)).astype("float64")
        if pd.api.types.is_integer_dtype(values) and not values.isna().any():
            out[col] = values.astype("int64")
        else:
            out[col] = values.astype("float64")
    for col in roles.categorical:
        out[col] = frame[col].map(lambda v: None if v is None or v != v else str(v)).astype(object)
    return pd.DataFrame(out, index=frame.index)


def _binary_codes(values: pd.Series) -> dict:
    """{value: 0 or 1}: 1 for True, 1 or 'yes'-like values, else for the rarer value."""
    known = values.dropna()
    counts = known.value_counts()
    pair = sorted(counts.index.tolist(), key=str)
    truthy = [v for v in pair if v is True or (isinstance(v, int | float) and v == 1)
              or str(v).strip().lower() in ("1", "true", "yes", "y", "positive", "pos")]
    positive = truthy[0] if len(truthy) == 1 else min(pair, key=lambda v: (counts[v], -pair.index(v)))
    return {v: int(v == positive) for v in pair}


def _target(values: pd.Series, task: str, codes: dict | None) -> pd.Series:
    """The target as landed: 0/1 for binary, float for regression, text or int for multiclass; missing stays missing."""
    if task == "binary":
        return values.map(lambda v: codes.get(v) if v is not None and v == v else None).astype("float64")
    if task == "regression":
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        known = values.dropna()
        return values.astype("float64") if values.isna().any() else known.astype("int64").reindex(values.index)
    return values.map(lambda v: None if v is None or v != v else str(v)).astype(object)


def _duplicates(frame: pd.DataFrame, keys: list[str], what: str) -> None:
    dup = frame.duplicated(keys, keep=False)
    if dup.any():
        first = frame.loc[dup, keys].iloc[0].to_dict()
        raise NewProjectError(f"{what}: {int(dup.sum()):,} rows share their {', '.join(keys)} with another row, e.g. "
                              f"{first}; a row must be unique by entity and time: name more --entity columns, or "
                              "drop the duplicates")


def _labels(labels: pd.DataFrame, features: pd.DataFrame, roles: Roles, source) -> pd.DataFrame:
    """Separate label rows as keys and target, each matched with a feature row."""
    if roles.timestamp not in labels.columns:
        if features.duplicated(roles.entities).any():
            raise NewProjectError(f"the label files have no {roles.timestamp!r} column, and an entity has several "
                                  "feature rows, so a label cannot be matched with one: add the timestamp of the row "
                                  "each label is about to the label files")
        labels = labels.merge(features[[*roles.entities, roles.timestamp]], on=roles.entities, how="inner")
    labels = _key_columns(labels, roles, source)
    labels = labels.loc[labels[roles.target].notna(), [*roles.entities, roles.timestamp, roles.target]]
    _duplicates(labels, [*roles.entities, roles.timestamp], "the label files")
    keys = [*roles.entities, roles.timestamp]
    matched = labels.merge(features[keys], on=keys, how="inner")
    if len(matched) < len(labels):
        source.notes.append(f"{len(labels) - len(matched):,} label row(s) match no feature row and were dropped")
    if matched.empty:
        raise NewProjectError(f"no label row matches a feature row on {', '.join(keys)}: the label files must name the "
                              "entity and the timestamp of the row each label is about")
    return matched


# ---------------------------------------------------------------------------------------------------------
# batches and splits


def _periods(times: pd.Series) -> tuple[pd.Series, str]:
    """Each row's batch name (the start day of its period) and the period's name."""
    naive = times.dt.tz_convert(None)
    for code, name in PERIODS:
        start = naive.dt.floor("D") if code == "D" else naive.dt.to_period(code).dt.start_time
        if start.nunique() <= MAX_BATCHES or code == "Y":
            return start.dt.strftime("%Y-%m-%d"), name
    raise AssertionError("unreachable")


def _split_problems(task: str, rows: pd.DataFrame, roles: Roles, holdout_days: int) -> list[str]:
    """`notebench check`'s judgement of the fit / validation / holdout split of `rows`."""
    from notebench.check import split_problems

    uc = SimpleNamespace(task=task, timestamp=roles.timestamp, target=roles.target)
    return split_problems(uc, rows, holdout_days, holdout_days)


def _holdout_days(rows: pd.DataFrame, roles: Roles, names: list[str]) -> int:
    """The largest holdout (at most a fifth of the training batches) whose split `notebench check` accepts."""
    last = rows[roles.timestamp].max().floor("D").tz_convert(None)
    problems = []
    for batches in range(max(1, round(len(names) / 5)), 0, -1):
        days = (last - pd.Timestamp(names[-batches])).days + 1
        problems = _split_problems(roles.task, rows, roles, days)
        if not problems:
            return days
    raise NewProjectError("the training data cannot be split by time into fit, validation and holdout slices with "
                          f"enough labelled rows each: {problems[0]}. Bring more days of data, or more rows of the "
                          "rarer classes")


def _stratified(rows: pd.DataFrame, by: list, frac: float, seed: int, floor: int) -> pd.Index:
    """About `frac` of the rows of each group of `by`, at least `floor` (or all) of each."""
    rng = np.random.default_rng(seed)
    picked = []
    for _, group in rows.groupby(by, sort=True, dropna=False):
        n = min(len(group), max(floor, math.ceil(len(group) * frac)))
        picked.append(group.index[rng.choice(len(group), n, replace=False)])
    return pd.Index(np.sort(np.concatenate(picked))) if picked else pd.Index([])


def _sample(land: Landing, rows: pd.DataFrame, roles: Roles) -> pd.Index:
    """Rows of the training batches for data/sample: stratified by batch and class, enough for the split."""
    train = rows[rows["_batch"].isin(land.names[:land.n_train])]
    by = ["_batch", roles.target] if roles.task != "regression" else ["_batch"]
    frac = min(1.0, SAMPLE_ROWS / max(len(train), 1))
    while True:
        index = _stratified(train, by, frac, seed=7, floor=4)
        if frac >= 1 or not _split_problems(roles.task, train.loc[index], roles, land.holdout_days):
            return pd.Index(train.loc[index, "_row"])
        frac = min(1.0, frac * 2)


def land(features: pd.DataFrame, labels: pd.DataFrame | None, roles: Roles) -> Landing:
    """The user's rows normalized and cut into batches, with the settings their training batches call for."""
    notes = SimpleNamespace(notes=[])
    layout = "separate" if labels is not None else "in_batches"
    frame = features.drop(columns=["_file"], errors="ignore")
    if roles.entities == ["row_id"] and "row_id" not in frame:
        frame = frame.sort_values(roles.timestamp, kind="stable").reset_index(drop=True)
        frame.insert(0, "row_id", np.arange(len(frame), dtype="int64"))
    frame = _key_columns(frame, roles, notes)
    keys = [*roles.entities, roles.timestamp]
    _duplicates(frame, keys, "the data")
    source = labels.drop(columns=["_file"], errors="ignore") if labels is not None else frame
    codes = _binary_codes(source[roles.target]) if roles.task == "binary" else None
    out = pd.concat([frame[keys], _features(frame, roles)], axis=1)
    if labels is not None:
        label_rows = _labels(source, frame, roles, notes)
        label_rows[roles.target] = _target(label_rows[roles.target], roles.task, codes)
        if roles.task == "binary":
            label_rows[roles.target] = label_rows[roles.target].astype("int64")
    else:
        out[roles.target] = _target(frame[roles.target], roles.task, codes)
        label_rows = None
    out = out.sort_values([roles.timestamp, *roles.entities], kind="stable", ignore_index=True)
    batch, period = _periods(out[roles.timestamp])
    names = sorted(batch.unique())
    if len(names) < 4:
        span = f"{out[roles.timestamp].min().date()} to {out[roles.timestamp].max().date()}"
        raise NewProjectError(f"the data spans {len(names)} {period}(s) ({span}): a project needs at least 4 days of "
                              "data (fit, validation and holdout days for training, and a later day for the demo "
                              "to replay); bring more days of data")
    n_train = len(names) - max(1, round(len(names) * REPLAY_SHARE))
    if label_rows is None:
        labelled = out.assign(_batch=batch, _row=out.index)
        labelled = labelled[labelled[roles.target].notna()]
    else:
        labelled = out[keys].assign(_batch=batch, _row=out.index).merge(label_rows, on=keys, how="inner")
    holdout_days = _holdout_days(labelled[labelled["_batch"].isin(names[:n_train])], roles, names[:n_train])
    replayed = int(batch.isin(names[n_train:]).sum())
    window = int(min(1000, max(50, replayed // 5)))
    result = Landing(features=out, labels=label_rows, layout=layout, batch=batch, period=period, names=names,
                     n_train=n_train, holdout_days=holdout_days, window=window, min_labels=max(10, window // 10),
                     codes=codes, notes=notes.notes)
    result.sample = _sample(result, labelled, roles)
    return result


# ---------------------------------------------------------------------------------------------------------
# writing


def _write_groups(frame: pd.DataFrame, names, folder: Path) -> int:
    """Each batch of `frame` (its rows grouped by `names`) as folder/<name>.parquet, through one Arrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    codes, uniques = pd.factorize(np.asarray(names), sort=True)
    order = np.argsort(codes, kind="stable")
    edges = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    for i, name in enumerate(uniques):
        pq.write_table(table.take(order[edges[i]:edges[i + 1]]), folder / f"{name}.parquet")
    return len(uniques)


def write_batches(land: Landing, roles: Roles, folder: Path, rows: pd.Index | None = None) -> int:
    """Write the batches (`rows` of them: a sample) under folder/features (and folder/labels); return the files."""
    features = land.features if rows is None else land.features.loc[rows]
    batch = land.batch.loc[features.index]
    written = _write_groups(features, batch, folder / "features")
    if land.labels is not None:
        keys = [*roles.entities, roles.timestamp]
        labels = land.labels.merge(features[keys].assign(_batch=batch.to_numpy()), on=keys, how="inner")
        labels = labels.sort_values([roles.timestamp, *roles.entities], kind="stable")
        missing = sorted(set(batch) - set(labels["_batch"]))  # a batch whose labels have not arrived: an empty file
        empty = land.labels.iloc[:0]
        written += _write_groups(labels.drop(columns="_batch"), labels["_batch"], folder / "labels")
        for name in missing:
            empty.to_parquet(folder / "labels" / f"{name}.parquet", index=False)
            written += 1
    return written
