"""`notebench deploy-check` and the `[gates] deploy_check` promotion gate, on a real MLflow store with real servers.

One small world of the engine tests' use case (sensors) in a temporary workspace: version 1 (champion), version 2
(another model with the same output format), version 3 (a model served through `predict`, so its answers are labels,
not probabilities: a format change a client would break on). The prediction log holds a few requests answered by
version 1, written through the service's own `PredictionLog`. Each deploy-check starts real uvicorn processes
(candidate and champion).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from notebench.data.batches import load_landing
from notebench.settings import load_settings
from notebench.usecase import load_use_case
from notebench.workspace import Workspace

UC = load_use_case()  # the engine tests' use case (conftest selects it)
FEATURES, TARGET = UC.features, UC.target

BLESSED = {"notebench.blessed": "true", "notebench.blessing.reasons": json.dumps(["auc overall 0.8 >= minimum 0.7"])}
LOGGED_REQUESTS = 4


class _Served:
    name, version = "notebench-model", "1"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import mlflow
    from notebench.registry.tracking import log_sklearn_model, pip_requirements, skops_trusted_types
    from notebench.serving.predlog import PredictionLog, log_root

    root = tmp_path_factory.mktemp("deploycheck") / "ws"
    env = {"NOTEBENCH_WORKSPACE_PATH": str(root)}
    ws = Workspace(load_settings(environ={**os.environ, **env}))
    client = ws.client()
    experiment = ws.experiment_id(client)
    name = ws.settings.value("registry", "model_name")
    UC.simulate(ws.landing, days=12, size=60)
    frame = load_landing(UC, ws.landing)
    X, y = frame[FEATURES].reset_index(drop=True), frame[TARGET]
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(ws.tracking_uri)
    try:
        client.create_registered_model(name)
        for params in ({"max_iter": 20}, {"max_iter": 10, "learning_rate": 0.3}):
            run = client.create_run(experiment)
            info = log_sklearn_model(run.info.run_id, UC.make_model(params).fit(X, y), X.head(5))
            client.create_model_version(name, info.model_uri, run_id=run.info.run_id, tags=BLESSED)
        labels = UC.make_model({"max_iter": 10}).fit(X, y)  # served through predict: labels, not probabilities
        run = client.create_run(experiment)
        signature = mlflow.models.infer_signature(X.head(5), labels.predict(X.head(5)))
        with mlflow.start_run(run_id=run.info.run_id):
            info = mlflow.sklearn.log_model(labels, name="model", input_example=X.head(5), signature=signature,
                                            pip_requirements=pip_requirements(), serialization_format="skops",
                                            skops_trusted_types=skops_trusted_types(labels),
                                            pyfunc_predict_fn="predict")
        client.create_model_version(name, info.model_uri, run_id=run.info.run_id, tags=BLESSED)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    client.set_registered_model_alias(name, "champion", "1")
    log = PredictionLog(log_root(ws)).start()
    for i in range(LOGGED_REQUESTS):  # requests as the service logs them: rows of 1 to 4 records
        rows = X.iloc[i * 4: i * 4 + i + 1]
        log.log(request_id=f"logged-{i}", endpoint="/invocations", model=_Served, rows=len(rows),
                columns={c: rows[c].to_numpy() for c in FEATURES}, output=np.full((len(rows), 2), 0.5),
                started=time.time() - 60 + i, latency=0.004)
    log.close()
    return {"ws": ws, "client": client, "name": name, "env": env}


def notebench(world, *args, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **world["env"], **env}
    return subprocess.run([str(Path(sys.executable).parent / "notebench"), *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=300, check=False)


def tags(world, version: str) -> dict:
    return world["client"].get_model_version(world["name"], version).tags


def test_a_passing_deploy_check_is_recorded_on_the_version_and_opens_the_gate(world):
    gate = {"NOTEBENCH_GATES_DEPLOY_CHECK": "true"}
    proc = notebench(world, "deploy-check", "2", "--requests", "60", "--concurrency", "2", **gate)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert f"recorded requests: {LOGGED_REQUESTS} of {LOGGED_REQUESTS} requests" in out
    assert "same as the champion" in out and "each in the champion's format" in out
    assert "list[5] of list[2] of number" in out  # the input example's answer, described by its format
    assert "PASSED" in out
    recorded = tags(world, "2")
    assert recorded["notebench.deploy_check.status"] == "passed"
    assert float(recorded["notebench.deploy_check.qps"]) > 0 and float(recorded["notebench.deploy_check.p99_ms"]) > 0
    run = world["client"].get_run(recorded["notebench.deploy_check.run_id"])
    assert run.data.metrics["errors"] == 0 and run.data.params["requests"] == "60"
    artifacts = {a.path for a in world["client"].list_artifacts(run.info.run_id, "deploy_check")}
    assert artifacts == {"deploy_check/report.md", "deploy_check/report.json"}
    assert not any((world["ws"].root / "deploy_checks").iterdir())  # a pass leaves no throwaway workspace behind

    promoted = notebench(world, "promote", "2", **gate)
    assert promoted.returncode == 0 and "champion is now version 2" in promoted.stdout, promoted.stderr


def test_a_changed_response_format_or_a_slow_p99_fails_and_keeps_the_gate_shut(world):
    gate = {"NOTEBENCH_GATES_DEPLOY_CHECK": "true"}
    proc = notebench(world, "deploy-check", "3", "--requests", "30", "--max-p99-ms", "0.01", **gate)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    # labels instead of probabilities (numbers: the use case's target is a float 0/1)
    assert ("the candidate answers 200 {model_version: string, predictions: list[5] of number} where the champion "
            "answers 200 {model_version: string, predictions: list[5] of list[2] of number}") in out
    assert "request logged-3: the candidate answers 200 {model_version: string, predictions: list[4] of number}" in out
    assert "p99" in out and "check_max_p99_ms = 0.01 ms" in out and "FAILED" in out
    recorded = tags(world, "3")
    assert recorded["notebench.deploy_check.status"] == "failed"
    assert "input example" in json.loads(recorded["notebench.deploy_check.reasons"])[0]
    kept = [p for p in (world["ws"].root / "deploy_checks").iterdir()]
    assert len(kept) == 1 and (kept[0] / "candidate.log").is_file()  # a failure keeps the servers' logs

    refused = notebench(world, "promote", "3", **gate)
    assert refused.returncode == 1 and "last deploy-check failed" in refused.stderr
    forced = notebench(world, "promote", "3", "--force", "--reason", "hotfix, checked by hand", **gate)
    assert forced.returncode == 0 and "FORCED past the deploy_check gate" in forced.stdout, forced.stderr
    assert tags(world, "3")["notebench.forced.gates"] == "deploy_check"
    world["client"].set_registered_model_alias(world["name"], "champion", "2")


def test_deploy_check_refuses_what_it_cannot_check(world):
    from concurrent.futures import ThreadPoolExecutor

    asks = (("99",), ("--alias", "nosuch"), ("2", "--alias", "challenger"), ("2", "--requests", "0"))
    with ThreadPoolExecutor(len(asks)) as pool:  # four CLI starts at once: each imports MLflow
        unknown, alias, both, zero = pool.map(lambda a: notebench(world, "deploy-check", *a), asks)
    assert unknown.returncode == 2 and "no version 99; versions: 1, 2, 3" in unknown.stderr
    assert alias.returncode == 2 and "no alias 'nosuch'" in alias.stderr and "champion -> " in alias.stderr
    assert both.returncode == 2 and "not both" in both.stderr
    assert zero.returncode == 2 and "requests must be at least 1, got 0" in zero.stderr


def test_under_the_gate_the_register_step_leaves_a_blessed_model_challenger_with_the_reason(world, tmp_path,
                                                                                           monkeypatch):
    """The training pipeline's register step, run through papermill on hand-made upstream products."""
    import mlflow
    import papermill
    from notebench.registry.tracking import log_sklearn_model

    ws, client, name = world["ws"], world["client"], world["name"]
    frame = load_landing(UC, ws.landing)
    X, y = frame[FEATURES], frame[TARGET]
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(ws.tracking_uri)
    try:
        run = client.create_run(ws.experiment_id(client))
        info = log_sklearn_model(run.info.run_id, UC.make_model({"max_iter": 5}).fit(X, y), X.head(3))
    finally:
        mlflow.set_tracking_uri(previous_uri)
    before = registry_champion(client, name)
    products = {"model": {"run_id": run.info.run_id, "model_uri": info.model_uri, "replaces": f"models:/{name}/2"},
                "blessing": {"blessed": True, "reasons": ["auc overall 0.8 >= minimum 0.7"], "champion": before},
                "evaluation": {"overall": {"auc": 0.8}}, "ledger": {"digest": "sha256:test"}}
    for product, doc in products.items():
        (tmp_path / f"{product}.json").write_text(json.dumps(doc))
    upstream = {"train": {"model": str(tmp_path / "model.json")},
                "validate_model": {"blessing": str(tmp_path / "blessing.json")},
                "evaluate": {"evaluation": str(tmp_path / "evaluation.json")},
                "ingest": {"ledger": str(tmp_path / "ledger.json")}}
    out = tmp_path / "registration.json"
    for key, value in {**world["env"], "NOTEBENCH_GATES_DEPLOY_CHECK": "true",
                       "MLFLOW_EXPERIMENT_NAME": ws.experiment}.items():
        monkeypatch.setenv(key, value)
    papermill.execute_notebook(str(ROOT / "notebooks/pipelines/training/register.ipynb"), str(tmp_path / "ran.ipynb"),
                               kernel_name="notebench", progress_bar=False, cwd=str(ROOT),
                               parameters={"upstream": upstream, "products": {"registration": str(out)},
                                           "context": {"tracking_uri": ws.tracking_uri, "pipeline": "training",
                                                       "workspace": str(ws.root), "run_id": "gate-test"}})
    registration = json.loads(out.read_text())
    version = registration["version"]
    assert registration["promoted"] is False and registration["aliases"] == ["challenger"]
    assert f"run `notebench deploy-check {version}`, then `notebench promote {version}`" in registration["why"]
    assert registry_champion(client, name) == before


def registry_champion(client, name: str) -> str | None:
    from notebench.registry.models import champion

    return champion(client, name)
