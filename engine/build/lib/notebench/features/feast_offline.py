"""A Feast offline store: Feast's DuckDB store, with its point-in-time join done as DuckDB ASOF joins.

Feast's DuckDB store plans the point-in-time join in ibis as an inner join of every entity row with every feature
row of its entity that is older than the row and within the view's ttl, then a window that keeps the newest match.
That intermediate table holds rows x snapshots-per-ttl rows: on the benchmark's 1M entity rows with 30 daily
snapshots per ttl it is 30M rows, 78 CPU-seconds and 7 GB. DuckDB's `ASOF JOIN` answers the same question (the
newest feature row at or before each entity row's time, per join key) by sorting both sides once, in 3 to 6 s and
about 1 GB for the same 1M rows (`benchmarks/feast_retrieval.py`).

The semantics are Feast's, checked against Feast's own store in tests/test_featurestore.py:
- a feature row counts when its timestamp is at or before the entity row's, and at most the view's ttl older;
- of feature rows with the same key and timestamp, the newest `created_timestamp_column` wins;
- `field_mapping`, `join_key_map` (entity columns renamed in a projection) and `full_feature_names` apply;
- entity rows without a match keep their row, with null features; entity columns and row order are kept.

What this store does not plan itself it hands to Feast's DuckDB store unchanged: an entity frame given as SQL,
on-demand feature views, `filter_by_created_timestamp`, and sources that are not local Parquet files. Everything
else (materialization, writes, monitoring) is Feast's DuckDB store as it is. Select it in `feature_store.yaml`:

    offline_store:
      type: notebench.features.feast_offline.AsofDuckDBOfflineStore

This module imports Feast at the top: Feast alone imports it, when a repo names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.on_demand_feature_view import OnDemandFeatureView
from pydantic import StrictStr

__all__ = ["AsofDuckDBOfflineStore", "AsofDuckDBOfflineStoreConfig", "AsofRetrievalJob"]

_ROW = "__notebench_row__"  # the entity row's position, to give rows back in their order


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """`feature_store.yaml`'s `offline_store` section; the same options as Feast's DuckDB store."""

    type: StrictStr = "notebench.features.feast_offline.AsofDuckDBOfflineStore"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _parquet(view, repo_path) -> Path | None:
    """The local Parquet file or folder behind `view`, or None when the ASOF plan does not apply to its source."""
    source = view.batch_source
    path = getattr(source, "path", None)
    file_format = getattr(source, "file_format", None)
    if not path or "://" in str(path) or (file_format is not None and type(file_format).__name__ != "ParquetFormat"):
        return None
    path = Path(path)
    return path if path.is_absolute() else Path(repo_path or ".") / path


@dataclass
class _View:
    """What the join needs of one feature view."""

    alias: str  # the view's alias in the query
    path: Path
    timestamp: str  # its source's event timestamp column
    created: str | None  # its source's created timestamp column
    keys: dict[str, str]  # feature-table column -> entity-frame column
    columns: dict[str, str]  # source column -> output column, one per requested feature
    ttl: timedelta | None

    def table(self) -> str:
        """SELECT of the view's rows: keys, timestamp and requested features, one row per (keys, timestamp)."""
        picked = [f"{_quote(k)} AS {_quote(column)}" for k, column in self.keys.items()]
        picked += [f"CAST({_quote(self.timestamp)} AS TIMESTAMPTZ) AS __ts"]
        picked += [f"{_quote(src)} AS {_quote(out)}" for src, out in self.columns.items()]
        sql = f"SELECT {', '.join(picked)} FROM read_parquet('{self.path.as_posix()}')"
        if self.created:
            keys = ", ".join(_quote(k) for k in self.keys)
            sql += (f" QUALIFY row_number() OVER (PARTITION BY {keys}, {_quote(self.timestamp)} "
                    f"ORDER BY {_quote(self.created)} DESC) = 1")
        return sql


def _view(view, refs: list[str], full_feature_names: bool, repo_path, alias: str) -> _View:
    source = view.batch_source
    renamed = {new: old for old, new in (source.field_mapping or {}).items()}  # feature name -> source column
    prefix = view.projection.name_to_use()
    base = view.projection.name_alias or view.name
    features = [ref.split(":", 1)[1] for ref in refs if ref.startswith(f"{prefix}:")]
    columns = {renamed.get(f, f): (f"{base}__{f}" if full_feature_names else f) for f in features}
    keys = view.projection.join_key_map or {e.name: e.name for e in view.entity_columns}
    keys = {renamed.get(k, k): v for k, v in keys.items()}
    return _View(alias, _parquet(view, repo_path), renamed.get(source.timestamp_field, source.timestamp_field),
                 source.created_timestamp_column or None, keys, columns, view.ttl or None)


def _query(views: list[_View], entity_columns: list[str], event_timestamp: str) -> str:
    """One statement: the entity frame ASOF-joined with every view, features blanked beyond each view's ttl."""
    ctes = [f"{v.alias} AS ({v.table()})" for v in views]
    when = f"CAST(e.{_quote(event_timestamp)} AS TIMESTAMPTZ)"
    joins, picked = [], [f"e.{_quote(c)}" for c in entity_columns]
    for v in views:
        on = [f"e.{_quote(col)} = {v.alias}.{_quote(col)}" for col in v.keys.values()]
        joins.append(f"ASOF LEFT JOIN {v.alias} ON {' AND '.join(on)} AND {when} >= {v.alias}.__ts")
        fresh = f"{v.alias}.__ts >= {when} - INTERVAL '{v.ttl.total_seconds()} seconds'" if v.ttl else "TRUE"
        picked += [f"CASE WHEN {fresh} THEN {v.alias}.{_quote(out)} END AS {_quote(out)}"
                   for out in v.columns.values()]
    return (f"WITH {', '.join(ctes)} SELECT {', '.join(picked)} FROM entity e {' '.join(joins)} "
            f"ORDER BY e.{_ROW}")


class AsofRetrievalJob(RetrievalJob):
    """The join, run when the frame is asked for; `to_sql()` shows the statement."""

    def __init__(self, entity_df: pd.DataFrame, sql: str, full_feature_names: bool, metadata: RetrievalMetadata):
        super().__init__()
        self._entity_df, self._sql = entity_df, sql
        self._full_feature_names, self._metadata = full_feature_names, metadata

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        import duckdb

        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.register("entity", self._entity_df)
            return con.sql(self._sql).to_arrow_table()
        finally:
            con.close()

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def to_sql(self) -> str:
        return self._sql

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list:
        return []

    @property
    def metadata(self) -> RetrievalMetadata:
        return self._metadata


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store whose `get_historical_features` joins with DuckDB's ASOF JOIN."""

    @staticmethod
    def get_historical_features(config, feature_views, feature_refs, entity_df, registry, project,
                                full_feature_names: bool = False, filter_by_created_timestamp: bool = False):
        repo_path = getattr(config, "repo_path", None)
        planned = (isinstance(entity_df, pd.DataFrame) and not filter_by_created_timestamp
                   and all(_parquet(v, repo_path) for v in feature_views)
                   and not OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry))
        if not planned:
            return DuckDBOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project,
                full_feature_names=full_feature_names, filter_by_created_timestamp=filter_by_created_timestamp)
        schema = dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
        event_timestamp = offline_utils.infer_event_timestamp_from_entity_df(schema)
        entity_columns = list(entity_df.columns)
        views = [_view(v, feature_refs, full_feature_names, repo_path, f"v{i}") for i, v in enumerate(feature_views)]
        frame = entity_df.reset_index(drop=True).assign(**{_ROW: range(len(entity_df))})
        times = pd.to_datetime(entity_df[event_timestamp], utc=True)
        metadata = RetrievalMetadata(features=feature_refs, keys=[c for c in entity_columns if c != event_timestamp],
                                     min_event_timestamp=times.min() if len(times) else None,
                                     max_event_timestamp=times.max() if len(times) else None)
        return AsofRetrievalJob(frame, _query(views, entity_columns, event_timestamp), full_feature_names, metadata)
