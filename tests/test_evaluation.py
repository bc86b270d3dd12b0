"""Holdout metrics (`notebench.evaluation`): right on small, awkward inputs, NaN where undefined, safe MLflow names.

A model is blessed or refused on these numbers. A segment with a dozen devices, none of which failed, is normal:
every report has the same keys whatever the data, and a metric the data cannot define is NaN, never a made-up 0
and never silently missing. Four rows are enough to check every number by hand.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from fixture_lib.use_case import readings
from notebench.evaluation import evaluate, flatten, metrics, positive_scores, primary_score

# one of the four positive/negative pairs is ranked wrongly; at 0.5 only the last row is predicted positive
Y, S = [0, 0, 1, 1], [.1, .4, .35, .8]
KEYS = ["n", "positive_rate", "mean_score", "auc", "average_precision", "log_loss", "brier", "accuracy", "precision",
        "recall", "f1"]


def test_every_metric_of_four_rows_checked_by_hand():
    expected = dict(n=4, positive_rate=.5, mean_score=.4125, auc=.75, average_precision=(1 + 2 / 3) / 2,
                    log_loss=-np.log([.9, .6, .35, .8]).mean(), brier=(.01 + .16 + .4225 + .04) / 4,
                    accuracy=.75, precision=1, recall=.5, f1=2 / 3)
    m = metrics(Y, S)
    assert list(m) == list(expected) == KEYS
    assert [m[k] for k in expected] == pytest.approx(list(expected.values()))
    assert all(type(v) is float for v in m.values())  # plain floats, ready for JSON and MLflow


def test_the_threshold_moves_only_the_decision_metrics():
    m, low = metrics(Y, S), metrics(Y, S, threshold=.3)  # at 0.3 the second row is flagged too
    assert [low[k] for k in ("accuracy", "precision", "recall", "f1")] == pytest.approx([.75, 2 / 3, 1, .8])
    assert {k: low[k] for k in ("auc", "log_loss", "brier")} == {k: m[k] for k in ("auc", "log_loss", "brier")}


def test_a_single_class_makes_ranking_metrics_nan_and_keeps_the_rest():
    one_class = metrics([1, 1, 1], [.9, .6, .2])
    assert list(one_class) == KEYS  # the same keys whatever the data
    assert math.isnan(one_class["auc"]) and math.isnan(one_class["average_precision"])
    assert [one_class[k] for k in ("accuracy", "precision", "recall")] == pytest.approx([2 / 3, 1, 2 / 3])
    assert math.isnan(metrics([0, 0], [.1, .2])["precision"])  # nothing predicted positive
    assert math.isnan(metrics([0, 0], [.6, .2])["recall"])  # no positives


@pytest.mark.parametrize(("labels", "scores", "says"), [
    (Y, np.array([[.9, .1]] * 4), "predict_proba(X)[:, 1]"),  # the mistake readers make: both columns
    (Y, [.1, .4, np.nan, 1.2], "probabilities in [0, 1]"),  # a NaN, a decision function
    ([0, 2, 1, 1], S, "0/1 labels"),
    (Y, S[:3], "as many labels as scores"),
    ([], [], "at least one"),
])
def test_wrong_inputs_are_refused_saying_what_to_pass(labels, scores, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        metrics(labels, scores)


FRAME = pd.DataFrame({"site": ["plant_1", "plant_1", "plant_1", "plant_2", "plant_2", None],
                      "line": ["alpha", "beta", "alpha", "alpha", "beta", "alpha"]})
LABELS, SCORES = [0, 1, 1, 0, 0, 1], [.2, .9, .3, .6, .1, .7]


def test_segments_in_column_then_value_order_with_missing_its_own_segment():
    report = evaluate(LABELS, SCORES, FRAME, segments=("site", "line"))
    assert list(report["segments"]) == ["site=missing", "site=plant_1", "site=plant_2", "line=alpha", "line=beta"]
    assert report["segments"]["site=plant_1"]["auc"] == 1.0
    assert report["segments"]["site=plant_1"]["recall"] == .5
    assert report["segments"]["site=plant_1"]["n"] == 3  # `n` travels with every segment
    assert math.isnan(report["segments"]["site=plant_2"]["auc"])  # nothing failed at plant_2
    assert report["overall"] == metrics(LABELS, SCORES)
    assert evaluate(LABELS, SCORES, FRAME, "site")["segments"].keys() == {"site=missing", "site=plant_1",
                                                                            "site=plant_2"}
    assert evaluate(LABELS, SCORES)["segments"] == {}


def test_segments_need_a_frame_with_one_row_per_label():
    with pytest.raises(ValueError, match="one row per label"):
        evaluate(LABELS, SCORES, None, "site")
    with pytest.raises(ValueError, match="one row per label"):
        evaluate(LABELS, SCORES, FRAME.head(3), "site")


def test_flatten_gives_valid_unambiguous_mlflow_names():
    report = evaluate(LABELS, SCORES, FRAME, segments=("site", "line"))
    flat = flatten(report)
    assert flat["auc"] == report["overall"]["auc"]
    assert flat["segment.site.plant_1.auc"] == 1.0
    assert math.isnan(flat["segment.site.plant_2.auc"])  # NaN kept: MLflow records it as NaN
    assert len(flat) == len(KEYS) * (1 + len(report["segments"]))
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) for name in flat)


def test_awkward_values_become_safe_names_and_colliding_ones_are_refused():
    odd = pd.DataFrame({"store": ["Zürich/Main St.", "Zürich/Main St.", "a b", "a b"]})
    names = {k.rsplit(".", 1)[0] for k in flatten(evaluate([0, 1, 0, 1], [.2, .8, .3, .6], odd, "store"))
             if k.startswith("segment.")}
    assert sorted(names) == ["segment.store.Z_rich_Main_St_", "segment.store.a_b"]
    clash = pd.DataFrame({"store": ["a b", "a b", "a/b", "a/b"]})
    with pytest.raises(ValueError, match="segment.store.a_b"):
        flatten(evaluate([0, 1, 0, 1], [.2, .8, .3, .6], clash, "store"))


@pytest.fixture(scope="module")
def fitted(use_case):
    """(model, holdout): the use case's model fitted on six days of readings, a later day held out."""
    known = lambda frame: frame[frame[use_case.target].notna()].reset_index(drop=True)  # noqa: E731
    train = known(pd.concat([readings(d, size=300) for d in range(6)], ignore_index=True))
    model = use_case.make_model().fit(train[use_case.features], train[use_case.target].astype(int))
    return model, known(readings(8, size=300))


def test_positive_scores_are_the_positive_class_of_the_feature_columns(use_case, fitted):
    model, holdout = fitted
    scores = positive_scores(model, holdout, use_case.features)
    assert scores.shape == (len(holdout),) and ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_array_equal(scores, model.predict_proba(holdout[use_case.features])[:, 1])
    # only the feature columns are passed, in the contract's order, whatever else the frame holds
    shuffled = holdout[[*reversed(holdout.columns)]].assign(extra="x")
    np.testing.assert_array_equal(positive_scores(model, shuffled, use_case.features), scores)


def test_primary_score_is_the_contracts_metric_on_labelled_rows(use_case, fitted):
    model, holdout = fitted
    assert use_case.metric == "auc" and use_case.maximize
    score = primary_score(use_case, model, holdout)
    assert score == metrics(holdout[use_case.target], positive_scores(model, holdout, use_case.features))["auc"]
    assert .6 < score < 1  # the model learned something from the readings
    brier = dataclasses.replace(use_case, metric="brier")
    assert brier.direction == "minimize" and not brier.maximize  # derived again from the new metric
    assert primary_score(brier, model, holdout) == pytest.approx(
        np.mean((positive_scores(model, holdout, use_case.features) - holdout[use_case.target]) ** 2))
    scorer = dataclasses.replace(use_case, metric="neg_log_loss")  # any scikit-learn scorer by name
    assert scorer.maximize and primary_score(scorer, model, holdout) == pytest.approx(
        -metrics(holdout[use_case.target], positive_scores(model, holdout, use_case.features))["log_loss"])


def test_replace_derives_a_defaulted_metric_and_direction_again_and_keeps_what_was_given(use_case):
    from notebench.usecase import METRICS, metric_direction

    regression = dataclasses.replace(use_case, task="regression")
    assert regression.metric == METRICS["regression"]
    assert regression.direction == metric_direction(METRICS["regression"]) == "minimize"
    given = dataclasses.replace(use_case, metric="brier", direction="maximize")  # the user's word, however odd
    assert dataclasses.replace(given, segments=()).direction == "maximize"
    assert dataclasses.replace(given, metric="log_loss").direction == "maximize"
    assert dataclasses.replace(given, task="regression").metric == "brier"
    assert type(given.metric) is str and json.loads(json.dumps({"m": regression.metric})) == {"m": "rmse"}
