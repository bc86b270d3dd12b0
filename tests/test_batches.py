"""Landed batches through the contract (`notebench.data.batches`): both label layouts, schema checks, the time split."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from fixture_lib.use_case import readings, simulate
from notebench.data.batches import (
    feature_rows,
    label_rows,
    load_landing,
    read_batches,
    read_labels,
    time_split,
    validate_batch,
)
from notebench.errors import BatchSchemaError, NotebenchError


@pytest.fixture
def separate(use_case):
    """The fixture use case declared with labels landing apart from the features (its schema without the target)."""
    uc = dataclasses.replace(use_case, labels="separate", schema=use_case.schema.remove_columns([use_case.target]))
    assert uc.problems() == []
    return uc


@pytest.fixture(scope="module")
def in_batches(tmp_path_factory):
    """A landing area of the fixture world: four batches of 40 devices, the target inside, some of it null."""
    landing = tmp_path_factory.mktemp("in_batches")
    simulate(landing, days=6, size=40, seed=5)
    return landing


def land_separately(uc, batches: pd.DataFrame, folder) -> None:
    """Land `batches` in the separate layout: features/ per reading day, labels/ two days later, known ones only."""
    for day, rows in batches.groupby(batches[uc.timestamp].dt.date):
        for kind, frame, arrival in (("features", feature_rows(uc, rows), day),
                                     ("labels", label_rows(uc, rows), day + pd.Timedelta(days=2))):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            frame.to_parquet(folder / kind / f"{arrival}.parquet", index=False)


def test_in_batches_labels_are_the_known_targets_of_the_batches(use_case, in_batches):
    batches = read_batches(in_batches / "features")
    assert len(batches) == 4 * 40 and list(batches.columns)[-1] == use_case.target
    lost = batches[use_case.target].isna()
    assert 0 < lost.sum() < 10  # the world loses about 2% of its outcomes
    labels = read_labels(use_case, in_batches)
    assert list(labels.columns) == [*use_case.keys, use_case.target]
    pd.testing.assert_frame_equal(labels, batches.loc[~lost, labels.columns].reset_index(drop=True))

    landed = load_landing(use_case, in_batches)
    assert list(landed.columns) == [*use_case.keys, *use_case.features, use_case.target]
    assert len(landed) == (~lost).sum() and landed[use_case.target].notna().all()  # null targets dropped
    assert landed[[use_case.timestamp, *use_case.entities]].equals(
        landed[[use_case.timestamp, *use_case.entities]].sort_values([use_case.timestamp, *use_case.entities]))
    expected = batches[~lost].sort_values([use_case.timestamp, *use_case.entities], ignore_index=True)
    pd.testing.assert_frame_equal(landed, expected[landed.columns])


def test_separate_labels_are_joined_with_their_features(use_case, separate, in_batches, tmp_path):
    land_separately(separate, read_batches(in_batches / "features"), tmp_path)
    assert sorted(p.name for p in (tmp_path / "labels").iterdir())[0] == "2026-02-03.parquet"
    assert separate.target not in read_batches(tmp_path / "features")
    labels = read_labels(separate, tmp_path)  # the rows of labels/, as they landed
    assert list(labels.columns) == [*separate.keys, separate.target] and labels[separate.target].notna().all()
    # the same world in either layout gives the same labelled rows
    pd.testing.assert_frame_equal(load_landing(separate, tmp_path), load_landing(use_case, in_batches))


def test_separate_rows_without_a_label_yet_are_left_out(separate, tmp_path):
    days = pd.concat([readings(d, size=10) for d in (0, 1)], ignore_index=True)
    land_separately(separate, days, tmp_path)
    (tmp_path / "labels" / "2026-02-04.parquet").unlink()  # the labels of day 1 have not arrived
    landed = load_landing(separate, tmp_path)
    assert set(landed[separate.timestamp].dt.day) == {1} and 0 < len(landed) <= 10


def test_feature_rows_drop_the_target_when_there_is_one(use_case):
    batch = readings(0, size=5)
    assert list(feature_rows(use_case, batch).columns) == [c for c in batch.columns if c != use_case.target]
    features_only = batch.drop(columns=[use_case.target])
    pd.testing.assert_frame_equal(feature_rows(use_case, features_only), features_only)


def test_read_batches_is_oldest_first_and_says_where_nothing_was_found(in_batches, tmp_path):
    batches = read_batches(in_batches / "features")
    assert batches["observed_at"].is_monotonic_increasing
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_batches(tmp_path)


def test_a_valid_batch_comes_back_unchanged(use_case):
    batch = readings(0, size=30)
    pd.testing.assert_frame_equal(validate_batch(batch, use_case.schema, use_case.keys), batch)


def test_validate_batch_names_each_column_its_check_and_first_row(use_case):
    batch = readings(0, size=50)
    batch.loc[7, "temperature"] = 500.0
    batch.loc[[9, 3], "load_pct"] = np.nan
    batch.loc[12, "line"] = "delta"
    batch.loc[20, "device_id"] = batch.loc[21, "device_id"]
    with pytest.raises(BatchSchemaError) as caught:
        validate_batch(batch, use_case.schema, use_case.keys, file="features/2026-02-03.parquet")
    error = caught.value
    assert isinstance(error, NotebenchError) and isinstance(error, ValueError)
    assert sorted(error.problems) == sorted([
        "device_id, observed_at: duplicated in 2 rows (first at row 20)",
        "temperature: in_range(-50, 200) fails in 1 row (first at row 7), e.g. ['500.0']",
        "load_pct: null in 2 rows (first at row 3), but the column may not be null",
        "line: isin(['alpha', 'beta', 'gamma']) fails in 1 row (first at row 12), e.g. ['delta']",
    ])
    assert str(error).startswith("features/2026-02-03.parquet: batch does not match the schema:")
    assert all(f"- {p}" in str(error) for p in error.problems)
    assert error.failure_cases is not None and {7, 3, 9, 12} <= set(error.failure_cases["index"].dropna())


def test_validate_batch_names_missing_unexpected_and_retyped_columns(use_case):
    batch = readings(0, size=20).drop(columns=["vibration"]).assign(
        extra=1, hours_since_service=lambda f: f["hours_since_service"].astype(float))
    with pytest.raises(BatchSchemaError) as caught:
        validate_batch(batch, use_case.schema, use_case.keys)
    assert sorted(caught.value.problems) == ["extra: unexpected column (not in the schema)",
                                             "hours_since_service: expected dtype int64, got float64",
                                             "vibration: column is missing"]


def test_time_split_holds_out_the_last_calendar_days(use_case):
    ts = use_case.timestamp
    days = pd.concat([readings(d, size=5) for d in range(10)], ignore_index=True)
    late = days.iloc[[30]].assign(**{ts: days[ts].iloc[30].floor("D") + pd.Timedelta(hours=23, minutes=59)})
    frame = pd.concat([days, late], ignore_index=True)  # day 6 at 23:59: still a training day
    train, holdout = time_split(frame, ts, holdout_days=3)
    assert set(holdout[ts].dt.day) == {8, 9, 10} and set(train[ts].dt.day) == set(range(1, 8))
    assert len(train) + len(holdout) == len(frame) and list(holdout.index) == list(range(len(holdout)))
    train, holdout = time_split(frame, ts, holdout_days=3, gap_days=2)  # two days between them, in neither
    assert set(train[ts].dt.day) == set(range(1, 6)) and set(holdout[ts].dt.day) == {8, 9, 10}
    with pytest.raises(ValueError, match="holdout_days >= 1"):
        time_split(frame, ts, holdout_days=0)
    with pytest.raises(ValueError, match="gap_days >= 0"):
        time_split(frame, ts, holdout_days=3, gap_days=-1)
    with pytest.raises(ValueError, match="no training data left before the 8-day holdout"):
        time_split(frame, ts, holdout_days=8, gap_days=2)
