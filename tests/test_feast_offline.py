"""The ASOF offline store gives exactly what Feast's own DuckDB store gives, on data made to catch every rule.

Two real Feast repos read the same Parquet sources, one with `type: duckdb`, one with ours. The data has: feature
rows after the entity row (must not leak), rows beyond the ttl (null), two rows with the same key and timestamp
told apart by the created timestamp, a mapped source column, a second view without ttl, a projection whose join
key is renamed, an entity with no feature rows, naive and tz-aware entity timestamps, and extra entity columns;
once with integer entity keys, once with string keys (as the fixture use case's `device_id`).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

feast = pytest.importorskip("feast")

T0 = pd.Timestamp("2026-03-01", tz="UTC")
YAML = """project: asof_check
provider: local
registry: {registry}
offline_store:
  type: {offline}
online_store:
  type: sqlite
  path: {online}
entity_key_serialization_version: 3
"""
KEYS = {"int": lambda i: i, "string": lambda i: f"dev-{i:04d}"}  # entity number -> its key, by key type


def _sources(folder, key):
    rng = np.random.default_rng(7)
    days = [T0 + pd.Timedelta(days=d, hours=h) for d in range(6) for h in (0, 12)]
    a = pd.DataFrame([{"driver_id": key(i), "event_timestamp": t, "created": t, "x": rng.normal(),
                       "raw_z": int(rng.integers(100)), "trips": int(rng.integers(10))}
                      for i in (1, 2, 3) for t in days])
    a = a[~((a.driver_id == key(3)) & (a.event_timestamp > T0 + pd.Timedelta(days=1)))]  # 3 goes quiet: ttl test
    late = a[a.driver_id == key(1)].iloc[[4]].assign(created=lambda f: f.created + pd.Timedelta(hours=1), x=99.0)
    a = pd.concat([a, late], ignore_index=True)  # same key and time, newer created: must win
    b = pd.DataFrame([{"driver_id": key(i), "event_timestamp": T0 + pd.Timedelta(days=d), "rating": float(i * 10 + d)}
                      for i in (1, 2) for d in (0, 3)])
    a.to_parquet(folder / "a.parquet")
    b.to_parquet(folder / "b.parquet")


def _objects(folder, kind: str):
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    value_type = ValueType.INT64 if kind == "int" else ValueType.STRING
    driver = Entity(name="driver", join_keys=["driver_id"], value_type=value_type)
    src_a = FileSource(name="a_src", path=str(folder / "a.parquet"), timestamp_field="event_timestamp",
                       created_timestamp_column="created", field_mapping={"raw_z": "z"})
    src_b = FileSource(name="b_src", path=str(folder / "b.parquet"), timestamp_field="event_timestamp")
    stats = FeatureView(name="stats", entities=[driver], ttl=timedelta(days=1), source=src_a,
                        schema=[Field(name="x", dtype=Float64), Field(name="trips", dtype=Int64),
                                Field(name="z", dtype=Int64)])
    ratings = FeatureView(name="ratings", entities=[driver], ttl=timedelta(0), source=src_b,
                          schema=[Field(name="rating", dtype=Float64)])
    riders = FeatureService(name="riders", features=[stats[["x"]].with_join_key_map({"driver_id": "rider_id"})])
    return driver, stats, ratings, riders


def _store(folder, offline: str, kind: str):
    from feast import FeatureStore

    repo = folder / offline.rsplit(".", 1)[-1]
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(YAML.format(registry=repo / "registry.db", offline=offline,
                                                         online=repo / "online.db"))
    store = FeatureStore(repo_path=str(repo))
    store.apply(list(_objects(folder, kind)))
    return store


@pytest.fixture(scope="module", params=list(KEYS))
def stores(tmp_path_factory, request):
    """(Feast's DuckDB store, ours, the key of an entity number) over the same sources."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"asof_{kind}")
    _sources(folder, KEYS[kind])
    return (_store(folder, "duckdb", kind), _store(folder, "notebench.features.feast_offline.AsofDuckDBOfflineStore",
                                                   kind), KEYS[kind])


def _entities(naive: bool, key) -> pd.DataFrame:
    times = [T0 - pd.Timedelta(hours=1), T0, T0 + pd.Timedelta(hours=30), T0 + pd.Timedelta(days=2, hours=5),
             T0 + pd.Timedelta(days=4), T0 + pd.Timedelta(days=9)]
    rows = [{"driver_id": key(i), "event_timestamp": t, "label": k % 2}
            for i in (1, 2, 3, 4) for k, t in enumerate(times)]
    rows.append(rows[3])  # a duplicate entity row keeps its place
    frame = pd.DataFrame(rows)
    if naive:
        frame["event_timestamp"] = frame.event_timestamp.dt.tz_localize(None)
    return frame


def _compare(ours: pd.DataFrame, theirs: pd.DataFrame, entity_df: pd.DataFrame) -> None:
    assert list(ours.columns) == list(theirs.columns)
    assert len(ours) == len(theirs) == len(entity_df)
    key = ["driver_id", "event_timestamp", "label"]
    ours = ours.sort_values(key, kind="stable").reset_index(drop=True)
    theirs = theirs.sort_values(key, kind="stable").reset_index(drop=True)
    for column in ours.columns:
        a, b = ours[column], theirs[column]
        if column == "event_timestamp":
            a, b = pd.to_datetime(a, utc=True), pd.to_datetime(b, utc=True)
        assert a.isna().tolist() == b.isna().tolist(), column
        assert a[a.notna()].astype(str).tolist() == b[b.notna()].astype(str).tolist() or np.allclose(
            a[a.notna()].astype(float), b[b.notna()].astype(float)), column


@pytest.mark.parametrize("full_names", [False, True])
@pytest.mark.parametrize("naive", [False, True])
def test_same_answer_as_feasts_duckdb_store(stores, full_names, naive):
    theirs_store, ours_store, key = stores
    # not a feature named "y": Feast's own store drops any column whose name ends in "_y" (its join suffix), so
    # with full names "stats__y" vanishes from its answer (Feast 0.67); ours keeps it
    refs = ["stats:x", "stats:trips", "stats:z", "ratings:rating"]
    entity_df = _entities(naive, key)
    job = ours_store.get_historical_features(entity_df=entity_df, features=refs, full_feature_names=full_names)
    assert "ASOF" in job.to_sql()  # our plan ran, not a fallback
    ours = job.to_df()
    theirs = theirs_store.get_historical_features(entity_df=entity_df, features=refs,
                                                  full_feature_names=full_names).to_df()
    _compare(ours, theirs, entity_df)
    assert ours["label"].tolist() == entity_df["label"].tolist()  # rows in the entity frame's order


def test_the_rules_hold(stores):
    _, ours_store, key = stores
    ours = ours_store.get_historical_features(entity_df=_entities(False, key), features=["stats:x", "stats:z"]).to_df()
    assert ours["driver_id"].map(type).eq(type(key(1))).all()  # keys come back as they went in
    at = ours.set_index(["driver_id", "event_timestamp"]).sort_index()
    assert pd.isna(at.loc[(key(1), T0 - pd.Timedelta(hours=1)), "x"].iloc[0])  # nothing before the first feature row
    assert at.loc[(key(1), T0 + pd.Timedelta(days=2, hours=5)), "x"].iloc[0] == 99.0  # newest created wins the tie
    assert pd.isna(at.loc[(key(3), T0 + pd.Timedelta(days=4)), "x"].iloc[0])  # beyond the ttl: null
    assert at.loc[(key(4),), "x"].isna().all()  # an unknown entity keeps its rows, with null features
    assert at["z"].notna().any()  # the mapped source column arrives under its feature name


def test_renamed_join_key(stores):
    *both, key = stores
    entity_df = _entities(False, key).rename(columns={"driver_id": "rider_id"})
    ours, theirs = (store.get_historical_features(entity_df=entity_df, features=store.get_feature_service("riders"))
                    .to_df().rename(columns={"rider_id": "driver_id"}) for store in reversed(both))
    assert ours["x"].notna().any()
    _compare(ours, theirs, entity_df)
