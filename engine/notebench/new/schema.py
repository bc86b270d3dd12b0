"""The pandera schema of a landed batch, inferred from the rows and written as Python the user edits.

Each column gets its dtype as landed; numbers a range that is the observed one widened by half its width on each side
(never below 0 for a column that never was negative): the schema refuses the impossible, and drift detection, not
the schema, flags the unusual. A column with a missing value is nullable; a categorical one accepts the values seen.
"""

from __future__ import annotations

import math

import pandas as pd

from notebench.new.infer import Roles

__all__ = ["categories", "column_specs", "number", "schema_code"]


def number(value: float, whole: bool) -> str:
    """A bound as short source text: an int, or a float with at most 4 significant digits."""
    if whole:
        return str(int(value))
    text = f"{value:.4g}"
    return text if ("e" in text or "." in text) else f"{text}.0"


def _outward(value: float, down: bool, whole: bool) -> float:
    """`value` rounded away from the data to 3 significant digits (or a whole number)."""
    if whole:
        return math.floor(value) if down else math.ceil(value)
    if value == 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(abs(value))) - 2)
    return (math.floor if down else math.ceil)(value / scale) * scale


def bounds(values: pd.Series) -> tuple[float, float, bool]:
    """(low, high, whole): the observed range widened by half its width each side, kept >= 0 if it was."""
    known = values.dropna()
    low, high = float(known.min()), float(known.max())
    whole = pd.api.types.is_integer_dtype(values)
    margin = (high - low) / 2 or abs(high) / 2 or 1.0
    wide_low, wide_high = low - margin, high + margin
    if low >= 0:
        wide_low = max(wide_low, 0.0)
    if high <= 0:
        wide_high = min(wide_high, 0.0)
    return _outward(wide_low, True, whole), _outward(wide_high, False, whole), whole


def categories(values: pd.Series) -> list[str]:
    """The distinct known values of a text column, sorted."""
    return sorted({str(v) for v in values.dropna()})


def _dtype(values: pd.Series) -> str:
    return '"int64"' if pd.api.types.is_integer_dtype(values) else '"float64"'


def _nullable(values: pd.Series) -> str:
    return ", nullable=True" if values.isna().any() else ""


def _numeric(values: pd.Series) -> str:
    low, high, whole = bounds(values)
    check = f"pa.Check.in_range({number(low, whole)}, {number(high, whole)})"
    return f"pa.Column({_dtype(values)}, {check}{_nullable(values)})"


def _target(values: pd.Series, task: str) -> str:
    """The target column of an in-batch layout: always nullable (a label may not be known yet)."""
    if task == "binary":
        return 'pa.Column("float64", pa.Check.isin([0.0, 1.0]), nullable=True)'
    if task == "regression":
        low, high, _ = bounds(values.astype("float64"))
        return f'pa.Column("float64", pa.Check.in_range({number(low, False)}, {number(high, False)}), nullable=True)'
    if pd.api.types.is_numeric_dtype(values):  # whole-number classes: int64, or float64 when some are missing
        return f"pa.Column({_dtype(values)}, pa.Check.isin(CLASSES), nullable=True)"
    return "pa.Column(str, pa.Check.isin(CLASSES), nullable=True)"


def column_specs(features: pd.DataFrame, roles: Roles, layout: str) -> dict[str, str]:
    """{column: the source of its `pa.Column(...)`}, in the batch's column order."""
    specs = {}
    for col in roles.entities:
        specs[col] = 'pa.Column("int64")' if pd.api.types.is_integer_dtype(features[col]) else "pa.Column(str)"
    specs[roles.timestamp] = 'pa.Column(pd.DatetimeTZDtype("us", "UTC"))'
    for col in roles.numeric:
        specs[col] = _numeric(features[col])
    for col in roles.categorical:
        specs[col] = f'pa.Column(str, pa.Check.isin(CATEGORIES["{col}"]){_nullable(features[col])})'
    if layout == "in_batches":
        specs[roles.target] = _target(features[roles.target], roles.task)
    return specs


def schema_code(features: pd.DataFrame, roles: Roles, layout: str, name: str) -> str:
    """`SCHEMA = pa.DataFrameSchema({...})` as source, a line per column."""
    body = "\n".join(f'    "{col}": {spec},' for col, spec in column_specs(features, roles, layout).items())
    return f'SCHEMA = pa.DataFrameSchema({{\n{body}\n}}, strict=True, unique=KEYS, name="{name} batch")'
