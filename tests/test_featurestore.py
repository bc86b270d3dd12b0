"""The feature store on real Feast: DuckDB offline store, SQLite online store, the real `feast` CLI.

One small world of the fixture use case (200 devices x 10 days of readings, a string entity `device_id`, the
target inside the batches) is landed into a temporary workspace, its feature rows written as the source and
applied once; the tests share it because importing Feast and applying cost seconds.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import BIN, ROOT
from fixture_lib.use_case import ENTITY, TARGET, TIMESTAMP, simulate
from notebench.data.batches import feature_rows, read_batches, read_labels
from notebench.errors import FeatureStoreError, NotebenchError, UnknownEntityError
from notebench.features.store import FeatureRepo

MATERIALIZED_AT = pd.Timestamp("2026-02-06 12:00", tz="UTC")  # the readings run 2026-02-01 .. 2026-02-10, 08:00


@pytest.fixture(scope="module")
def world(tmp_path_factory, use_case):
    """(repo, snapshots, labels, source path): the landed feature rows applied as the feature source."""
    ws = tmp_path_factory.mktemp("featurestore") / "ws"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOTEBENCH_WORKSPACE_PATH", str(ws))
        mp.chdir(ROOT)
        simulate(ws / "landing", days=12, size=200)  # arrival days 2..11 hold the readings of days 0..9
        batches = read_batches(ws / "landing" / "features")
        snapshots = feature_rows(use_case, batches)
        assert TARGET in batches and TARGET not in snapshots  # the target lands inside the batches
        labels = read_labels(use_case, ws / "landing")
        source = ws / "curated" / "snapshots.parquet"
        source.parent.mkdir(parents=True)
        snapshots.to_parquet(source)
        repo = FeatureRepo()
        assert repo.apply(source)["feature_view sensors_features"] == "create"
        yield repo, snapshots, labels, source


@pytest.fixture(scope="module")
def materialized(world):
    """The world with its online store materialized up to `MATERIALIZED_AT`."""
    repo = world[0]
    (start, end), = repo.materialize(end=MATERIALIZED_AT).values()
    assert end - start == pd.Timedelta(days=repo.ttl_days)  # the first time: what a join at `end` could use
    return world


def feast_cli(repo: FeatureRepo, *args: str) -> str:
    """Run the real `feast` CLI inside the repo; return its output, failing the test on a non-zero exit."""
    proc = subprocess.run([str(BIN / "feast"), *args], cwd=repo.path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, f"feast {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def as_of(snapshots: pd.DataFrame, entity_df: pd.DataFrame, ttl_days: int, features: list[str]) -> pd.DataFrame:
    """Independent oracle: each row's features from the newest snapshot at or before its time, within the ttl."""
    rows = entity_df.reset_index().sort_values(TIMESTAMP)
    found = pd.merge_asof(rows, snapshots.sort_values(TIMESTAMP).rename(columns={TIMESTAMP: "seen"}),
                          left_on=TIMESTAMP, right_on="seen", by=ENTITY, direction="backward",
                          tolerance=pd.Timedelta(days=ttl_days))
    return found.set_index("index").rename_axis(entity_df.index.name).sort_index()[features]


def test_labels_come_from_inside_the_batches(world, use_case):
    _, snapshots, labels, _ = world
    assert list(labels.columns) == [ENTITY, TIMESTAMP, TARGET]
    assert labels[TARGET].notna().all() and set(labels[TARGET]) == {0.0, 1.0}
    # every row whose outcome was recorded, and only those: the world loses about 2% of them
    batches = read_batches(world[3].parents[1] / "landing" / "features")  # the source is <ws>/curated/...
    known = batches[batches[TARGET].notna()]
    assert len(labels) == len(known) < len(snapshots) == len(batches)
    pd.testing.assert_frame_equal(labels, known[[ENTITY, TIMESTAMP, TARGET]].reset_index(drop=True))


def test_the_repo_is_an_ordinary_feast_repo(world):
    repo, _, _, source = world
    yaml = (repo.path / "feature_store.yaml").read_text()
    for line in ("type: notebench.features.feast_offline.AsofDuckDBOfflineStore", "type: sqlite",
                 f'path: "{repo.online_path}"', f'registry: "{repo.registry_path}"'):
        assert line in yaml
    assert str(source) in (repo.path / "definitions.py").read_text()
    assert "fixture_lib.use_case:USE_CASE" in (repo.path / "definitions.py").read_text()
    assert "data/" in (repo.path / ".feastignore").read_text()
    # the CLI imports definitions.py: applying it changes nothing, so it builds the very objects apply registered
    # (before a materialization: after one, Feast 0.67's CLI always reports its view "updated"; see _changed)
    assert "No changes to registry" in feast_cli(repo, "apply")
    listed = feast_cli(repo, "feature-views", "list")
    assert "sensors_features" in listed and ENTITY in listed
    assert [(e["join_key"], e["value_type"]) for e in repo.show()["entities"]] == [(ENTITY, "STRING")]


def test_historical_is_point_in_time_correct(world, use_case):
    repo, snapshots, known, _ = world
    features = use_case.features
    rng = np.random.default_rng(7)
    at_reading = known.sample(100, random_state=1).set_axis(pd.RangeIndex(100, 200))  # labels as they landed
    picked = known.sample(300, random_state=7)
    # the same labels between readings (never at one), so only a backward-looking join gives the expected values
    later = picked[TIMESTAMP] + pd.to_timedelta(rng.integers(1, 86_399, len(picked)), "s")
    labels = pd.DataFrame({ENTITY: picked[ENTITY].to_numpy(), TIMESTAMP: later.to_numpy(),
                           TARGET: picked[TARGET].to_numpy()}, index=pd.RangeIndex(1000, 1300))
    first = snapshots.loc[snapshots[TIMESTAMP].idxmin()]
    last = snapshots.loc[snapshots[TIMESTAMP].idxmax()]
    edges = pd.DataFrame({ENTITY: [first[ENTITY], last[ENTITY]], TARGET: [0.0, 1.0],
                          TIMESTAMP: [first[TIMESTAMP] - pd.Timedelta(seconds=1),  # before its first value
                                      last[TIMESTAMP] + pd.Timedelta(days=repo.ttl_days, seconds=1)]},  # beyond ttl
                         index=[5000, 5001])
    twice = labels.iloc[:1].assign(**{TARGET: 1 - labels[TARGET].iloc[0]}).set_axis([6000])  # same key, other label
    entity_df = pd.concat([at_reading, labels, edges, twice]).astype({TIMESTAMP: "datetime64[us, UTC]"})

    repo.chunk_rows = 128  # several Feast joins, stitched together
    try:
        joined = repo.historical(entity_df)
    finally:
        repo.chunk_rows = FeatureRepo.chunk_rows

    assert list(joined.columns) == [ENTITY, TIMESTAMP, TARGET, *features]
    assert joined[ENTITY].map(type).eq(str).all()  # string ids come back as they went in
    pd.testing.assert_frame_equal(joined[[ENTITY, TIMESTAMP, TARGET]], entity_df[[ENTITY, TIMESTAMP, TARGET]])
    assert joined.loc[[5000, 5001], features].isna().all().all()
    # a label at its reading's time gets that very reading's features
    own = at_reading.merge(snapshots, on=[ENTITY, TIMESTAMP], how="left").set_axis(at_reading.index)[features]
    pd.testing.assert_frame_equal(joined.loc[at_reading.index, features], own, check_dtype=False)  # ints: see below
    expected = as_of(snapshots, entity_df, repo.ttl_days, features)
    pd.testing.assert_frame_equal(joined.loc[labels.index, features], expected.loc[labels.index])
    pd.testing.assert_series_equal(joined.loc[6000, features], joined.loc[1000, features], check_names=False)
    # the missing values of the edges make integer columns float; without them, the snapshots' dtypes come back
    assert joined["hours_since_service"].dtype == np.float64
    pd.testing.assert_series_equal(repo.historical(entity_df.loc[labels.index])[features].dtypes,
                                   snapshots[features].dtypes)


def test_online_features_equal_offline_features_at_the_materialized_time(materialized, use_case):
    repo, snapshots, _, _ = materialized
    features = use_case.features
    seen = snapshots[snapshots[TIMESTAMP] <= MATERIALIZED_AT]
    ids = seen[ENTITY].drop_duplicates().sample(40, random_state=3).tolist()
    assert all(isinstance(i, str) and i.startswith("dev-") for i in ids)
    serving = FeatureRepo()  # a fresh instance, as the prediction service would hold
    online = serving.online(ids)
    offline = repo.historical(pd.DataFrame({ENTITY: ids, TIMESTAMP: MATERIALIZED_AT}))
    pd.testing.assert_frame_equal(online, offline.set_index(ENTITY)[features])  # values, dtypes, column order
    assert list(online.columns) == features and list(online.index) == ids
    newest_seen = seen[seen[TIMESTAMP] == seen[TIMESTAMP].max()].set_index(ENTITY).loc[ids, features]
    pd.testing.assert_frame_equal(online, newest_seen)  # the reading of 2026-02-06, not a later one

    # incremental: the next materialization starts where the last one ended and reaches the newest snapshot
    newest = snapshots[TIMESTAMP].max()
    (start, end), = repo.materialize().values()
    assert (pd.Timestamp(start), pd.Timestamp(end)) == (MATERIALIZED_AT, newest)
    assert repo.materialize() == {}  # nothing new
    online = serving.online(ids)
    offline = repo.historical(pd.DataFrame({ENTITY: ids, TIMESTAMP: newest}))
    pd.testing.assert_frame_equal(online, offline.set_index(ENTITY)[features])
    view, = repo.show()["views"]
    assert [pd.Timestamp(s) for s, _ in view["materialized"]] == [MATERIALIZED_AT - pd.Timedelta(days=30),
                                                                   MATERIALIZED_AT]


def test_unknown_entities_are_a_clear_error(materialized, use_case):
    repo, snapshots, _, _ = materialized
    known = snapshots[ENTITY].iloc[0]
    with pytest.raises(UnknownEntityError) as caught:
        repo.online([known, "dev-9999", known, "DEV-0001"])
    assert isinstance(caught.value, NotebenchError)
    assert caught.value.ids == ["dev-9999", "DEV-0001"] and caught.value.entity == ENTITY
    assert "'dev-9999'" in str(caught.value) and ENTITY in str(caught.value)
    with pytest.raises(UnknownEntityError, match="42"):
        repo.online([42])  # not a string: cannot be a device id
    with pytest.raises(FeatureStoreError, match=TIMESTAMP):
        repo.historical(pd.DataFrame({ENTITY: [known]}))
    with pytest.raises(FeatureStoreError, match=use_case.features[0]):
        repo.historical(snapshots.head(2))


def test_reapply_is_idempotent_but_sees_real_changes(materialized, use_case, tmp_path):
    repo, snapshots, _, source = materialized
    before = repo.show()
    files = {p.name: p.read_text() for p in repo.path.iterdir() if p.is_file()}
    assert repo.apply(source) == {}  # even after materializing, when Feast itself reports an update
    assert repo.show() == before
    assert {p.name: p.read_text() for p in repo.path.iterdir() if p.is_file()} == files
    moved = shutil.copy(source, tmp_path / "snapshots.parquet")
    assert repo.apply(moved) == {"feature_view sensors_features": "update",
                                 "data_source sensors_features_source": "update"}
    assert repo.apply(source) != {}
    assert repo.apply(source) == {}
    assert repo.online(snapshots[ENTITY].iloc[:3]).shape == (3, len(use_case.features))
