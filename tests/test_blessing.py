"""The blessing gate: absolute minimum, no regression against the champion overall and per segment, NaN handled."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from notebench.evaluation import evaluate
from notebench.registry.models import NO_BASELINE, blessing, blessing_markdown

GATES = dict(minimum=0.70, max_regression=0.01, segment_tolerance=0.02)


def report(overall: float, **segments: float) -> dict:
    """An evaluation report as `evaluate` shapes it, with only the metric the gates read."""
    return {"overall": {"auc": overall, "n": 100}, "segments": {k.replace("_", "=", 1): {"auc": v, "n": 10}
                                                               for k, v in segments.items()}}


def failed(result: dict) -> list[dict]:
    return [c for c in result["checks"] if c["status"] == "failed"]


def test_first_model_is_blessed_on_absolute_thresholds_with_the_no_baseline_reason():
    result = blessing(report(0.81, line_alpha=0.5), None, **GATES)
    assert result["blessed"] is True
    assert NO_BASELINE in result["reasons"]
    assert NO_BASELINE == "no champion yet: no baseline to compare with"
    assert [c["check"] for c in result["checks"]] == ["minimum", "baseline"]  # segments need a baseline


def test_first_model_below_the_minimum_is_not_blessed_and_says_by_how_much():
    result = blessing(report(0.65), None, **GATES)
    assert result["blessed"] is False
    assert failed(result)[0]["check"] == "minimum"
    assert "auc overall 0.6500 < minimum 0.7000" in result["reasons"][0]


def test_worse_than_champion_on_one_segment_is_not_blessed_and_names_that_segment():
    champion = report(0.80, line_alpha=0.82, line_beta=0.78, site_plant_1=0.75)
    candidate = report(0.805, line_alpha=0.76, line_beta=0.79, site_plant_1=0.745)
    result = blessing(candidate, champion, baseline_label="champion v3", **GATES)
    assert result["blessed"] is False
    (bad,) = failed(result)
    assert bad["check"] == "segment" and bad["scope"] == "line=alpha"
    assert bad["value"] == 0.76 and bad["baseline"] == 0.82 and bad["bound"] == 0.02
    assert result["reasons"] == [bad["reason"]]
    assert "line=alpha" in bad["reason"] and "champion v3" in bad["reason"] and "0.0600" in bad["reason"]
    passed = {c["scope"] for c in result["checks"] if c["status"] == "passed"}
    assert {"overall", "line=beta", "site=plant_1"} <= passed  # a drop of 0.005 is within tolerance


def test_overall_regression_beyond_max_regression_is_not_blessed():
    result = blessing(report(0.78, line_alpha=0.8), report(0.80, line_alpha=0.8), **GATES)
    assert result["blessed"] is False
    (bad,) = failed(result)
    assert bad["check"] == "regression" and math.isclose(bad["drop"], 0.02)
    assert "max_regression 0.0100" in bad["reason"]


def test_nan_segment_is_skipped_with_a_reason_and_does_not_block():
    champion = report(0.80, line_gamma=float("nan"), site_plant_1=0.8)
    candidate = report(0.80, line_gamma=None, site_plant_1=0.8)  # the evaluation product writes NaN as null
    result = blessing(candidate, champion, **GATES)
    assert result["blessed"] is True
    skipped = [c for c in result["checks"] if c["status"] == "skipped"]
    assert [c["scope"] for c in skipped] == ["line=gamma"]
    assert "undefined for the candidate and the champion" in skipped[0]["reason"]
    assert skipped[0]["reason"] in result["reasons"]


def test_a_real_report_with_a_single_class_segment_is_skipped_not_failed():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"site": ["plant_1"] * 50 + ["plant_2"] * 50})
    y = np.r_[rng.integers(0, 2, 50), np.zeros(50, int)]  # plant_2 has no failure: its AUC is undefined
    champion = evaluate(y, np.clip(y * 0.6 + rng.random(100) * 0.4, 0, 1), frame, ["site"])
    candidate = evaluate(y, np.clip(y * 0.7 + rng.random(100) * 0.3, 0, 1), frame, ["site"])
    assert math.isnan(candidate["segments"]["site=plant_2"]["auc"])
    result = blessing(candidate, champion, **GATES)
    assert result["blessed"] is True
    plant_2 = next(c for c in result["checks"] if c["scope"] == "site=plant_2")
    assert plant_2["status"] == "skipped" and "site=plant_2 skipped" in plant_2["reason"]


def test_a_champion_that_cannot_be_rescored_fails_the_gate_instead_of_passing_as_first_model():
    result = blessing(report(0.9), None, baseline_label="champion v2", baseline_error="missing column site", **GATES)
    assert result["blessed"] is False
    assert "champion v2 could not be scored on this holdout (missing column site)" in result["reasons"][0]
    assert NO_BASELINE not in result["reasons"]


def test_a_failed_infra_check_blocks_the_blessing():
    infra = {"check": "infra", "scope": "serving", "status": "failed", "passed": False,
             "reason": "models:/m-1 fails to load or predict in a fresh process: ModuleNotFoundError"}
    result = blessing(report(0.9), None, infra=infra, **GATES)
    assert result["blessed"] is False
    assert result["reasons"][0] == infra["reason"]


@pytest.mark.parametrize("blessed", [True, False])
def test_markdown_shows_the_verdict_and_every_check(blessed):
    candidate = report(0.80, line_alpha=0.80 if blessed else 0.70)
    result = blessing(candidate, report(0.80, line_alpha=0.80), **GATES)
    text = blessing_markdown(result)
    assert ("**blessed**" if blessed else "**not blessed**") in text
    assert text.count("\n| ") == 1 + len(result["checks"])  # header + one row per check
    assert "line=alpha" in text
