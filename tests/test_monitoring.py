"""The monitoring job on real prediction-log segments and a real registry: silent without shift, loud on the
features that moved and only those, a quality alert when labels decay, each row judged once."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import notebench
from fixture_lib.use_case import readings
from notebench.monitoring.drift import profile
from notebench.monitoring.monitor import Alert, monitor, read_results, read_windows
from notebench.serving.predlog import PredictionLog, log_root
from notebench.usecase import load_use_case

UC = load_use_case()  # the engine tests' use case (conftest selects it)
FEATURES, NUMERIC, CATEGORICAL = UC.features, list(UC.numeric), list(UC.categorical)

MODEL = "notebench-model"
HOUR_AGO = time.time() - 3600  # logged rows older than [monitoring] settle


def score(frame: pd.DataFrame) -> np.ndarray:
    """A fixed stand-in for a model: a probability that moves with temperature, load and the production line."""
    logit = (0.08 * (frame["temperature"] - 60) + 0.04 * (frame["load_pct"] - 55)
             + (frame["line"] == "gamma") - 1.5)
    return (1 / (1 + np.exp(-logit))).to_numpy()


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    """One MLflow store for the module (creating its tables takes seconds); each test has its own workspace."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def shared_tracking(tracking, monkeypatch):
    monkeypatch.setenv("NOTEBENCH_TRACKING_URI", tracking)


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    """Twenty days of the stable sensors world: the training rows the reference is profiled on."""
    return pd.concat([readings(day, size=1000) for day in range(20)], ignore_index=True)


@pytest.fixture(scope="module")
def reference(world) -> dict:
    ref = profile(world, NUMERIC, CATEGORICAL)
    ref["prediction"] = profile(pd.DataFrame({"prediction": score(world)}), ["prediction"], [])["columns"]["prediction"]
    return ref


def register(reference: dict, auc: float = 0.80, version_of: str = "1") -> str:
    """A registry version whose training run carries `reference` as reference/profile.json, with a holdout AUC."""
    from notebench.registry.models import metric_tags
    from notebench.registry.models import register as register_version
    from notebench.workspace import Workspace

    ws = Workspace()
    client = ws.client()
    run = client.create_run(ws.experiment_id(client), run_name=f"train {version_of}")
    client.log_dict(run.info.run_id, reference, "reference/profile.json")
    client.set_terminated(run.info.run_id)
    return register_version(client, MODEL, f"runs:/{run.info.run_id}/model", metric_tags({"auc": auc}),
                            run_id=run.info.run_id)


def log_rows(workspace, frame: pd.DataFrame, version: str, *, start: float = HOUR_AGO, per_request: int = 50,
             predictions: np.ndarray | None = None, prefix: str = "req") -> list[str]:
    """Write `frame` to the prediction log as requests of `per_request` rows, through the service's own writer."""
    log = PredictionLog(log_root(workspace))
    model = SimpleNamespace(name=MODEL, version=version)
    predictions = score(frame) if predictions is None else predictions
    ids = []
    for i in range(0, len(frame), per_request):
        chunk = frame.iloc[i:i + per_request]
        ids.append(f"{prefix}-{i // per_request:06d}")
        log.log(request_id=ids[-1], endpoint="/invocations", model=model, rows=len(chunk), started=start + i / 1e3,
                latency=0.002, columns={c: chunk[c].to_numpy() for c in FEATURES},
                output=predictions[i:i + per_request])
    log.flush()
    return ids


def send_feedback(workspace, ids: list[str], labels: np.ndarray, per_request: int = 50) -> None:
    log = PredictionLog(log_root(workspace), flush_interval=0.05).start()
    items = [{"request_id": rid, "row": r, "label": int(labels[i * per_request + r])}
             for i, rid in enumerate(ids) for r in range(min(per_request, len(labels) - i * per_request))]
    log.feedback(items).result(timeout=30)
    log.close()


def sample(world: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return world.sample(n, replace=True, random_state=seed).reset_index(drop=True)


def test_no_shift_windows_raise_no_alert_and_each_row_is_judged_once(workspace, world, reference):
    version = register(reference)
    log_rows(workspace, sample(world, 2500, 1), version)
    report = monitor(log_to_mlflow=True)
    assert [w["rows"] for w in report.windows] == [1000, 1000]  # the 500-row tail waits for its window to fill
    assert report.rows_pending == 500 and report.alerts == [], report.alerts
    assert report.mlflow_run_id and report.mlflow_error is None
    results = read_results(workspace)
    assert set(results["check"]) == {"drift", "dataset_drift", "prediction_drift", "data_quality"}
    assert not results["alert"].any()
    assert set(results.loc[results["check"] == "drift", "method"]) == {"wasserstein", "jensen_shannon"}
    assert (results["model_version"] == version).all() and len(results["window_id"].unique()) == 2

    again = monitor(log_to_mlflow=False)
    assert again.nothing_new and "nothing to monitor" in again.message and again.rows_pending == 500
    assert len(read_results(workspace)) == len(results)  # nothing judged twice

    log_rows(workspace, sample(world, 600, 2), version, start=HOUR_AGO + 60, prefix="later")
    third = monitor(log_to_mlflow=False)
    assert [w["rows"] for w in third.windows] == [1000] and third.rows_pending == 100
    assert len(read_windows(workspace)) == 3
    from notebench.workspace import Workspace

    run = Workspace().client().get_run(report.mlflow_run_id)
    assert run.data.metrics["dataset_drift"] == 0.0 and "drift.temperature" in run.data.metrics


def test_a_shifted_window_flags_the_shifted_features_and_only_those(workspace, world, reference):
    version = register(reference)
    shifted = sample(world, 1000, 3)
    shifted["temperature"] *= 1.3
    shifted["line"] = shifted["line"].replace({"alpha": "gamma"})
    log_rows(workspace, shifted, version)
    report = monitor(log_to_mlflow=False)
    (window,) = report.windows
    assert set(window["drifted"]) == {"temperature", "line"}
    assert not window["dataset_drift"]  # 2 of 6 features: below drift_share
    results = read_results(workspace)
    flagged = results[(results["check"] == "drift") & results["alert"]]
    assert set(flagged["feature"]) == {"temperature", "line"}
    assert window["prediction_drift"]  # the stand-in model leans on temperature
    kinds = {(a.kind, a.check) for a in report.alerts}
    assert ("drift", "prediction_drift") in kinds and ("drift", "dataset_drift") not in kinds
    assert all(isinstance(a, Alert) and a.model_version == version and a.window_end for a in report.alerts)


def test_a_broad_shift_is_dataset_drift_and_bad_data_is_a_quality_finding(workspace, world, reference):
    version = register(reference)
    frame = readings(25, size=1000, scenario="null_spike", shift_day=20)  # vibration: 40% missing
    for column in ("temperature", "load_pct", "hours_since_service"):
        frame[column] = frame[column] * 3 + 5  # most features move
    frame.loc[:99, "site"] = "plant_9"  # a site never seen in training
    log_rows(workspace, frame, version)
    report = monitor(log_to_mlflow=False)
    alerts = {a.check: a for a in report.alerts}
    assert alerts["dataset_drift"].kind == "drift" and "dataset drift" in alerts["dataset_drift"].reason
    quality = alerts["data_quality"]
    assert {"vibration", "site"} <= set(quality.details["features"])
    results = read_results(workspace)
    unseen = results[(results["check"] == "data_quality") & (results["method"] == "unseen_categories")
                     & (results["feature"] == "site")].iloc[0]
    assert unseen["alert"] and unseen["statistic"] == pytest.approx(0.1)
    assert json.loads(unseen["details"])["values"] == ["plant_9"]


def test_labels_that_decay_raise_a_quality_alert(workspace, world, reference):
    rng = np.random.default_rng(4)
    good, bad = sample(world, 1000, 5), sample(world, 1000, 6)
    p_good, p_bad = score(good), score(bad)
    y_good = (rng.random(1000) < p_good).astype(int)  # the model is right about these
    y_bad = (rng.random(1000) < p_bad.mean()).astype(int)  # the world changed: labels no longer follow the score
    from sklearn.metrics import roc_auc_score

    version = register(reference, auc=roc_auc_score(y_good, p_good))
    ids_good = log_rows(workspace, good, version, prefix="good")
    ids_bad = log_rows(workspace, bad, version, start=HOUR_AGO + 60, prefix="bad")
    first = monitor(log_to_mlflow=False)
    assert len(first.windows) == 2 and first.quality == []  # no labels yet: quality waits

    send_feedback(workspace, ids_good, y_good)
    send_feedback(workspace, ids_bad[:1], y_bad)  # 50 labels: fewer than min_labels, the window keeps waiting
    second = monitor(log_to_mlflow=False)
    assert [q["labels"] for q in second.quality] == [1000]
    assert not [a for a in second.alerts if a.kind == "quality"]

    send_feedback(workspace, ids_bad, y_bad)
    third = monitor(log_to_mlflow=True)
    (scored,) = third.quality
    assert scored["labels"] == 1000 and scored["auc"] < 0.6
    (alert,) = [a for a in third.alerts if a.kind == "quality"]
    assert alert.check == "quality" and "below the holdout" in alert.reason and alert.details["drop"] > 0.05
    quality = read_results(workspace).query("check == 'quality' and method == 'auc'")
    assert quality["alert"].tolist() == [False, True]
    assert monitor(log_to_mlflow=False).nothing_new  # each window's quality is judged once


def test_quality_is_judged_on_the_use_cases_primary_metric_in_its_direction(workspace, world, reference, tmp_path,
                                                                           monkeypatch):
    """A use case whose primary metric is the Brier score (lower is better): the live Brier is compared with the
    holdout's, and a rise, not a drop, is the alert."""
    (tmp_path / "brier_case.py").write_text(
        "import dataclasses\nfrom fixture_lib.use_case import USE_CASE as SENSORS\n"
        "USE_CASE = dataclasses.replace(SENSORS, metric='brier', direction='')  # the direction follows the metric\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NOTEBENCH_USE_CASE_OBJECT", "brier_case:USE_CASE")
    monkeypatch.setenv("NOTEBENCH_MONITORING_MAX_AUC_DROP", "0.01")
    rng = np.random.default_rng(7)
    good, bad = sample(world, 1000, 14), sample(world, 1000, 15)
    y_good = (rng.random(1000) < score(good)).astype(int)
    y_bad = (rng.random(1000) < score(bad).mean()).astype(int)  # labels no longer follow the score
    holdout = float(np.mean((score(good) - y_good) ** 2))
    version = register(reference, auc=0.5)  # a holdout AUC the Brier use case must not be judged on
    from notebench.registry.models import metric_tags
    from notebench.workspace import Workspace

    client = Workspace().client()
    for key, value in metric_tags({"brier": holdout}).items():
        client.set_model_version_tag(MODEL, version, key, value)
    send = log_rows(workspace, good, version, prefix="good") + log_rows(workspace, bad, version,
                                                                        start=HOUR_AGO + 60, prefix="bad")
    send_feedback(workspace, send, np.concatenate([y_good, y_bad]))
    report = monitor(log_to_mlflow=False)
    assert [(q["metric"], q["holdout"]) for q in report.quality] == [("brier", holdout)] * 2
    assert report.quality[0]["brier"] == pytest.approx(holdout) and not report.quality[0]["alert"]
    assert report.quality[1]["brier"] > holdout + 0.01 and report.quality[1]["alert"]
    (alert,) = [a for a in report.alerts if a.kind == "quality"]
    assert "live brier" in alert.reason and "above the holdout" in alert.reason
    quality = read_results(workspace).query("check == 'quality'")
    assert "auc" not in set(quality["method"]) and quality.query("method == 'brier'")["alert"].tolist() == [False, True]


def test_no_shift_false_alarm_rate_per_feature_is_at_most_five_percent(workspace, world, reference, monkeypatch):
    monkeypatch.setenv("NOTEBENCH_MONITORING_WINDOW", "300")  # small windows: the KS and chi-squared tests
    version = register(reference)
    windows = 100
    log_rows(workspace, sample(world, 300 * windows, 11), version, per_request=100)
    report = monitor(log_to_mlflow=False)
    assert len(report.windows) == windows
    drift = read_results(workspace).query("check == 'drift'")
    assert set(drift["method"]) == {"ks", "chi2"}
    rate = drift.groupby("feature")["alert"].mean()
    # each test flags 5% of no-shift windows in expectation; allow the binomial noise of 100 windows (2 sd)
    assert (rate <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / windows)).all(), rate[rate > 0.05]
    assert rate.mean() <= 0.05, rate


def test_prediction_drift_falls_back_to_the_first_window_without_a_reference_distribution(workspace, world,
                                                                                          reference):
    version = register({k: v for k, v in reference.items() if k != "prediction"})
    base = sample(world, 2000, 8)
    predictions = score(base)
    predictions[1000:] = np.clip(predictions[1000:] + 0.3, 0, 1)
    log_rows(workspace, base, version, predictions=predictions)
    report = monitor(log_to_mlflow=False)
    rows = read_results(workspace).query("check == 'prediction_drift'")
    assert rows["method"].tolist() == ["baseline", "wasserstein"] and rows["alert"].tolist() == [False, True]
    assert [a.check for a in report.alerts] == ["prediction_drift"]


def test_cli_reports_nothing_to_monitor_and_json(workspace):
    proc = notebench("monitor")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to monitor" in proc.stdout
    out = json.loads(notebench("monitor", "--json", check=True).stdout)
    assert out["nothing_new"] is True and out["alerts"] == []


def test_versions_are_judged_apart_across_a_hot_swap_and_no_row_is_lost(workspace, world, reference):
    v1, v2 = register(reference, version_of="1"), register(reference, version_of="2")
    log_rows(workspace, sample(world, 1000, 9), v1, prefix="a")  # arrives over ~1 s
    log_rows(workspace, sample(world, 600, 10), v2, start=HOUR_AGO + 0.5, prefix="b")  # the swap: requests overlap
    first = monitor(log_to_mlflow=False)
    assert [(w["model_version"], w["rows"]) for w in first.windows] == [(v1, 1000)]
    assert first.rows_pending == 600  # the new version's window is still filling
    log_rows(workspace, sample(world, 400, 11), v2, start=HOUR_AGO + 60, prefix="c")
    second = monitor(log_to_mlflow=False)
    assert [(w["model_version"], w["rows"]) for w in second.windows] == [(v2, 1000)]
    assert second.rows_pending == 0
    log_rows(workspace, sample(world, 300, 12), v1, start=HOUR_AGO + 120, prefix="d")  # rolled back to v1
    log_rows(workspace, sample(world, 10, 13), v2, start=HOUR_AGO + 119, prefix="e")  # v2 stragglers, superseded
    third = monitor(log_to_mlflow=False)
    assert [(w["model_version"], w["rows"]) for w in third.windows] == [(v2, 10)]  # a superseded tail is closed
    assert third.rows_pending == 300
