"""Monitoring a multiclass and a regression model on real prediction-log segments and a real registry, with stand-in
models whose outputs are known: live quality on the task's metrics against the holdout's, in the metric's direction,
and prediction drift on what the task predicts (a multiclass model's predicted classes, a regressor's values)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fixture_lib.use_case import readings
from notebench.monitoring.drift import profile
from notebench.monitoring.monitor import monitor, read_results
from notebench.registry.models import metric_tags
from notebench.registry.models import register as register_version
from notebench.serving.predlog import PredictionLog, log_root
from notebench.usecase import load_use_case
from notebench.workspace import Workspace

MODEL = "notebench-model"
HOUR_AGO = time.time() - 3600
CLASSES = ["degraded", "failed", "ok"]  # as model.classes_ orders them
WINDOW = 300


@pytest.fixture(autouse=True)
def small_windows(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NOTEBENCH_MONITORING_WINDOW", str(WINDOW))
    monkeypatch.setenv("NOTEBENCH_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    return pd.concat([readings(day, size=500) for day in range(6)], ignore_index=True)


def class_probabilities(frame: pd.DataFrame) -> np.ndarray:
    """A stand-in multiclass model: hot, busy devices fail, long-unserviced ones degrade."""
    failed = 0.08 * (frame["temperature"] - 60) + 0.04 * (frame["load_pct"] - 55) - 1.5
    degraded = frame["hours_since_service"].to_numpy() / 250 - 1.5
    logits = np.column_stack([degraded, failed, np.zeros(len(frame))])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hours(frame: pd.DataFrame) -> np.ndarray:
    """A stand-in regressor: the hours a device has left."""
    return (760 - frame["hours_since_service"].to_numpy()) * np.exp(-0.02 * (frame["temperature"] - 60).to_numpy())


def register(reference: dict, holdout: dict) -> str:
    ws = Workspace()
    client = ws.client()
    run = client.create_run(ws.experiment_id(client))
    client.log_dict(run.info.run_id, reference, "reference/profile.json")
    client.set_terminated(run.info.run_id)
    return register_version(client, MODEL, f"runs:/{run.info.run_id}/model", metric_tags(holdout),
                            run_id=run.info.run_id)


def use(monkeypatch, reference: str) -> object:
    monkeypatch.setenv("NOTEBENCH_USE_CASE_OBJECT", reference)
    return load_use_case()


def log(workspace, frame: pd.DataFrame, output: np.ndarray, labels: list, version: str, start: float) -> None:
    """`frame` as logged requests of 50 rows answered with `output`, then `labels` as their feedback."""
    writer = PredictionLog(log_root(workspace), flush_interval=0.05).start()
    served, items = SimpleNamespace(name=MODEL, version=version), []
    features = [c for c in frame.columns if c not in ("device_id", "observed_at", "failed")]
    for i in range(0, len(frame), 50):
        chunk = frame.iloc[i:i + 50]
        writer.log(request_id=f"r{start}-{i}", endpoint="/predict", model=served, rows=len(chunk),
                   started=start + i / 1e3, latency=0.002, columns={c: chunk[c].to_numpy() for c in features},
                   output=output[i:i + 50])
        items += [{"request_id": f"r{start}-{i}", "row": r, "label": labels[i + r]} for r in range(len(chunk))]
    writer.flush()
    writer.feedback(items).result(timeout=30)
    writer.close()


def test_multiclass_quality_and_prediction_drift_on_the_predicted_classes(workspace, world, monkeypatch):
    uc = use(monkeypatch, "fixture_lib.multiclass:USE_CASE")
    rng = np.random.default_rng(0)
    frame = world.sample(3 * WINDOW, random_state=1).reset_index(drop=True)
    proba = class_probabilities(frame)
    truth = [CLASSES[rng.choice(3, p=p)] for p in proba]  # the model is right about these
    first = proba[np.arange(WINDOW), [CLASSES.index(t) for t in truth[:WINDOW]]]
    holdout = {"log_loss": float(-np.mean(np.log(first))), "accuracy": 0.6}  # as the first window's
    reference = profile(world, list(uc.numeric), list(uc.categorical))
    reference.update(task="multiclass", classes=CLASSES, prediction=profile(pd.DataFrame(
        {"prediction": np.asarray(CLASSES, dtype=object)[class_probabilities(world).argmax(axis=1)]}), [],
        ["prediction"])["columns"]["prediction"])
    version = register(reference, holdout)

    wrong = list(rng.choice(CLASSES, WINDOW))  # the second window's labels no longer follow the model
    wrong[:5] = ["exploded"] * 5  # no class of the version: left out, and counted
    sure = np.tile([0.01, 0.98, 0.01], (WINDOW, 1))  # the third window: the model says "failed" to everyone
    log(workspace, frame, np.vstack([proba[:2 * WINDOW], sure]), truth[:WINDOW] + wrong + truth[2 * WINDOW:],
        version, HOUR_AGO)
    report = monitor(log_to_mlflow=False)

    assert [q["metric"] for q in report.quality] == ["log_loss"] * 3
    good, bad, failed = report.quality
    assert good["log_loss"] == pytest.approx(holdout["log_loss"]) and not good["alert"]
    assert bad["alert"] and bad["unknown_labels"] == 5 and bad["labels"] == WINDOW
    assert 0 < bad["accuracy"] < good["accuracy"]
    results = read_results(workspace)
    quality = results[results["check"] == "quality"]
    assert set(quality["method"]) == {"log_loss", "accuracy"}  # the primary metric, then the task's own
    assert quality[quality["method"] == "log_loss"]["threshold"].tolist() == pytest.approx([holdout["log_loss"]
                                                                                           + 0.05] * 3)
    drift = results[results["check"] == "prediction_drift"]
    assert drift["method"].tolist() == ["chi2"] * 3 and drift["alert"].tolist() == [False, False, True]
    assert json.loads(drift["details"].iloc[0])["on"] == "predicted class"
    reasons = [a.reason for a in report.alerts if a.kind == "quality"]
    assert any("live log_loss" in r and "above the holdout's" in r for r in reasons)


def test_regression_quality_is_the_error_against_the_holdouts_and_drift_is_on_the_values(workspace, world,
                                                                                       monkeypatch):
    uc = use(monkeypatch, "fixture_lib.regression:USE_CASE")
    monkeypatch.setenv("NOTEBENCH_MONITORING_MAX_METRIC_DROP", "10")  # hours
    rng = np.random.default_rng(1)
    frame = world.sample(2 * WINDOW, random_state=2).reset_index(drop=True)
    predicted = hours(frame)
    truth = predicted + rng.normal(0, 20, len(frame))  # right to about 20 hours
    truth[WINDOW:] += 60  # then devices last 60 hours longer than the model says
    reference = profile(world, list(uc.numeric), list(uc.categorical))
    reference.update(task="regression", prediction=profile(pd.DataFrame({"prediction": hours(world)}),
                                                           ["prediction"], [])["columns"]["prediction"])
    version = register(reference, {"rmse": 20.0, "mae": 16.0})
    log(workspace, frame, predicted, truth.tolist(), version, HOUR_AGO)
    report = monitor(log_to_mlflow=False)

    good, late = report.quality
    assert good["rmse"] == pytest.approx(20, abs=3) and not good["alert"]
    assert late["rmse"] > 30 and late["alert"] and late["mae"] > 50
    results = read_results(workspace)
    bias = results[(results["check"] == "quality") & (results["method"] == "bias")]["statistic"].tolist()
    assert bias[0] == pytest.approx(0, abs=4) and bias[1] == pytest.approx(-60, abs=4)  # predicted - observed
    rmse = results[(results["check"] == "quality") & (results["method"] == "rmse")]
    assert rmse["threshold"].tolist() == [30.0, 30.0] and rmse["alert"].tolist() == [False, True]
    drift = results[results["check"] == "prediction_drift"]
    assert drift["method"].tolist() == ["ks", "ks"] and not drift["alert"].any()  # the same values' distribution
