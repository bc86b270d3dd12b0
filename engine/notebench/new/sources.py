"""The user's files: where they are, reading them, and checking that they agree with each other.

`--data PATH` is a Parquet or CSV file, or a folder of them. Labels come one of two ways:

- in the same batches: the target is a column of the data files (`--labels same-batch`);
- separately: label files (entity columns, the timestamp and the target) in a `labels/` subfolder of the data
  folder, or at `--label-data PATH` (`--labels separate`). A data folder with a `labels/` subfolder keeps its feature
  files at its top or in a `features/` subfolder.

Every file of one kind must have the same columns with compatible types; the first file that does not is named with
the file it disagrees with and the column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from notebench.new.errors import NewProjectError

__all__ = ["SUFFIXES", "Files", "find_files", "kind_of", "read_all"]

SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz", ".tsv")
_DATE_TEXT = re.compile(r"^\s*(\d{4}[-/]\d{1,2}[-/]\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?"
                        r"|\d{1,2}/\d{1,2}/\d{4}( \d{1,2}:\d{2}(:\d{2})?)?)\s*$")
_OFFSET = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})\s*$")


@dataclass
class Files:
    """The data files found for a project: feature files, label files (maybe none), and how labels arrive."""

    data: Path  # what --data named
    features: list[Path]
    labels: list[Path] = field(default_factory=list)

    @property
    def separate(self) -> bool:
        return bool(self.labels)


def _is_data_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith((".", "_")) and path.name.lower().endswith(SUFFIXES)


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_data_file(p))


def _listed(path: Path, what: str) -> list[Path]:
    """The data files at `path` (a file or a folder's top level), or NewProjectError saying what was there."""
    if not path.exists():
        raise NewProjectError(f"{what} {path}: no such file or folder")
    if path.is_file():
        if not _is_data_file(path):
            raise NewProjectError(f"{what} {path}: not a Parquet or CSV file (expected {', '.join(SUFFIXES)})")
        return [path]
    found = _files_in(path)
    if not found:
        raise NewProjectError(f"{what} {path}: no Parquet or CSV files in this folder (expected {', '.join(SUFFIXES)})")
    return found


def find_files(data: Path, labels: str | None = None, label_data: Path | None = None) -> Files:
    """The feature and label files of `data`, following `labels` (same-batch | separate | None: as found)."""
    data = Path(data).expanduser().resolve()
    sub = data / "labels" if data.is_dir() else None
    if label_data is None and sub is not None and sub.is_dir() and labels != "same-batch":
        label_data = sub
    if labels == "same-batch" and label_data is not None:
        raise NewProjectError(f"--labels same-batch, but labels are given separately ({label_data}): drop --labels "
                              "same-batch to use them, or --label-data to keep the labels in the data files")
    if labels == "separate" and label_data is None:
        raise NewProjectError(f"--labels separate: put the label files in {data / 'labels'}/ or pass --label-data "
                              "PATH (a file or folder of label rows: entity columns, timestamp, target)")
    features_at = data / "features" if label_data is not None and (data / "features").is_dir() else data
    features = _listed(features_at, "--data")
    found = _listed(Path(label_data).expanduser().resolve(), "--label-data") if label_data is not None else []
    return Files(data=data, features=features, labels=found)


def kind_of(dtype) -> str:
    """A column's kind for comparing files: number, text, time, bool or other."""
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_numeric_dtype(dtype):
        return "number"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "time"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype) or isinstance(
            dtype, pd.CategoricalDtype):
        return "text"
    return "other"


def _day_first(values: pd.Series) -> bool:
    """For `a/b/yyyy` dates: True when some `a` is above 12 (31/01/2026), else month first (01/31/2026)."""
    parts = values.str.extract(r"^\s*(\d{1,2})/(\d{1,2})/\d{4}").dropna().astype(int)
    return bool(len(parts)) and bool((parts[0] > 12).any())


def _parse_dates(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns that hold dates (ISO `2026-01-31[ 08:00[+02:00]]`, `2026/01/31`, `31/01/2026`, `01/31/2026`) as
    datetimes (UTC when they carry an offset); other columns unchanged."""
    for col in frame.columns:
        values = frame[col]
        if kind_of(values.dtype) != "text":
            continue
        probe = values.dropna().astype(str).head(500)
        if not len(probe) or not probe.str.match(_DATE_TEXT).all():
            continue
        known = values.dropna().astype(str)
        parsed = pd.to_datetime(values.where(values.notna(), None), errors="coerce", format="mixed",
                                dayfirst=_day_first(known), utc=bool(known.str.contains(_OFFSET).any()))
        if parsed.notna().sum() == values.notna().sum():
            frame[col] = parsed
    return frame


def read_file(path: Path) -> pd.DataFrame:
    """One Parquet or CSV file as a frame (CSV: dates parsed), or NewProjectError naming it."""
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            frame = _parse_dates(pd.read_parquet(path))
        else:
            frame = _parse_dates(pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",", low_memory=False))
    except Exception as exc:  # the file's own reader says why: pyarrow, the CSV parser
        raise NewProjectError(f"{path}: cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if isinstance(frame.index, pd.MultiIndex) or frame.index.name is not None:
        frame = frame.reset_index()
    if frame.columns.duplicated().any():
        raise NewProjectError(f"{path}: column {frame.columns[frame.columns.duplicated()][0]!r} appears twice")
    return frame


def _agree(first: tuple[Path, pd.DataFrame], other: tuple[Path, pd.DataFrame]) -> None:
    """NewProjectError naming both files and the column when their columns or kinds differ."""
    (a, fa), (b, fb) = first, other
    for col in fa.columns:
        if col not in fb.columns:
            raise NewProjectError(f"the files disagree: {a} has a column {col!r} that {b} lacks; every file of the "
                                  "data must have the same columns (fix or move the odd file)")
    for col in fb.columns:
        if col not in fa.columns:
            raise NewProjectError(f"the files disagree: {b} has a column {col!r} that {a} lacks; every file of the "
                                  "data must have the same columns (fix or move the odd file)")
    for col in fa.columns:
        ka, kb = kind_of(fa[col].dtype), kind_of(fb[col].dtype)
        if ka != kb and not (fa[col].isna().all() or fb[col].isna().all()) and {ka, kb} != {"bool", "number"}:
            raise NewProjectError(f"the files disagree on column {col!r}: {a} holds {ka} ({fa[col].dtype}), {b} holds "
                                  f"{kb} ({fb[col].dtype}); make the column the same type in every file")


def read_all(paths: list[Path]) -> pd.DataFrame:
    """Every file of one kind, checked to agree with the first, as one frame (with `_file`: where a row came from)."""
    frames = [(p, read_file(p)) for p in paths]
    for other in frames[1:]:
        _agree(frames[0], other)
    columns = list(frames[0][1].columns)
    parts = [f[columns].assign(_file=str(p)) for p, f in frames if len(f)]
    if not parts:
        raise NewProjectError(f"{paths[0] if len(paths) == 1 else paths[0].parent}: the files hold no rows")
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
