"""The feature store on real Feast: DuckDB offline store, SQLite online store, the real `feast` CLI.

One small generated world (200 customers x 10 days) is written as curated snapshots into a temporary
workspace and applied once; the tests share it because importing Feast and applying cost seconds.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import BIN, ROOT
from notebench.errors import FeatureStoreError, NotebenchError, UnknownEntityError
from notebench.features.store import FeatureRepo

from nbs_lib.data import ENTITY, FEATURES, TIMESTAMP, read_batches
from nbs_lib.demo_data import generate

MATERIALIZED_AT = pd.Timestamp("2026-01-06 12:00", tz="UTC")  # the world runs 2026-01-01 .. 2026-01-10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(repo, snapshots, source path): the world's snapshots applied as the feature source."""
    ws = tmp_path_factory.mktemp("featurestore") / "ws"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOTEBENCH_WORKSPACE_PATH", str(ws))
        mp.chdir(ROOT)
        generate(ws / "landing", days=10, customers=200)
        snapshots = read_batches(ws / "landing" / "features")
        source = ws / "curated" / "snapshots.parquet"
        source.parent.mkdir(parents=True)
        snapshots.to_parquet(source)
        repo = FeatureRepo()
        assert repo.apply(source)["feature_view customer_features"] == "create"
        yield repo, snapshots, source


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


def as_of(snapshots: pd.DataFrame, entity_df: pd.DataFrame, ttl_days: int) -> pd.DataFrame:
    """Independent oracle: each row's features from the newest snapshot at or before its time, within the ttl."""
    rows = entity_df.reset_index().sort_values(TIMESTAMP)
    found = pd.merge_asof(rows, snapshots.sort_values(TIMESTAMP).rename(columns={TIMESTAMP: "seen"}),
                          left_on=TIMESTAMP, right_on="seen", by=ENTITY, direction="backward",
                          tolerance=pd.Timedelta(days=ttl_days))
    return found.set_index("index").rename_axis(entity_df.index.name).sort_index()[FEATURES]


def test_the_repo_is_an_ordinary_feast_repo(world):
    repo, _, source = world
    yaml = (repo.path / "feature_store.yaml").read_text()
    for line in ("type: notebench.features.feast_offline.AsofDuckDBOfflineStore", "type: sqlite", f'path: "{repo.online_path}"',
                 f'registry: "{repo.registry_path}"'):
        assert line in yaml
    assert str(source) in (repo.path / "definitions.py").read_text()
    assert "data/" in (repo.path / ".feastignore").read_text()
    # the CLI imports definitions.py: applying it changes nothing, so it builds the very objects apply registered
    # (before a materialization: after one, Feast 0.67's CLI always reports its view "updated"; see _changed)
    assert "No changes to registry" in feast_cli(repo, "apply")
    listed = feast_cli(repo, "feature-views", "list")
    assert "customer_features" in listed and "customer_id" in listed


def test_historical_is_point_in_time_correct(world):
    repo, snapshots, _ = world
    rng = np.random.default_rng(7)
    picked = snapshots.sample(300, random_state=7)
    # labels between snapshots (never at one), so only a backward-looking join can produce the expected values
    later = picked[TIMESTAMP] + pd.to_timedelta(rng.integers(1, 86_399, len(picked)), "s")
    labels = pd.DataFrame({ENTITY: picked[ENTITY].to_numpy(), TIMESTAMP: later.to_numpy(),
                           "churned": rng.integers(0, 2, len(picked))}, index=pd.RangeIndex(1000, 1300))
    first = snapshots.loc[snapshots[TIMESTAMP].idxmin()]
    last = snapshots.loc[snapshots[TIMESTAMP].idxmax()]
    edges = pd.DataFrame({ENTITY: [first[ENTITY], last[ENTITY]], "churned": [0, 1],
                          TIMESTAMP: [first[TIMESTAMP] - pd.Timedelta(seconds=1),  # before its first value
                                      last[TIMESTAMP] + pd.Timedelta(days=repo.ttl_days, seconds=1)]},  # beyond ttl
                         index=[5000, 5001])
    twice = labels.iloc[:1].assign(churned=1 - labels.churned.iloc[0]).set_axis([6000])  # same key, another label
    entity_df = pd.concat([labels, edges, twice]).astype({TIMESTAMP: "datetime64[us, UTC]"})

    repo.chunk_rows = 128  # several Feast joins, stitched together
    try:
        joined = repo.historical(entity_df)
    finally:
        repo.chunk_rows = FeatureRepo.chunk_rows

    assert list(joined.columns) == [ENTITY, TIMESTAMP, "churned", *FEATURES]
    pd.testing.assert_frame_equal(joined[[ENTITY, TIMESTAMP, "churned"]], entity_df[[ENTITY, TIMESTAMP, "churned"]])
    expected = as_of(snapshots, entity_df, repo.ttl_days)
    assert joined.loc[[5000, 5001], FEATURES].isna().all().all()
    pd.testing.assert_frame_equal(joined.loc[labels.index, FEATURES], expected.loc[labels.index])
    pd.testing.assert_series_equal(joined.loc[6000, FEATURES], joined.loc[1000, FEATURES], check_names=False)
    # the missing values of the edges make integer columns float; without them, the snapshots' dtypes come back
    assert joined["tenure_months"].dtype == np.float64
    pd.testing.assert_series_equal(repo.historical(entity_df.loc[labels.index])[FEATURES].dtypes,
                                   snapshots[FEATURES].dtypes)


def test_online_features_equal_offline_features_at_the_materialized_time(materialized):
    repo, snapshots, _ = materialized
    seen = snapshots[snapshots[TIMESTAMP] <= MATERIALIZED_AT]
    ids = seen[ENTITY].drop_duplicates().sample(40, random_state=3).tolist()
    serving = FeatureRepo()  # a fresh instance, as the prediction service would hold
    online = serving.online(ids)
    offline = repo.historical(pd.DataFrame({ENTITY: ids, TIMESTAMP: MATERIALIZED_AT}))
    pd.testing.assert_frame_equal(online, offline.set_index(ENTITY)[FEATURES])  # values, dtypes, column order
    assert list(online.columns) == FEATURES and list(online.index) == ids

    # incremental: the next materialization starts where the last one ended and reaches the newest snapshot
    newest = snapshots[TIMESTAMP].max()
    (start, end), = repo.materialize().values()
    assert (pd.Timestamp(start), pd.Timestamp(end)) == (MATERIALIZED_AT, newest)
    assert repo.materialize() == {}  # nothing new
    online = serving.online(ids)
    offline = repo.historical(pd.DataFrame({ENTITY: ids, TIMESTAMP: newest}))
    pd.testing.assert_frame_equal(online, offline.set_index(ENTITY)[FEATURES])
    view, = repo.show()["views"]
    assert [pd.Timestamp(s) for s, _ in view["materialized"]] == [MATERIALIZED_AT - pd.Timedelta(days=30),
                                                                   MATERIALIZED_AT]


def test_unknown_entities_are_a_clear_error(materialized):
    repo, snapshots, _ = materialized
    known = int(snapshots[ENTITY].iloc[0])
    with pytest.raises(UnknownEntityError) as caught:
        repo.online([known, 999_999_999, known, 42])
    assert isinstance(caught.value, NotebenchError)
    assert caught.value.ids == [999_999_999, 42] and caught.value.entity == ENTITY
    assert "999999999" in str(caught.value) and "customer_id" in str(caught.value)
    with pytest.raises(UnknownEntityError, match="'abc'"):
        repo.online(["abc"])
    with pytest.raises(FeatureStoreError, match=TIMESTAMP):
        repo.historical(pd.DataFrame({ENTITY: [known]}))
    with pytest.raises(FeatureStoreError, match=FEATURES[0]):
        repo.historical(snapshots.head(2))


def test_reapply_is_idempotent_but_sees_real_changes(materialized, tmp_path):
    repo, snapshots, source = materialized
    before = repo.show()
    files = {p.name: p.read_text() for p in repo.path.iterdir() if p.is_file()}
    assert repo.apply(source) == {}  # even after materializing, when Feast itself reports an update
    assert repo.show() == before
    assert {p.name: p.read_text() for p in repo.path.iterdir() if p.is_file()} == files
    moved = shutil.copy(source, tmp_path / "snapshots.parquet")
    assert repo.apply(moved) == {"feature_view customer_features": "update", "data_source customer_features_source":
                                 "update"}
    assert repo.apply(source) != {}
    assert repo.apply(source) == {}
    assert repo.online(snapshots[ENTITY].iloc[:3]).shape == (3, len(FEATURES))
