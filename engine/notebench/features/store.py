"""The feature store: a Feast repo inside the workspace, one definition shared by training and serving.

Training asks for point-in-time correct features (`FeatureRepo.historical`, a join on the DuckDB offline store);
the prediction service asks for the latest values of a few entities (`FeatureRepo.online`, the SQLite online
store). Both come from the same Feast feature view, so the two cannot drift apart (training/serving skew).

This module manages the repo and reads the use case only through its contract (`notebench.usecase`): the Feast
objects come from `notebench.features.definitions` (one entity per key column, typed from the schema, and one view
of the contract's features). The repo it writes is an ordinary Feast repo, so `feast` works in it:

    <workspace>/feature_repo/
        feature_store.yaml     project, provider local, DuckDB offline store (point-in-time joins as DuckDB
                               ASOF joins: `notebench.features.feast_offline`), SQLite online store, registry
        definitions.py         builds the objects from the use-case contract (rewritten by every `apply`)
        .feastignore           keeps `feast` from importing anything else
        data/registry.db       Feast's registry (`[features] registry` empty; else Feast's SQL registry at that URL)
        data/online.db         the online store (`[features] online_store = sqlite`; else Feast's PostgreSQL store)

In team mode only settings change: `[features] registry` names a database for Feast's SQL registry and
`[features] online_store` a PostgreSQL URL for its online store, while the offline data (the snapshots the
definitions point at) stays on the workspace's shared path. feature_store.yaml then holds the URLs as written in the
settings (keep passwords in `~/.pgpass` rather than in URLs; the file is written readable by its owner only).

Feast is imported on first use (it costs seconds), never at import of this module.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from notebench.errors import FeatureStoreError, UnknownEntityError
from notebench.features.definitions import feast_definitions, feature_refs
from notebench.usecase import UseCase, load_use_case
from notebench.workspace import Workspace

__all__ = ["REPO_DIR", "FeatureRepo"]

REPO_DIR = "feature_repo"  # the repo's folder inside the workspace
_WHEN = "__notebench_when__"  # an entity frame's times, normalised to UTC microseconds as Feast returns them

_YAML = """\
# Written by notebench.features.store (FeatureRepo.apply); change [features] in settings.ini instead.
project: {project}
provider: local
registry: {registry}
offline_store:
  type: notebench.features.feast_offline.AsofDuckDBOfflineStore
online_store:
{online}
entity_key_serialization_version: 3
"""


def _sql_registry(uri: str) -> str:
    """The `registry:` block of Feast's SQL registry at `uri`."""
    from notebench.state.uri import sqlalchemy_url

    return ("\n  registry_type: sql\n  path: " + json.dumps(sqlalchemy_url(uri)) + "\n  cache_ttl_seconds: 60"
            "\n  sqlalchemy_config_kwargs:\n    pool_pre_ping: true")


def _postgres_online(uri: str) -> str:
    """The `online_store:` block of Feast's PostgreSQL online store at `uri` (postgresql://user:pw@host:port/db)."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts, query = urlsplit(uri), parse_qs(urlsplit(uri).query)
    if not (parts.hostname and parts.path.strip("/")):
        raise FeatureStoreError("[features] online_store: a PostgreSQL online store needs a URL with a host and a "
                                "database: postgresql://USER@HOST:5432/DB")
    fields = {"type": "postgres", "host": parts.hostname, "port": parts.port or 5432,
              "database": unquote(parts.path.strip("/")), "db_schema": query.get("schema", ["public"])[0],
              "user": unquote(parts.username or ""), "password": unquote(parts.password or ""),
              "sslmode": query.get("sslmode", ["prefer"])[0]}
    return "\n".join(f"  {k}: {json.dumps(v)}" for k, v in fields.items())

_DEFINITIONS = '''\
"""Feast objects of this feature repo, built from the use-case contract by `notebench.features.definitions`.

Written by notebench.features.store on every apply: edit the use-case notebooks instead. Needs the project
(its use case and the engine) installed where `feast` runs."""

from notebench.features.definitions import feast_definitions
from notebench.usecase import load_use_case

SOURCE_PATH = {source!r}
TTL_DAYS = {ttl_days!r}
USE_CASE = {reference!r}

# `feast` collects the objects it finds as attributes of this module
globals().update({{obj.name: obj for obj in feast_definitions(load_use_case(reference=USE_CASE), SOURCE_PATH,
                                                              TTL_DAYS)}})
'''

_FEASTIGNORE = "# only definitions.py holds Feast objects\ndata/\n__pycache__/\n.ipynb_checkpoints/\n"


class FeatureRepo:
    """The Feast repo at `<workspace>/feature_repo`: written and applied, materialized, read offline and online."""

    chunk_rows = 2_000_000  # distinct (entity, time) rows per Feast join: bounds `historical`'s memory

    def __init__(self, workspace: Workspace | None = None, path: Path | str | None = None,
                 use_case: UseCase | None = None):
        self.workspace = workspace or Workspace()  # settings come from its [features] section
        self.uc = use_case or load_use_case(self.workspace.settings)  # entities, timestamp, features
        self.path = Path(path or self.workspace.root / REPO_DIR).expanduser().resolve()  # the repo folder
        self.project = self.workspace.settings.value("features", "project")
        self.ttl_days = self.workspace.settings.value("features", "ttl_days")
        self._store = None  # the cached feast.FeatureStore
        self._reader = None  # an `_OnlineReader`, prepared on the first online read
        self._lock = threading.Lock()  # the online store's SQLite connection is shared by threads

    @property
    def online_path(self) -> Path:
        return self.path / "data" / "online.db"

    @property
    def registry_path(self) -> Path:
        return self.path / "data" / "registry.db"

    @property
    def registry_uri(self) -> str:
        """`[features] registry`: a SQL registry's URL, or '' for the file registry in the repo."""
        return self.workspace.settings.value("features", "registry")

    @property
    def online_uri(self) -> str:
        """`[features] online_store`: 'sqlite' (the file in the repo) or a PostgreSQL URL."""
        return self.workspace.settings.value("features", "online_store")

    def _registry_block(self) -> str:
        return _sql_registry(self.registry_uri) if self.registry_uri else json.dumps(str(self.registry_path))

    def _online_block(self) -> str:
        from notebench.state.uri import scheme

        kind = scheme(self.online_uri) or self.online_uri.strip().lower()
        if kind == "sqlite" and "://" not in self.online_uri:
            return f"  type: sqlite\n  path: {json.dumps(str(self.online_path))}"
        if kind == "postgresql":
            return _postgres_online(self.online_uri)
        raise FeatureStoreError(f"[features] online_store = {self.online_uri!r}: expected sqlite or a postgresql:// "
                                "URL")

    @property
    def store(self):
        """The repo's `feast.FeatureStore`, created once (imports feast)."""
        if self._store is None:
            if not (self.path / "feature_store.yaml").is_file():
                raise FeatureStoreError(f"no feature repo at {self.path}: apply(source_path) creates it")
            from feast import FeatureStore

            self._store = FeatureStore(repo_path=str(self.path))
        return self._store

    # ---------------------------------------------------------------------------------------------------
    # definitions

    def write(self, source_path: Path | str) -> Path:
        """Write feature_store.yaml, definitions.py and .feastignore for the snapshots at `source_path`."""
        source = Path(source_path).expanduser().resolve()
        if not source.is_file():
            raise FeatureStoreError(f"feature source not found: {source} (a parquet file of snapshots)")
        (self.path / "data").mkdir(parents=True, exist_ok=True)
        yaml = self.path / "feature_store.yaml"
        _write_if_changed(yaml, _YAML.format(project=self.project, registry=self._registry_block(),
                                             online=self._online_block()))
        yaml.chmod(0o600)  # a URL in it may hold a password
        _write_if_changed(self.path / "definitions.py", _DEFINITIONS.format(
            source=str(source), ttl_days=self.ttl_days, reference=self.workspace.settings.value("use_case", "object")))
        _write_if_changed(self.path / ".feastignore", _FEASTIGNORE)
        return self.path

    def apply(self, source_path: Path | str) -> dict[str, str]:
        """Write the repo and register its objects as `feast apply` would; return what changed (empty: nothing)."""
        self.write(source_path)
        objects = feast_definitions(self.uc, str(Path(source_path).expanduser().resolve()), self.ttl_days)
        contents = _repo_contents(objects, self.project)
        store = self.store
        with _quiet():
            diff, _, _ = store.plan(contents)
            changes = {f"{d.feast_object_type.name.lower()} {d.name}": d.transition_type.name.lower()
                       for d in diff.feast_object_diffs if _changed(d)}
            if changes:  # Feast's own `feast apply`, given the objects instead of importing definitions.py
                from feast.repo_operations import apply_total_with_repo_instance

                apply_total_with_repo_instance(store, self.project, store.registry, contents,
                                               skip_source_validation=False)
        self._reader = None
        return changes

    def views(self) -> list:
        """The feature views in the registry, read afresh."""
        return self.store.list_feature_views(allow_cache=False)

    # ---------------------------------------------------------------------------------------------------
    # materialization: offline store -> online store

    def materialize(self, end=None, start=None) -> dict[str, tuple[datetime, datetime]]:
        """Load each view's latest values in [start, end] into the online store; return the intervals loaded.

        `end` defaults to the newest event in the view's source (not the wall clock, so a simulated world works);
        `start` to where the last materialization ended, or `end` minus the view's ttl the first time: exactly
        the values a point-in-time join at `end` would use.
        """
        loaded = {}
        for view in self.views():
            stop = _utc(end) if end is not None else self._newest_event(view)
            if stop is None:
                continue
            begin = _utc(start) if start is not None else (view.most_recent_end_time or stop - view.ttl)
            if begin >= stop:
                continue
            with _quiet():
                self.store.materialize(begin, stop, feature_views=[view.name])
            loaded[view.name] = (begin, stop)
        return loaded

    def _newest_event(self, view) -> datetime | None:
        """Time of the newest row in `view`'s parquet source (DuckDB reads only the footers' statistics)."""
        import duckdb

        source = view.batch_source
        sql = f'SELECT epoch_us(max("{source.timestamp_field}")) FROM read_parquet(?)'
        with duckdb.connect() as con:
            (micros,) = con.execute(sql, [source.path]).fetchone()
        return None if micros is None else datetime.fromtimestamp(micros / 1e6, tz=UTC)

    # ---------------------------------------------------------------------------------------------------
    # reading

    def historical(self, entity_df: pd.DataFrame) -> pd.DataFrame:
        """`entity_df` (entity, timestamp, labels...) with the features valid at each row's time, in model order.

        Rows, index and extra columns of `entity_df` are kept as they are. Feast joins each distinct (entity, time)
        once, `chunk_rows` at a time, labels left out. With the repo's ASOF store the join's memory grows with the
        rows; with Feast's own DuckDB store (a repo written before) it grows with rows x snapshots per ttl."""
        refs = feature_refs(self.uc)
        names = [ref.split(":", 1)[1] for ref in refs]
        entities, ts = list(self.uc.entities), self.uc.timestamp
        missing = [c for c in (*entities, ts) if c not in entity_df.columns]
        clash = [c for c in names if c in entity_df.columns]
        if missing or clash:
            raise FeatureStoreError(f"the entity frame needs {', '.join([*entities, ts])} (and may carry labels, not "
                                    f"features); it lacks {missing} and has features {clash}")
        when = pd.to_datetime(entity_df[ts], utc=True).astype("datetime64[us, UTC]")
        rows = entity_df.reset_index(drop=True).assign(**{_WHEN: when.reset_index(drop=True)})
        keys = rows[[*entities, _WHEN]].drop_duplicates(ignore_index=True).rename(columns={_WHEN: ts})
        found = [self._join(keys.iloc[i:i + self.chunk_rows], refs) for i in range(0, len(keys), self.chunk_rows)]
        found = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=[*entities, _WHEN, *names])
        joined = rows.merge(found, on=[*entities, _WHEN], how="left", validate="many_to_one").set_axis(
            entity_df.index)
        return _training_dtypes(joined[[*entity_df.columns, *names]], self._types())

    def _join(self, keys: pd.DataFrame, refs: list[str]) -> pd.DataFrame:
        """Feast's point-in-time join for distinct (entities, time) `keys`; the time comes back as `_WHEN`."""
        with _quiet():
            found = self.store.get_historical_features(entity_df=keys, features=refs).to_df()
        when = pd.to_datetime(found.pop(self.uc.timestamp), utc=True).astype("datetime64[us, UTC]")
        return found.assign(**{_WHEN: when})

    def online(self, entity_ids) -> pd.DataFrame:
        """The features of `entity_ids` from the online store: one row per id, model column order, training dtypes.

        An id is a value of the entity column, or, for several entity columns, a dict (or a tuple in their order).
        Raises `UnknownEntityError` naming every id the online store does not hold (or that cannot be an id)."""
        single = len(self.uc.entities) == 1
        ids = [entity_ids] if pd.api.types.is_scalar(entity_ids) or isinstance(entity_ids, dict) else list(entity_ids)
        if self._reader is None:
            self._reader = _OnlineReader(self.store, feature_refs(self.uc), self._types(), self.uc.entities)
        with self._lock:  # Feast's SQLite online store shares one connection
            columns, unknown = self._reader.read(ids)
        if unknown:
            raise UnknownEntityError(", ".join(self.uc.entities), unknown)
        index = pd.Index(ids, name=self.uc.entities[0]) if single else pd.RangeIndex(len(ids))
        return pd.DataFrame(columns, index=index)

    def _types(self) -> dict[str, str]:
        """The kind (int, float, str, bool) of each feature, from its Feast type."""
        kinds = {}
        wanted = {ref.split(":", 1)[0] for ref in feature_refs(self.uc)}
        for view in self.views():
            if view.name in wanted:
                kinds.update({f.name: _KINDS.get(str(f.dtype), "") for f in view.features})
        return kinds

    # ---------------------------------------------------------------------------------------------------
    # inspection

    def show(self) -> dict[str, Any]:
        """What the repo holds: entities, views with their features and materialized intervals, and its stores."""
        from notebench.state.uri import mask_uri

        sqlite = self.online_uri.strip().lower() == "sqlite"
        info: dict[str, Any] = {"repo": str(self.path), "project": self.project, "applied": False,
                                "registry": mask_uri(self.registry_uri) or str(self.registry_path),
                                "offline_store": "duckdb (ASOF joins)",
                                "online_store": f"sqlite {self.online_path}" if sqlite else
                                f"postgres {mask_uri(self.online_uri)}"}
        if not (self.path / "feature_store.yaml").is_file() or not (self.registry_uri or self.registry_path.is_file()):
            return info
        store = self.store
        store.refresh_registry()
        entities = store.list_entities(allow_cache=True)
        views = store.list_feature_views(allow_cache=True)
        info.update(applied=True, features=feature_refs(self.uc), entities=[
            {"name": e.name, "join_key": e.join_key, "value_type": e.value_type.name} for e in entities],
            views=[{"name": v.name, "entities": list(v.entities), "ttl_days": v.ttl.total_seconds() / 86400,
                    "source": getattr(v.batch_source, "path", None),
                    "features": {f.name: str(f.dtype) for f in v.features},
                    "materialized": [[s.isoformat(), e.isoformat()] for s, e in v.materialization_intervals]}
                   for v in views])
        return info


class _OnlineReader:
    """Online reads prepared once: Feast's own online store API on the views, without the registry or pandas
    conversions of `FeatureStore.get_online_features` (about 4x faster, and it says which entities are missing)."""

    def __init__(self, store, refs: list[str], kinds: dict[str, str], entities: tuple[str, ...]):
        from feast.infra.online_stores.helpers import get_online_store_from_config

        by_view: dict[str, list[str]] = {}
        for ref in refs:
            view, name = ref.split(":", 1)
            by_view.setdefault(view, []).append(name)
        found = [store.get_entity(name) for name in entities]
        self.join_keys, self.value_types, self.kinds = [e.join_key for e in found], [e.value_type for e in found], kinds
        self.config, self.online_store = store.config, get_online_store_from_config(store.config.online_store)
        self.views = [(store.get_feature_view(view), names) for view, names in by_view.items()]
        self.names = [name for names in by_view.values() for name in names]

    def read(self, ids: list) -> tuple[dict[str, np.ndarray], list]:
        """Each feature's values for `ids` as an array of its training dtype, and the ids not found."""
        from feast.type_map import feast_value_type_to_python_type as decode

        keys, bad = self._keys(ids)
        unknown = set(bad)
        values: dict[str, list] = {}
        for view, names in self.views:
            rows = self.online_store.online_read(self.config, view, keys, names) if keys else []
            unknown.update(i for i, (_, row) in enumerate(rows) if row is None)
            for name in names:
                values[name] = [None if row is None or name not in row else decode(row[name]) for _, row in rows]
        columns = {name: _column(values[name], self.kinds.get(name, "")) for name in self.names}
        return columns, [ids[i] for i in sorted(unknown)]

    def _keys(self, ids: list) -> tuple[list, list[int]]:
        """Feast entity keys of `ids`, and the positions of ids that cannot be one (they are unknown)."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        if len(self.join_keys) == 1:
            parts, bad = [ids], []
        else:  # several entity columns: each id a dict by column, or a tuple in their order
            rows, bad = [], []
            for i, one in enumerate(ids):
                row = [one.get(k) for k in self.join_keys] if isinstance(one, dict) else list(one) \
                    if isinstance(one, (tuple, list)) else None
                if row is None or len(row) != len(self.join_keys) or any(v is None for v in row):
                    bad.append(i)
                rows.append(row if i not in bad else [None] * len(self.join_keys))
            if bad:
                return [], list(range(len(ids)))
            parts = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in self.join_keys]
        try:
            values = [python_values_to_proto_values(part, kind) for part, kind in zip(parts, self.value_types,
                                                                                        strict=True)]
        except (TypeError, ValueError):
            return [], list(range(len(ids)))
        keys = [EntityKey(join_keys=self.join_keys, entity_values=list(vals)) for vals in zip(*values, strict=True)]
        return keys, bad


# ---------------------------------------------------------------------------------------------------------
# helpers

_KINDS = {"Int32": "int", "Int64": "int", "Float32": "float", "Float64": "float", "String": "str", "Bool": "bool"}


def _training_dtypes(frame: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """`frame` with features in training dtypes: int64 (float64 where a value is missing), float64, object, bool."""
    casts = {}
    for col, kind in kinds.items():
        if col not in frame:
            continue
        has_null = frame[col].isna().any()
        if kind == "int":
            casts[col] = "float64" if has_null else "int64"
        elif kind == "float":
            casts[col] = "float64"
        elif kind == "str":
            casts[col] = object
        elif kind == "bool" and not has_null:
            casts[col] = "bool"
    return frame.astype(casts)


def _column(values: list, kind: str) -> np.ndarray:
    """Python values read online as an array of their training dtype (what `_training_dtypes` gives offline)."""
    has_null = any(v is None for v in values)
    if kind == "float" or (kind == "int" and has_null):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if kind == "int":
        return np.array(values, dtype=np.int64)
    if kind == "bool" and not has_null:
        return np.array(values, dtype=bool)
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _repo_contents(objects: list, project: str):
    """What `feast apply` parses from a definitions file holding `objects` (its project and dummy entity too)."""
    from feast import Entity, FeatureService, FeatureView, Project
    from feast.feature_view import DUMMY_ENTITY
    from feast.repo_contents import RepoContents

    views = [o for o in objects if isinstance(o, FeatureView)]
    return RepoContents(
        projects=[Project(name=project, description="")],
        data_sources=[v.batch_source for v in views if v.batch_source is not None],
        feature_views=views, on_demand_feature_views=[], stream_feature_views=[], label_views=[],
        entities=[o for o in objects if isinstance(o, Entity)] + [DUMMY_ENTITY],
        feature_services=[o for o in objects if isinstance(o, FeatureService)], permissions=[])


def _changed(diff) -> bool:
    """Whether a Feast object diff is a real change: Feast 0.67 reports a view as updated after every
    materialization, because the registry's copy of its source carries timestamps (`meta`) a new one lacks."""
    if diff.transition_type.name == "UNCHANGED":
        return False
    if diff.transition_type.name != "UPDATE":
        return True
    return any(not _same_but_meta(p.val_existing, p.val_declared) for p in diff.feast_object_property_diffs)


def _same_but_meta(existing, declared) -> bool:
    """Whether two protos are equal once their `meta` fields are cleared."""
    if type(existing) is not type(declared) or not hasattr(existing, "ClearField"):
        return False
    existing, declared = type(existing).FromString(existing.SerializeToString()), type(declared).FromString(
        declared.SerializeToString())
    for proto in (existing, declared):
        if "meta" in proto.DESCRIPTOR.fields_by_name:
            proto.ClearField("meta")
    return existing == declared


def _utc(moment) -> datetime:
    """`moment` (datetime, Timestamp or ISO text) as an aware UTC datetime; naive times are taken as UTC."""
    ts = pd.Timestamp(moment)
    return (ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")).to_pydatetime()


def _write_if_changed(path: Path, text: str) -> None:
    """Write `text` to `path` unless it already holds exactly that (keeps re-applies from touching files)."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


@contextlib.contextmanager
def _quiet():
    """Silence Feast's progress printing and its dependencies' deprecation warnings."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield
