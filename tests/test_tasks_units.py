"""Every task's numbers and verdicts, checked by hand on rows small enough to count: the metrics of a multiclass and a
regression model, any scikit-learn scorer by name, the contract's metric, the blessing gate in a metric's direction,
the renamed settings, and the engine's default model."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pandas as pd
import pytest
from notebench.errors import SettingsError
from notebench.evaluation import (
    as_predictions,
    evaluate,
    flatten,
    key_metrics,
    multiclass_metrics,
    regression_metrics,
    score,
    task_metrics,
)
from notebench.models import default_model, default_search_space
from notebench.registry.models import blessing
from notebench.registry.tracking import predict_fn
from notebench.settings import load_settings
from notebench.usecase import TASK_METRICS, load_use_case
from threadpoolctl import threadpool_limits

# four rows, three classes: the last row ("b", predicted "a") is the one mistake
CLASSES = ["a", "b", "c"]
PROBA = pd.DataFrame([[.7, .2, .1], [.1, .8, .1], [.2, .2, .6], [.5, .4, .1]], columns=CLASSES)
LABELS = ["a", "b", "c", "b"]


def test_multiclass_metrics_of_four_rows_checked_by_hand():
    m = multiclass_metrics(LABELS, PROBA)
    assert list(m) == list(TASK_METRICS["multiclass"])
    # recall per class a 1, b 1/2, c 1; precision a 1/2, b 1, c 1
    expected = dict(n=4, accuracy=.75, balanced_accuracy=(1 + .5 + 1) / 3, precision_macro=(.5 + 1 + 1) / 3,
                    recall_macro=(1 + .5 + 1) / 3, f1_macro=(2 / 3 + 2 / 3 + 1) / 3,
                    log_loss=-np.log([.7, .8, .6, .4]).mean(), roc_auc_ovr=1.0)
    assert m == pytest.approx(expected)
    assert m == multiclass_metrics(LABELS, PROBA.to_numpy(), classes=CLASSES)  # a matrix and its classes


def test_multiclass_undefined_metrics_are_nan_and_bad_inputs_are_named():
    one = multiclass_metrics(["b", "b"], PROBA.iloc[1:3])
    assert math.isnan(one["roc_auc_ovr"]) and one["accuracy"] == .5  # one class only: no ranking
    assert one["log_loss"] == pytest.approx(-np.log([.8, .2]).mean())  # the absent classes still count
    with pytest.raises(ValueError, match="labels that are not classes of the model: z"):
        multiclass_metrics(["a", "z", "c", "b"], PROBA)
    with pytest.raises(ValueError, match="sum to 1"):
        multiclass_metrics(LABELS, PROBA * 2)
    with pytest.raises(ValueError, match="need their class labels"):
        multiclass_metrics(LABELS, PROBA.to_numpy())


def test_regression_metrics_checked_by_hand_and_nan_where_undefined():
    m = regression_metrics([1, 2, 3, 4], [1, 2, 2, 5])  # errors 0, 0, -1, +1
    assert list(m) == list(TASK_METRICS["regression"])
    assert m == pytest.approx(dict(n=4, mean_target=2.5, mean_prediction=2.5, rmse=math.sqrt(.5), mae=.5,
                                   r2=1 - 2 / 5, mape=(1 / 3 + 1 / 4) / 4))
    assert math.isnan(regression_metrics([2, 2], [1, 3])["r2"])  # a constant target explains nothing
    assert math.isnan(regression_metrics([0, 2], [1, 3])["mape"])  # relative to 0: undefined
    with pytest.raises(ValueError, match="finite numbers"):
        regression_metrics([1, np.nan], [1, 2])


def test_segments_and_mlflow_names_for_every_task():
    frame = pd.DataFrame({"line": ["x", "x", "y", "y"]})
    report = evaluate(LABELS, PROBA, frame, "line", task="multiclass")
    assert report["segments"]["line=x"]["accuracy"] == 1 and report["segments"]["line=y"]["accuracy"] == .5
    assert flatten(report)["segment.line.y.log_loss"] == pytest.approx(-np.log([.6, .4]).mean())
    values = evaluate([1, 2, 3, 4], [1, 2, 2, 5], frame, "line", task="regression")["segments"]
    assert (values["line=x"]["rmse"], values["line=y"]["mae"]) == (0, 1)


def test_any_scikit_learn_scorer_by_name_on_predictions_already_made():
    assert score("regression", "neg_mean_absolute_error", [1, 2, 3, 4], [1, 2, 2, 5]) == -.5
    assert score("multiclass", "neg_log_loss", LABELS, PROBA) == pytest.approx(np.log([.7, .8, .6, .4]).mean())
    assert score("multiclass", "top_k_accuracy", LABELS, PROBA) == 1  # the last row's class is second best
    assert score("binary", "roc_auc", [0, 1, 1, 0], [.2, .7, .6, .1]) == 1
    assert task_metrics("regression", [1, 2], [1, 3], extra=("neg_max_error",))["neg_max_error"] == -1
    with pytest.raises(ValueError, match="'lift' is neither a regression metric .* nor a scikit-learn scorer"):
        score("regression", "lift", [1, 2], [1, 2])


def test_raw_outputs_read_as_the_task_reads_them_and_key_metrics_lead_with_the_primary():
    np.testing.assert_array_equal(as_predictions("binary", [[.9, .1], [.2, .8]]), [.1, .8])
    assert list(as_predictions("multiclass", PROBA.to_numpy(), CLASSES).columns) == CLASSES
    np.testing.assert_array_equal(as_predictions("regression", [[3.0], [4.0]]), [3, 4])
    assert key_metrics("regression", "neg_mean_absolute_error")[:2] == ("neg_mean_absolute_error", "rmse")
    assert key_metrics("binary", "auc") == ("auc", "average_precision", "log_loss", "brier")


def test_the_contract_takes_a_metric_of_its_task_or_a_scorer(use_case):
    regression = dataclasses.replace(use_case, task="regression", metric="", direction="")
    assert (regression.metric, regression.direction) == ("rmse", "minimize")
    scorer = dataclasses.replace(regression, metric="neg_mean_absolute_error", direction="")
    assert scorer.maximize and scorer.problems() == []
    (wrong,) = dataclasses.replace(regression, metric="auc", direction="maximize").problems()
    assert "metric 'auc': not a regression metric" in wrong and "rmse" in wrong and "scikit-learn scorer" in wrong
    multiclass = load_use_case(reference="fixture_lib.multiclass:USE_CASE")
    assert (multiclass.task, multiclass.metric, multiclass.direction) == ("multiclass", "log_loss", "minimize")


# ---------------------------------------------------------------------------------------------------------
# blessing in the metric's direction

GATES = dict(max_regression=0.5, segment_tolerance=1.0, metric="rmse", direction="minimize",
             baseline_label="champion v3")


def rmse(overall: float, **segments: float) -> dict:
    return {"overall": {"rmse": overall}, "segments": {k.replace("_", "=", 1): {"rmse": v}
                                                       for k, v in segments.items()}}


def test_a_lower_rmse_is_blessed_and_the_reasons_say_it_did_not_rise():
    result = blessing(rmse(4.1, line_alpha=3.0), rmse(4.3, line_alpha=3.2), threshold=5.0, **GATES)
    assert result["blessed"] is True
    assert result["reasons"][:2] == ["rmse overall 4.1000 <= maximum 5.0000",
                                     "rmse overall 4.1000 did not rise above champion v3's 4.3000"]
    assert "rmse on segment line=alpha 3.0000 did not rise above champion v3's 3.2000" in result["reasons"]


def test_a_higher_rmse_beyond_the_tolerances_or_above_the_maximum_is_refused():
    worse = blessing(rmse(4.9, line_alpha=4.5), rmse(4.3, line_alpha=3.2), threshold=5.0, **GATES)
    assert worse["blessed"] is False
    assert worse["reasons"] == ["rmse overall 4.9000 rose 0.6000 above champion v3's 4.3000, more than max_regression "
                                "0.5000", "rmse on segment line=alpha 4.5000 rose 1.3000 above champion v3's 3.2000, "
                                "more than segment_tolerance 1.0000"]
    within = blessing(rmse(4.6), rmse(4.3), threshold=5.0, **GATES)
    assert within["blessed"] and "rose 0.3000 above champion v3's 4.3000, within max_regression" in within["reasons"][1]
    first = blessing(rmse(5.5), None, threshold=5.0, **GATES)
    assert first["reasons"][0] == "rmse overall 5.5000 > maximum 5.0000: above the absolute threshold"


def test_no_threshold_skips_the_absolute_check_and_a_wrong_direction_is_refused():
    result = blessing(rmse(50.0), None, threshold=None, **GATES)
    assert result["blessed"] is True
    assert result["checks"][0]["status"] == "skipped" and "[gates] metric_threshold is empty" in result["reasons"][0]
    with pytest.raises(ValueError, match="direction 'up'"):
        blessing(rmse(1.0), None, **{**GATES, "direction": "up"})


# ---------------------------------------------------------------------------------------------------------
# settings


@pytest.mark.parametrize(("text", "environ", "old", "new"), [
    ("[gates]\nmin_auc = 0.7\n", {}, "[gates] min_auc (in the settings file)", "[gates] metric_threshold"),
    ("", {"NOTEBENCH_GATES_MIN_AUC": "0.7"}, "NOTEBENCH_GATES_MIN_AUC", "NOTEBENCH_GATES_METRIC_THRESHOLD"),
    ("[monitoring]\nmax_auc_drop = 0.05\n", {}, "[monitoring] max_auc_drop", "[monitoring] max_metric_drop"),
    ("", {"NOTEBENCH_MONITORING_MAX_AUC_DROP": "1"}, "NOTEBENCH_MONITORING_MAX_AUC_DROP", "max_metric_drop"),
])
def test_an_old_key_is_refused_naming_the_new_one(tmp_path, text, environ, old, new):
    path = tmp_path / "settings.ini"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        load_settings(path, environ=environ)
    assert old in str(err.value) and "was renamed: use" in str(err.value) and new in str(err.value)


def test_the_metric_threshold_may_be_empty(tmp_path):
    path = tmp_path / "settings.ini"
    path.write_text("[gates]\nmetric_threshold =\n")
    assert load_settings(path, environ={}).value("gates", "metric_threshold") is None
    path.write_text("[gates]\nmetric_threshold = -4.5\n")  # a scorer's negated loss: below zero
    assert load_settings(path, environ={}).value("gates", "metric_threshold") == -4.5


# ---------------------------------------------------------------------------------------------------------
# the default model


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_the_default_model_fits_any_task_with_unseen_missing_and_many_categories(task):
    import optuna

    rng = np.random.default_rng(0)
    n = 600
    frame = pd.DataFrame({"x": rng.normal(size=n), "z": np.where(rng.random(n) < .1, np.nan, rng.normal(size=n)),
                          "kind": rng.choice(["p", "q", None], n), "id": [f"k{i}" for i in rng.integers(0, 400, n)]})
    signal = 2 * frame["x"] + (frame["kind"] == "p")
    target = {"binary": (signal > .5).astype(float), "regression": signal + rng.normal(0, .1, n),
              "multiclass": pd.cut(signal, [-np.inf, -1, 1, np.inf], labels=["lo", "mid", "hi"]).astype(str)}[task]
    params = default_search_space(optuna.trial.FixedTrial({"learning_rate": .1, "max_leaf_nodes": 15,
                                                           "min_samples_leaf": 10, "l2_regularization": 1e-3,
                                                           "max_iter": 50}))
    with threadpool_limits(limits=1, user_api="openmp"):  # two busy cores: one OpenMP thread fits faster
        model = default_model(task, ["x", "z"], ["kind", "id"], params).fit(frame, target)
    new = frame.head(3).assign(kind=["r", None, "p"], id=["never", "seen", "k1"])  # unseen and missing categories
    out = getattr(model, predict_fn(model, task))(new)
    assert out.shape == {"binary": (3, 2), "multiclass": (3, 3), "regression": (3,)}[task]
    assert predict_fn(model) == predict_fn(model, task)  # the model alone says how it answers
    if task == "regression":
        assert np.corrcoef(model.predict(frame), target)[0, 1] > .9
    with pytest.raises(ValueError, match=re.escape("task 'ranking'")):
        default_model("ranking", ["x"], [])


def test_check_wants_numbers_for_a_regression_and_takes_three_classes_for_a_multiclass():
    from notebench.check import target_problems

    regression = load_use_case(reference="fixture_lib.regression:USE_CASE")
    words = pd.DataFrame({regression.target: ["long", "short", "long"]})
    (problem,) = target_problems(regression, words)
    assert "task = 'regression' needs numbers" in problem and "'long', 'short'" in problem
    assert target_problems(regression, pd.DataFrame({regression.target: [3.5, 120.0]})) == []
    multiclass = load_use_case(reference="fixture_lib.multiclass:USE_CASE")
    assert target_problems(multiclass, pd.DataFrame({multiclass.target: ["ok", "failed", "degraded"]})) == []
