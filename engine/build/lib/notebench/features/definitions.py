"""Feast objects built from the use-case contract: one entity per key column, typed from the schema, and one
feature view over the landed snapshots holding the contract's features.

The generated `definitions.py` of a workspace's feature repo calls `feast_definitions(load_use_case(), ...)`,
so `feast` run inside the repo works wherever the project (its use case and the engine) is installed.
"""

from __future__ import annotations

from datetime import timedelta

from notebench.usecase import UseCase

__all__ = ["feast_definitions", "feature_refs"]


def feature_refs(uc: UseCase) -> list[str]:
    """Feast references of the contract's features (`view:column`), in the model's column order."""
    return [f"{uc.feature_view}:{col}" for col in uc.features]


def _feast_type(uc: UseCase, col: str):
    """Feast type of feature `col`: `String` if categorical, else `Int64` or `Float64` as the schema types it."""
    from feast.types import Float64, Int64, String

    if col in uc.categorical:
        return String
    column = uc.schema.columns.get(col)
    dtype = str(column.dtype) if column is not None and column.dtype is not None else ""
    return Int64 if dtype.startswith(("int", "uint")) else Float64


def feast_definitions(uc: UseCase, source_path: str, ttl_days: int = 30) -> list:
    """The Feast `Entity` of each key column, and the `FeatureView` of the features over the snapshots at
    `source_path`."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType

    value_types = {"int64": ValueType.INT64, "string": ValueType.STRING}
    entities = [Entity(name=col, join_keys=[col], value_type=value_types[kind])
                for col, kind in uc.entity_types.items()]
    source = FileSource(name=f"{uc.feature_view}_source", path=str(source_path), timestamp_field=uc.timestamp)
    schema = [Field(name=col, dtype=_feast_type(uc, col)) for col in uc.features]
    view = FeatureView(name=uc.feature_view, entities=entities, schema=schema, source=source,
                       ttl=timedelta(days=ttl_days), online=True)
    return [*entities, view]
