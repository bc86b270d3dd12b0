"""Reference profiles and drift tests: silent on resamples of the same distribution, loud on a real shift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from notebench.monitoring.drift import column_drift, compare, profile


def world(n: int, seed: int, shift: float = 0.0, mix=(0.4, 0.3, 0.2, 0.1)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(10 + shift, 2, n), "y": rng.gamma(2, 3, n),
                         "c": rng.choice(list("abcd"), n, p=list(mix))})


@pytest.fixture(scope="module")
def reference():
    return profile(world(100_000, 0), ["x", "y"], ["c"])


def test_profile_is_plain_json(reference):
    import json

    again = json.loads(json.dumps(reference))
    assert again["columns"]["x"]["kind"] == "numeric" and len(again["columns"]["x"]["quantiles"]) == 1001
    assert again["columns"]["c"]["counts"]["a"] > again["columns"]["c"]["counts"]["d"]


@pytest.mark.parametrize("size, tests", [(500, {"ks", "chi2"}), (20_000, {"wasserstein", "jensen_shannon"})])
def test_test_is_chosen_by_window_size(reference, size, tests):
    report = compare(reference, world(size, 1))
    assert {c["drift"]["test"] for c in report["columns"].values()} == tests


@pytest.mark.parametrize("size", [300, 5_000])
def test_no_shift_false_alarm_rate_is_at_most_five_percent(reference, size):
    alarms = {"x": 0, "y": 0, "c": 0}
    trials = 200
    for seed in range(1, trials + 1):
        for name, col in compare(reference, world(size, seed))["columns"].items():
            alarms[name] += col["drift"]["drift"]
    # p < 0.05 flags 5% of no-shift windows in expectation; allow the binomial noise of 200 trials (2 sd)
    assert all(a / trials <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / trials) for a in alarms.values()), alarms


def test_a_shift_flags_the_shifted_features_and_only_those(reference):
    report = compare(reference, world(5_000, 7, shift=1.5, mix=(0.1, 0.2, 0.3, 0.4)))
    assert set(report["drifted"]) == {"x", "c"}
    assert report["dataset_drift"]  # 2 of 3 features drift, above the default share of 0.5


def test_small_shifted_windows_are_caught_by_the_tests(reference):
    caught = [set(compare(reference, world(300, seed, shift=1.0, mix=(0.1, 0.2, 0.3, 0.4)))["drifted"])
              for seed in range(20)]
    assert all({"x", "c"} <= found for found in caught)


def test_quality_counts_nulls_out_of_range_and_unseen(reference):
    frame = world(1000, 3)
    frame.loc[:99, "x"] = np.nan
    frame.loc[100:109, "y"] = 1e6
    frame.loc[110:119, "c"] = "zzz"
    cols = compare(reference, frame)["columns"]
    assert cols["x"]["quality"]["null_rate"] == pytest.approx(0.1)
    assert cols["y"]["quality"]["out_of_range"] == pytest.approx(0.01)
    assert cols["c"]["quality"]["unseen"] == pytest.approx(0.01) and cols["c"]["quality"]["unseen_values"] == ["zzz"]


def test_missing_column_counts_as_drift(reference):
    assert compare(reference, world(100, 1).drop(columns="y"))["columns"]["y"]["drift"]["test"] == "missing"


def test_constant_reference_does_not_divide_by_zero():
    ref = profile(pd.DataFrame({"k": np.ones(100)}), ["k"], [])["columns"]["k"]
    assert column_drift(ref, pd.Series(np.ones(5000)))["drift"] is False
