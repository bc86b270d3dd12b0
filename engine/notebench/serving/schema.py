"""The model's input contract, read from its MLflow signature, and the checks that turn request values into columns.

A request's values arrive as Python objects (decoded JSON), as text (CSV) or as a DataFrame (the online feature
store). Each column of the signature gets one converter that either returns a numpy array of the column's dtype or
says, per bad row, what was wrong. The rules, per MLflow column type:

| type | accepted | refused |
|---|---|---|
| `long`, `integer` | integers; integral floats (`3.0`) | fractions, strings, booleans, null/NaN, out of range |
| `double`, `float` | integers and floats; null and NaN (a missing value) | strings, booleans, infinities |
| `string` | strings; null (a missing value, as MLflow allows) | numbers, booleans, arrays, objects |
| `boolean` | `true` / `false` | anything else |

Missing and extra columns are refused by name; an empty payload is refused. Numpy does the common case (every value
of the right Python type) in one call; a slow path walks the values only to name the rows at fault.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from notebench.errors import InvalidInputError, ModelLoadError

__all__ = ["Batch", "Column", "InputSchema"]

_INT_KINDS = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}
_KIND = {"long": "int", "integer": "int", "double": "float", "float": "float", "string": "str", "boolean": "bool"}
_SHOWN_ROWS = 3  # bad rows named per column
_COPIED_ROWS = 64  # up to this many rows, `Batch.frame` consolidates the columns


@dataclass(frozen=True)
class Column:
    """One input column of the signature: its name, MLflow type, and whether a missing value is allowed."""

    name: str
    type: str  # MLflow's type name: long, integer, double, float, string, boolean
    nullable: bool  # whether null (and NaN) may stand for a missing value

    @property
    def kind(self) -> str:
        return _KIND[self.type]


@dataclass
class Batch:
    """Validated model input: one numpy array per signature column (in signature order), all of `rows` length."""

    columns: dict[str, np.ndarray]
    rows: int

    def frame(self):
        """The batch as the DataFrame the model takes. A few rows are copied into one block per dtype (`to_numpy()`
        and column selection inside the model are cheaper on two blocks than on fourteen); more are not copied (the
        copy costs more than the blocks save: 0.25 ms of 0.4 ms on 1,000 rows)."""
        import pandas as pd

        return pd.DataFrame(self.columns, copy=self.rows <= _COPIED_ROWS)

    @classmethod
    def concat(cls, batches: Sequence[Batch]) -> Batch:
        """One batch holding the rows of `batches` in order (they share a schema)."""
        if len(batches) == 1:
            return batches[0]
        names = batches[0].columns
        return cls({n: np.concatenate([b.columns[n] for b in batches]) for n in names}, sum(b.rows for b in batches))


class InputSchema:
    """The columns a model takes, and the conversion of request values into a `Batch` (or `InvalidInputError`)."""

    def __init__(self, columns: Iterable[Column]):
        self.columns = list(columns)  # in the model's order
        self.names = [c.name for c in self.columns]
        self.by_name = {c.name: c for c in self.columns}

    @classmethod
    def from_signature(cls, schema) -> InputSchema:
        """The schema of an MLflow input `Schema` with named columns; `ModelLoadError` for anything else."""
        if schema is None:
            raise ModelLoadError("the model has no input signature, so requests cannot be checked against it: log "
                                 "it with a signature (infer_signature on the training frame)")
        if not schema.has_input_names() or schema.is_tensor_spec():
            raise ModelLoadError("the model's signature is not column-based (tensor or unnamed inputs); Notebench "
                                 "serves tabular models whose signature names each column")
        columns = []
        for spec in schema.inputs:
            type_name = getattr(spec.type, "name", str(spec.type))
            if type_name not in _KIND:
                raise ModelLoadError(f"input column '{spec.name}' has type {type_name}; Notebench serves columns of "
                                     f"types {', '.join(_KIND)}")
            columns.append(Column(spec.name, type_name, nullable=_KIND[type_name] in ("float", "str")))
        return cls(columns)

    def describe(self) -> list[dict]:
        """The columns as JSON-able dicts (for `/model`)."""
        return [{"name": c.name, "type": c.type, "nullable": c.nullable} for c in self.columns]

    # ---------------------------------------------------------------------------------------------------------
    # the shapes a request's data comes in

    def from_columns(self, data: Mapping[str, object]) -> Batch:
        """`{column: [values...]}` (or `{column: value}` for one row)."""
        self.check_names(data.keys())
        values = {n: data[n] for n in self.names}
        if all(not isinstance(v, list | tuple | np.ndarray) for v in values.values()):
            values = {n: [v] for n, v in values.items()}  # one row given as scalars
        lengths = {n: len(v) if isinstance(v, list | tuple | np.ndarray) else None for n, v in values.items()}
        if None in lengths.values():
            bad = [n for n, length in lengths.items() if length is None]
            raise InvalidInputError(f"columns {bad} hold a single value while others hold lists: give every "
                                    "column a list of the same length")
        if len(set(lengths.values())) > 1:
            raise InvalidInputError(f"columns have different lengths: {lengths}")
        return self._convert(values, next(iter(lengths.values())))

    def from_records(self, records: Sequence[Mapping]) -> Batch:
        """`[{column: value, ...}, ...]`; a key absent from some records is a missing value there."""
        if not records:
            raise InvalidInputError("empty payload: no rows to predict")
        bad = [i for i, r in enumerate(records) if not isinstance(r, Mapping)]
        if bad:
            raise InvalidInputError(f"records must be JSON objects; rows {bad[:_SHOWN_ROWS]} are not")
        keys = set().union(*(r.keys() for r in records))
        self.check_names(keys, partial=True)
        if len(self.names) > 1:
            try:  # every record holds every column: transpose in C
                columns = zip(*map(operator.itemgetter(*self.names), records), strict=True)
                return self._convert(dict(zip(self.names, columns, strict=True)), len(records))
            except KeyError:
                pass
        return self._convert({n: [r.get(n) for r in records] for n in self.names}, len(records))

    def from_rows(self, rows: Sequence[Sequence], names: Sequence[str] | None = None) -> Batch:
        """`[[value, ...], ...]` with the columns `names` (default: the signature's order)."""
        names = list(self.names if names is None else names)
        self.check_names(names)
        if not rows:
            raise InvalidInputError("empty payload: no rows to predict")
        if len(set(names)) != len(names):
            raise InvalidInputError(f"duplicate column names: {sorted({n for n in names if names.count(n) > 1})}")
        width = len(names)
        if not (set(map(type, rows)) <= {list, tuple} and set(map(len, rows)) == {width}):
            bad = [i for i, row in enumerate(rows) if not isinstance(row, list | tuple) or len(row) != width]
            raise InvalidInputError(f"rows {bad[:_SHOWN_ROWS] or 'all'} do not hold {width} values (one per column "
                                    f"{names})" + (" each" if len(bad) != 1 else ""))
        by_name = dict(zip(names, zip(*rows, strict=True), strict=True))  # transposed in C
        return self._convert({n: by_name[n] for n in self.names}, len(rows))

    def from_text(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Batch:
        """CSV cells (text) under `header`; an empty cell is a missing value."""
        names = [h.strip() for h in header]
        self.check_names(names)
        bad = [i for i, row in enumerate(rows) if len(row) != len(names)]
        if bad:
            raise InvalidInputError(f"CSV rows {bad[:_SHOWN_ROWS]} do not have {len(names)} cells like the header")
        position = {n: i for i, n in enumerate(names)}
        values = {n: [_from_text(row[position[n]], self.by_name[n]) for row in rows] for n in self.names}
        return self._convert(values, len(rows))

    def from_frame(self, frame) -> Batch:
        """A pandas DataFrame (e.g. from the online feature store)."""
        self.check_names(list(frame.columns))
        return self._convert({n: frame[n].to_numpy() for n in self.names}, len(frame))

    # ---------------------------------------------------------------------------------------------------------

    def check_names(self, names: Iterable, partial: bool = False) -> None:
        """Refuse non-text, missing and extra column names, naming them."""
        names = list(names)
        odd = [n for n in names if not isinstance(n, str)]
        if odd:
            raise InvalidInputError(f"column names must be strings, got {odd[:_SHOWN_ROWS]}")
        given = set(names)
        missing = [n for n in self.names if n not in given]
        extra = [n for n in names if n not in self.by_name]
        problems = []
        if missing and not (partial and not given):
            problems.append(f"missing columns {missing}")
        if partial and not given:
            problems.append(f"no columns given; the model takes {self.names}")
        if extra:
            problems.append(f"unexpected columns {extra} (the model takes {self.names})")
        if problems:
            raise InvalidInputError(problems)

    def _convert(self, values: dict[str, Sequence], rows: int) -> Batch:
        """Each column's values as an array of its dtype; every column's problems at once."""
        if rows == 0:
            raise InvalidInputError("empty payload: no rows to predict")
        columns, problems = {}, []
        for col in self.columns:
            try:
                columns[col.name] = _CONVERTERS[col.kind](col, values[col.name])
            except _ColumnProblem as exc:
                problems.append(f"column '{col.name}' ({col.type}): {exc}")
        if problems:
            raise InvalidInputError(problems)
        return Batch(columns, rows)


class _ColumnProblem(Exception):
    """What is wrong with one column's values (caught and named by `InputSchema._convert`)."""


def _describe(value) -> str:
    """A short, readable name of a JSON value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return f"boolean {str(bool(value)).lower()}"
    if isinstance(value, str):
        return f"string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, float | np.floating) and math.isnan(value):
        return "NaN"
    if isinstance(value, int | float | np.number):
        return f"number {value!r}"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _bad_rows(expected: str, values: Sequence, bad) -> _ColumnProblem:
    """A problem naming the first few bad rows and their values."""
    shown = ", ".join(f"{_describe(values[i])} at row {i}" for i in bad[:_SHOWN_ROWS])
    more = f" (and {len(bad) - _SHOWN_ROWS} more rows)" if len(bad) > _SHOWN_ROWS else ""
    return _ColumnProblem(f"expected {expected}; got {shown}{more}")


def _is_number(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


_NONE = type(None)


def _types(values: Sequence) -> set | None:
    """The Python types of `values` (one C-speed pass), or None for a numpy array (its dtype says)."""
    return None if isinstance(values, np.ndarray) else set(map(type, values))


# The fast paths take values whose types are known good in one numpy call; anything else (booleans, text, numpy
# scalars in a list) walks the slow path, which accepts what is right and names the rows at fault. A boolean is
# never a number here: type(True) is bool, not int (numpy alone would read True as 1).

def _floats(col: Column, values: Sequence) -> np.ndarray:
    types = _types(values)
    if types is not None and types <= {float, int, _NONE}:  # numbers and nulls (the nulls become NaN)
        out = np.array(values, dtype=np.float64)
    elif types is None and values.dtype.kind in "iuf":
        out = values.astype(np.float64, copy=False)
    else:
        bad = [i for i, v in enumerate(values) if not (v is None or _is_number(v))]
        if bad:
            raise _bad_rows("a number" + (" or null" if col.nullable else ""), values, bad)
        out = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if not np.isfinite(out).all():
        bad = np.flatnonzero(np.isinf(out)).tolist()
        if bad:
            raise _bad_rows("a finite number", values, bad)
        if not col.nullable:
            raise _bad_rows("a number (not null or NaN)", values, np.flatnonzero(np.isnan(out)).tolist())
    return out


def _ints(col: Column, values: Sequence) -> np.ndarray:
    low, high = _INT_KINDS[col.type]
    types, arr = _types(values), None
    if types is None:
        arr = values
    elif types == {int}:
        with contextlib.suppress(OverflowError):  # beyond 64 bits: the slow path names them
            arr = np.asarray(values)  # (faster than asking for int64; 2**63 and up come out unsigned or objects)
    elif types <= {int, float}:  # integral floats (3.0) are integers too
        arr = np.array(values, dtype=np.float64)
    kind = arr.dtype.kind if arr is not None else "O"
    if kind == "i":
        out = arr.astype(np.int64, copy=False)
    elif kind == "f":  # strictly above -2**63: a decoder may round an integer just below it to that float
        whole = np.isfinite(arr) & (arr == np.floor(arr)) & (arr > -(2.0**63)) & (arr < 2.0**63)
        if not whole.all():
            raise _bad_rows("an integer (not null, NaN or a fraction)", values, np.flatnonzero(~whole).tolist())
        out = arr.astype(np.int64)
    else:
        def ok(v) -> bool:
            return _is_number(v) and math.isfinite(v) and float(v).is_integer() and low <= int(v) <= high

        bad = [i for i, v in enumerate(values) if not ok(v)]
        if bad:
            bounds = "" if col.type == "long" else f" in [{low}, {high}]"
            raise _bad_rows(f"an integer{bounds} (not null, NaN or a fraction)", values, bad)
        out = np.array([int(v) for v in values], dtype=np.int64)
    if col.type != "long" and len(out) and (out.min() < low or out.max() > high):
        raise _bad_rows(f"an integer in [{low}, {high}]", values,
                        np.flatnonzero((out < low) | (out > high)).tolist())
    return out


def _strings(col: Column, values: Sequence) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        out[:] = values.tolist()
        return out
    types = set(map(type, values))
    if not (types == {str} or (col.nullable and types == {str, _NONE})):
        def ok(v) -> bool:
            return isinstance(v, str) or (col.nullable and (v is None or (isinstance(v, float) and math.isnan(v))))

        bad = [i for i, v in enumerate(values) if not ok(v)]
        if bad:
            raise _bad_rows("a string" + (" or null" if col.nullable else ""), values, bad)
        values = [None if not isinstance(v, str) else str(v) for v in values]
    out[:] = values
    return out


def _bools(col: Column, values: Sequence) -> np.ndarray:
    bad = [i for i, v in enumerate(values) if not isinstance(v, bool | np.bool_)]
    if bad:
        raise _bad_rows("a boolean (true or false)", values, bad)
    return np.array(values, dtype=bool)


_CONVERTERS = {"float": _floats, "int": _ints, "str": _strings, "bool": _bools}

_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def _from_text(cell: str, col: Column):
    """A CSV cell as the Python value its column expects (left as text when it cannot be, to be named later)."""
    text = cell.strip()
    if text == "":
        return None
    try:
        if col.kind == "int":
            return int(text) if text.lstrip("+-").isdigit() else float(text)
        if col.kind == "float":
            return float(text)
    except ValueError:
        return cell
    if col.kind == "bool":
        low = text.lower()
        return True if low in _TRUE else False if low in _FALSE else cell
    return cell
