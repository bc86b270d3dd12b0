"""A multiclass and a regression use case through the whole loop, as a binary one goes: the real training pipeline
(papermill, MLflow, Optuna), the prediction service under a real uvicorn, feedback, and the real monitoring pipeline.

Each task's world is an engine-test fixture (`tests/fixture_project`: `fixture_lib.multiclass`, sensor states ok /
degraded / failed, and `fixture_lib.regression`, the hours a device has left, with a segment), selected through
NOTEBENCH_USE_CASE_OBJECT. The service is started before training (its imports overlap it) and waits for the
champion. Traffic is four windows of new days: two whose labels follow the world, then two whose labels were
shuffled (the model is no longer right), which must raise a quality alert on the use case's primary metric in its
direction, and nothing before.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, notebench
from fixture_models import stop_service
from notebench.usecase import TASK_METRICS, load_use_case
from notebench.workspace import Workspace

CASES = {  # the use case, and the gates in its metric's units
    "multiclass": ("fixture_lib.multiclass:USE_CASE", {"NOTEBENCH_GATES_METRIC_THRESHOLD": "1.0",
                                                       "NOTEBENCH_MONITORING_MAX_METRIC_DROP": "0.2"}),
    "regression": ("fixture_lib.regression:USE_CASE", {"NOTEBENCH_GATES_METRIC_THRESHOLD": "150",
                                                       "NOTEBENCH_GATES_MAX_REGRESSION": "5",
                                                       "NOTEBENCH_GATES_SEGMENT_TOLERANCE": "10",
                                                       "NOTEBENCH_MONITORING_MAX_METRIC_DROP": "30"}),
}
COMMON = {"NOTEBENCH_TRAINING_N_TRIALS": "2", "NOTEBENCH_TRAINING_HOLDOUT_DAYS": "3",
          "NOTEBENCH_MONITORING_WINDOW": "200", "NOTEBENCH_MONITORING_MIN_LABELS": "100",
          "NOTEBENCH_MONITORING_SETTLE": "0"}
DAYS, SIZE, SEED = 16, 120, 42  # landed arrival days (readings of days 0-13), devices, the world's seed (simulate's)
WINDOW = 200


@dataclass
class Loop:
    task: str
    uc: object
    ws: Workspace
    client: object
    name: str
    server: str
    log: Path
    training: str  # the training pipeline's output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, what: str, timeout: float = 180.0, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s")


def ready(url: str, proc: subprocess.Popen, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module", params=list(CASES))
def loop(request, tmp_path_factory):
    task = request.param
    reference, gates = CASES[task]
    root = tmp_path_factory.mktemp(task)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**COMMON, **gates, "NOTEBENCH_USE_CASE_OBJECT": reference,
                           "NOTEBENCH_WORKSPACE_PATH": str(root / "ws")}.items():
            mp.setenv(key, value)
        mp.chdir(ROOT)
        uc, ws = load_use_case(), Workspace()
        client = ws.client()
        ws.experiment_id(client)  # the SQLite store exists before the server opens it
        port, log = free_port(), root / "server.log"
        proc = subprocess.Popen([sys.executable, "-m", "notebench.serving", "--port", str(port), "--watch-interval",
                                 "0.5", "--flush-interval", "0.2", "--log-level", "warning"], cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            uc.simulate(ws.landing, days=DAYS, size=SIZE, seed=SEED)
            run = notebench("run", "training", check=True, timeout=1500)
            training = run.stdout + run.stderr
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: ready(url, proc, log), "the service serves the champion")
            yield Loop(task, uc, ws, client, ws.settings.value("registry", "model_name"), url, log, training)
        finally:
            stop_service(proc)


def products(loop: Loop, step: str, name: str):
    return json.loads((loop.ws.root / "pipelines" / "training" / "products" / step / name).read_text())


def world(loop: Loop, days: range) -> pd.DataFrame:
    """Rows of the task's world on `days` (after the landed ones), with their labels."""
    import fixture_lib.multiclass as multiclass
    import fixture_lib.regression as regression

    of_day = multiclass.states if loop.task == "multiclass" else regression.hours_left
    frame = pd.concat([of_day(d, size=SIZE, seed=SEED) for d in days], ignore_index=True)
    return frame[frame[loop.uc.target].notna()].reset_index(drop=True)


def records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


# ---------------------------------------------------------------------------------------------------------
# training


def test_training_judges_the_primary_metric_in_its_direction(loop):
    uc = loop.uc
    assert "succeeded in" in loop.training
    evaluation = products(loop, "evaluate", "evaluation.json")
    assert list(evaluation["overall"]) == list(TASK_METRICS[loop.task])
    if loop.task == "regression":  # the fixture's segment: the error per production line
        assert set(evaluation["segments"]) == {"line=alpha", "line=beta", "line=gamma"}
        assert all(v["rmse"] > 0 for v in evaluation["segments"].values())
    verdict = products(loop, "validate_model", "blessing.json")
    assert (verdict["metric"], verdict["direction"]) == (uc.metric, "minimize") and verdict["blessed"]
    value, threshold = evaluation["overall"][uc.metric], verdict["gates"]["metric_threshold"]
    assert verdict["reasons"][0] == f"{uc.metric} overall {value:.4f} <= maximum {threshold:.4f}"
    record = products(loop, "train", "model.json")
    assert (record["task"], record["metric"]) == (loop.task, uc.metric)
    assert record["classes"] == (["degraded", "failed", "ok"] if loop.task == "multiclass" else None)
    tags = loop.client.get_model_version(loop.name, "1").tags
    assert float(tags[f"notebench.metric.{uc.metric}"]) == pytest.approx(value)
    assert tags["notebench.task"] == loop.task and tags["notebench.blessed"] == "true"
    run = loop.client.get_run(tags["notebench.train_mlflow_run"])
    assert f"best_validation_{uc.metric}" in run.data.metrics
    listing = notebench("models", check=True).stdout
    assert uc.metric in listing.splitlines()[1] and "auc" not in listing.splitlines()[1]


# ---------------------------------------------------------------------------------------------------------
# serving


def test_invocations_answer_as_mlflow_models_serve_does(loop, monkeypatch):
    """MLflow's own scoring server (the app `mlflow models serve` runs) on the champion's artifact is the reference."""
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    local = mlflow.artifacts.download_artifacts(loop.client.get_model_version_download_uri(loop.name, "1"),
                                                tracking_uri=loop.ws.tracking_uri)
    monkeypatch.setenv("MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")  # `init` sets it: restored after the test
    rows = world(loop, range(14, 15)).head(5)[loop.uc.features]
    with TestClient(scoring_server.init(mlflow.pyfunc.load_model(local))) as theirs_client:
        theirs = theirs_client.post("/invocations", json={"dataframe_split": json.loads(
            rows.to_json(orient="split", index=False))})
    ours = httpx.post(f"{loop.server}/invocations", json={"dataframe_records": records(rows)}, timeout=30)
    assert theirs.status_code == ours.status_code == 200, (theirs.text, ours.text)
    assert ours.json() == {**theirs.json(), "model_version": "1"}  # the same shape and numbers, to the last digit
    predictions = np.asarray(ours.json()["predictions"])
    if loop.task == "multiclass":  # the class probabilities, in the order of the model's classes
        assert predictions.shape == (5, 3) and np.allclose(predictions.sum(axis=1), 1)
    else:  # the hours left
        assert predictions.shape == (5,) and (predictions > 0).all()


def test_predict_names_the_classes_and_refuses_input_off_the_signature(loop):
    rows = world(loop, range(14, 15)).head(3)
    answer = httpx.post(f"{loop.server}/predict", json={"records": records(rows[loop.uc.features])}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    if loop.task == "multiclass":
        assert body["classes"] == ["degraded", "failed", "ok"] and len(body["predictions"][0]) == 3
    else:
        assert "classes" not in body and all(isinstance(v, float) for v in body["predictions"])
    assert httpx.get(f"{loop.server}/model", timeout=10).json()["classes"] == body.get("classes")
    missing = httpx.post(f"{loop.server}/predict", json={"records": records(rows[loop.uc.features[1:]])}, timeout=30)
    assert missing.status_code == 422 and loop.uc.features[0] in missing.json()["message"]
    typed = records(rows[loop.uc.features])
    typed[0]["load_pct"] = "busy"
    wrong = httpx.post(f"{loop.server}/predict", json={"records": typed}, timeout=30)
    assert wrong.status_code == 422 and "load_pct" in wrong.json()["message"]


# ---------------------------------------------------------------------------------------------------------
# feedback and monitoring


def send(loop: Loop, frame: pd.DataFrame, labels) -> int:
    """`frame` as /predict requests of 50 rows, then `labels` as /feedback; the rows sent."""
    feedback = []
    with httpx.Client(base_url=loop.server, timeout=60) as http:
        for start in range(0, len(frame), 50):
            chunk = frame.iloc[start:start + 50]
            answer = http.post("/predict", json={"records": records(chunk[loop.uc.features])})
            assert answer.status_code == 200, answer.text
            rid = answer.json()["request_id"]
            feedback += [{"request_id": rid, "row": i, "label": label}
                         for i, label in enumerate(list(labels[start:start + 50]))]
        accepted = http.post("/feedback", json=feedback)
        assert accepted.status_code == 200 and accepted.json()["accepted"] == len(feedback), accepted.text
    return len(frame)


def flushed(loop: Loop) -> bool:
    """True when the service has written every prediction it made: nothing buffered, and as many rows written as
    predicted (a flush takes the buffer before it writes the segment, so "nothing buffered" alone can come early)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{loop.server}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    written = values.get("notebench_prediction_log_rows_written", 0)
    predicted = values.get("notebench_predicted_rows_total", 0)
    return values.get("notebench_prediction_log_rows_buffered", 0) == 0 and written >= predicted


def label_earlier_rows(loop: Loop, logged: pd.DataFrame) -> None:
    """The rows earlier tests sent get their own prediction as label, so that every window is labelled whole."""
    if loop.task == "multiclass":
        classes = np.array(["degraded", "failed", "ok"], dtype=object)
        labels = classes[logged[["output_0", "output_1", "output_2"]].to_numpy().argmax(axis=1)].tolist()
    else:
        labels = logged["prediction"].astype(float).tolist()
    items = [{"request_id": rid, "row": int(row), "label": label}
             for rid, row, label in zip(logged["request_id"], logged["row"], labels, strict=True)]
    assert httpx.post(f"{loop.server}/feedback", json=items, timeout=30).status_code == 200


def test_feedback_then_the_monitoring_pipeline_judges_quality_per_task(loop):
    from notebench.monitoring.monitor import read_results
    from notebench.serving import read_feedback, read_predictions

    wait_for(lambda: flushed(loop), "the earlier tests' predictions are in the log")
    earlier = read_predictions(loop.ws)
    earlier = earlier[earlier["role"] == "champion"]
    assert 0 < len(earlier) < WINDOW
    label_earlier_rows(loop, earlier)
    target, rng = loop.uc.target, np.random.default_rng(3)
    good, bad = world(loop, range(14, 18)).head(2 * WINDOW), world(loop, range(18, 22)).head(2 * WINDOW)
    labels = bad[target].to_numpy().copy()
    rng.shuffle(labels)  # the labels no longer follow the model
    if loop.task == "regression":
        good_labels, labels = good[target].astype(float).tolist(), labels.astype(float).tolist()
    else:  # a class by its name
        good_labels, labels = good[target].tolist(), labels.tolist()
        refused = httpx.post(f"{loop.server}/feedback", json={"request_id": "x", "label": "exploded"}, timeout=10)
        assert refused.status_code == 422 and "not a class of the served model" in refused.json()["message"]
    sent = len(earlier) + send(loop, good, good_labels) + send(loop, bad, labels)  # four windows and a tail
    wait_for(lambda: flushed(loop) and (read_predictions(loop.ws, columns=["role", "time"])["role"] == "champion"
                                        ).sum() == sent, "every prediction is in the log")
    stored = read_feedback(loop.ws)["label"]
    assert (stored.map(type) == (str if loop.task == "multiclass" else float)).all()

    notebench("run", "monitoring", check=True, timeout=900)
    results = read_results(loop.ws)
    quality = results[(results["check"] == "quality") & (results["method"] == loop.uc.metric)]
    assert quality["alert"].tolist() == [False, False, True, True], quality[["statistic", "threshold"]]
    holdout = float(loop.client.get_model_version(loop.name, "1").tags[f"notebench.metric.{loop.uc.metric}"])
    allowed = float(CASES[loop.task][1]["NOTEBENCH_MONITORING_MAX_METRIC_DROP"])
    assert quality["threshold"].tolist() == pytest.approx([holdout + allowed] * 4)  # a loss: worse is higher
    beside = {"multiclass": {"accuracy"}, "regression": {"mae", "bias"}}[loop.task]
    assert beside <= set(results.loc[results["check"] == "quality", "method"])
    drift = results[results["check"] == "prediction_drift"]
    assert len(drift) == 4 and set(drift["method"]) == {"chi2" if loop.task == "multiclass" else "ks"}
    details = json.loads(drift["details"].iloc[0])
    assert details["baseline"] == "reference"
    assert details.get("on") == ("predicted class" if loop.task == "multiclass" else None)
    report = json.loads((loop.ws.root / "pipelines" / "monitoring" / "products" / "monitor" / "monitor_report.json"
                         ).read_text())
    reasons = [a["reason"] for a in report["alerts"] if a["kind"] == "quality"]
    assert len(reasons) == 2 and all(f"live {loop.uc.metric}" in r and "above the holdout's" in r for r in reasons)


# ---------------------------------------------------------------------------------------------------------
# a second version: deploy-check and shadow mode


def test_a_second_version_passes_the_deploy_check_and_predicts_in_shadow(loop):
    import mlflow
    from fastapi.testclient import TestClient
    from notebench.registry.tracking import log_sklearn_model
    from notebench.serving import create_app, read_predictions
    from threadpoolctl import threadpool_limits

    uc = loop.uc
    frame = pd.read_parquet(loop.ws.root / "pipelines" / "training" / "products" / "train" / "holdout.parquet")
    with threadpool_limits(limits=1, user_api="openmp"):
        model = uc.make_model({"max_iter": 15, "random_state": 1}).fit(frame[uc.features], frame[uc.target])
    run = loop.client.create_run(loop.ws.experiment_id(loop.client))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(loop.ws.tracking_uri)
    try:  # the registry resolves a logged model through the global tracking URI
        info = log_sklearn_model(run.info.run_id, model, frame[uc.features].head(5), task=uc.task)
        version = loop.client.create_model_version(loop.name, info.model_uri, run_id=run.info.run_id, tags={
            "notebench.blessed": "true", "notebench.blessing.reasons": json.dumps(["by hand"])}).version
    finally:
        mlflow.set_tracking_uri(previous)
    loop.client.set_registered_model_alias(loop.name, "challenger", version)

    check = notebench("deploy-check", str(version), "--requests", "30", "--concurrency", "2", timeout=900)
    assert check.returncode == 0 and "PASSED" in check.stdout, check.stdout + check.stderr
    shape = "list[5] of list[3] of number" if loop.task == "multiclass" else "list[5] of number"
    assert shape in check.stdout and "recorded requests" in check.stdout

    app = create_app(loop.ws, watch_interval=0, flush_interval=0.1, shadow="challenger")
    rows = frame[uc.features].head(20)
    with TestClient(app) as client:
        answer = client.post("/invocations", json={"dataframe_records": records(rows)}, headers={"X-Request-Id":
                                                                                                 "shadowed"})
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    logged = read_predictions(loop.ws)
    shadow = logged[(logged["request_id"] == "shadowed") & (logged["role"] == "shadow")]
    assert len(shadow) == 20 and set(shadow["model_version"]) == {str(version)}
    if loop.task == "multiclass":  # class probabilities, one column per class
        outputs = shadow[["output_0", "output_1", "output_2"]].to_numpy()
        assert np.allclose(outputs.sum(axis=1), 1) and shadow["prediction"].isna().all()
    else:  # the version's value for the inputs it was given (as logged: JSON keeps ten digits of a float)
        np.testing.assert_allclose(shadow["prediction"].to_numpy(), model.predict(shadow[uc.features]), rtol=1e-9)


# ---------------------------------------------------------------------------------------------------------
# retraining: the candidate against the champion, in the metric's direction


def test_a_retrained_model_is_judged_against_the_champion_rescored_on_the_same_holdout(loop):
    loop.uc.simulate(loop.ws.landing, start_day=DAYS, days=2, size=SIZE, seed=SEED)
    notebench("run", "training", check=True, timeout=1500)
    verdict = products(loop, "validate_model", "blessing.json")
    assert verdict["champion"] == "1" and verdict["champion_report"] is not None  # re-scored, not an error
    metric = loop.uc.metric
    champion = verdict["champion_report"]["overall"][metric]
    candidate = products(loop, "evaluate", "evaluation.json")["overall"][metric]
    regression = next(c for c in verdict["checks"] if c["check"] == "regression")
    assert regression["baseline"] == pytest.approx(champion) and regression["value"] == pytest.approx(candidate)
    assert regression["drop"] == pytest.approx(candidate - champion)  # a loss: worse is higher
    words = "did not rise above champion v1's" if candidate <= champion else "above champion v1's"
    assert f"{metric} overall {candidate:.4f}" in regression["reason"] and words in regression["reason"]
    segments = [c for c in verdict["checks"] if c["check"] == "segment"]
    assert [c["scope"] for c in segments] == (["line=alpha", "line=beta", "line=gamma"]
                                              if loop.task == "regression" else [])
    assert all(f"{metric} on segment {c['scope']}" in c["reason"] for c in segments)
