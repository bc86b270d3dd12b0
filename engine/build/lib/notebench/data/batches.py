"""Landed batches read through the use-case contract: schema checks, loading either label layout, the time split.

`validate_batch` checks one batch against the contract's pandera schema and raises `BatchSchemaError` with one
readable line per column and check. `load_landing` returns the labelled rows of a landing area whichever way the
labels arrive (`separate` or `in_batches`); `label_rows` and `feature_rows` split one frame of the `in_batches`
layout. `time_split` keeps the most recent days out for evaluation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from notebench.errors import BatchSchemaError
from notebench.usecase import UseCase

__all__ = ["feature_rows", "label_rows", "load_landing", "read_batches", "read_labels", "time_split",
           "validate_batch"]


def _problem(keys: list[str], column: str, check: str, failures: pd.DataFrame) -> str:
    """One readable line for the failures of `check` on `column`."""
    cases, n = failures.failure_case.tolist(), failures["index"].nunique()
    rows = f"{n} row{'s' * (n != 1)}"
    first = failures["index"].dropna()
    at = f" (first at row {int(first.min())})" if len(first) else ""
    if check == "column_in_dataframe":
        return f"{column}: column is missing"
    if check == "column_in_schema":
        return f"{column}: unexpected column (not in the schema)"
    if check.startswith("dtype("):
        return f"{column}: expected dtype {check[7:-2]}, got {cases[0]}"
    if check == "not_nullable":
        return f"{column}: null in {rows}{at}, but the column may not be null"
    if check == "multiple_fields_uniqueness":
        return f"{', '.join(keys) or 'rows'}: duplicated in {rows}{at}"
    return f"{column}: {check} fails in {rows}{at}, e.g. {list(dict.fromkeys(map(str, cases)))[:3]}"


def _problems(keys: list[str], failures: pd.DataFrame) -> list[str]:
    """Readable problems of pandera's `failure_cases`, one per column and check."""
    check = failures.check.astype(str)
    wrong_type = set(failures.column[check.str.startswith("dtype(")])
    keep = ~failures.column.isin(wrong_type) | check.str.startswith("dtype(")
    named = check.isin(["column_in_dataframe", "column_in_schema"])  # these name the column in `failure_case`
    column = failures.column.where(~named, failures.failure_case).where(check != "multiple_fields_uniqueness", "unique")
    groups = failures.assign(column=column, check=check)[keep].groupby(["column", "check"], dropna=False, sort=False)
    return [_problem(keys, col, chk, group) for (col, chk), group in groups]


def validate_batch(df: pd.DataFrame, schema, keys=(), file=None) -> pd.DataFrame:
    """`df` unchanged if it matches the pandera `schema`; otherwise BatchSchemaError listing every problem.

    `keys` are the columns that make a row unique (named when rows are duplicated); `file` is named in the error."""
    import pandera.errors

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # raised inside pandera's error report
            return schema.validate(df, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        raise BatchSchemaError(_problems(list(keys), exc.failure_cases), exc.failure_cases, file=file) from exc


def read_batches(folder: Path) -> pd.DataFrame:
    """All parquet batches of `folder`, oldest first, as one frame."""
    paths = sorted(Path(folder).glob("*.parquet"))
    if not paths:
        raise FileNotFoundError(f"no parquet batches in {folder}")
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def label_rows(uc: UseCase, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of an `in_batches` frame whose label is known: entities, timestamp and target."""
    return frame.loc[frame[uc.target].notna(), [*uc.keys, uc.target]].reset_index(drop=True)


def feature_rows(uc: UseCase, frame: pd.DataFrame) -> pd.DataFrame:
    """A frame of landed batches without the target column (what the feature store holds)."""
    return frame.drop(columns=[uc.target], errors="ignore")


def read_labels(uc: UseCase, folder: Path) -> pd.DataFrame:
    """The label rows of a landing (or curated) folder in the contract's layout."""
    if uc.labels == "in_batches":
        return label_rows(uc, read_batches(Path(folder) / "features"))
    return read_batches(Path(folder) / "labels")


def load_landing(uc: UseCase, landing: Path) -> pd.DataFrame:
    """Feature rows joined with the labels that have arrived, in time order."""
    features = feature_rows(uc, read_batches(Path(landing) / "features"))
    labels = read_labels(uc, landing)
    joined = features.merge(labels, on=uc.keys, how="inner", validate="one_to_one")
    return joined.sort_values([uc.timestamp, *uc.entities], ignore_index=True)


def time_split(df: pd.DataFrame, timestamp: str, holdout_days: int,
               gap_days: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split `df` into (train, holdout): the holdout is its last `holdout_days` calendar days (UTC)."""
    if holdout_days < 1 or gap_days < 0:
        raise ValueError("need holdout_days >= 1 and gap_days >= 0")
    day = df[timestamp].dt.floor("D")
    start = day.max() - pd.Timedelta(days=holdout_days - 1)
    train, holdout = df[day < start - pd.Timedelta(days=gap_days)], df[day >= start]
    if train.empty:
        raise ValueError(f"no training data left before the {holdout_days}-day holdout (and {gap_days}-day gap)")
    return train.reset_index(drop=True), holdout.reset_index(drop=True)
