"""Environments are isolated: one release deployed to staging and prod; prod trains and serves its champion (a real
uvicorn through `notebench serve --env prod`); then a staging run of the same pipeline, which registers a different
model as champion, studies with Optuna and writes its products, changes nothing prod serves, reads or caches."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import httpx
import pytest
from conftest import BIN, ROOT, notebench
from release_kit import QUIET, SETTINGS, build, engine_wheel, make_project, output, tree

# one step that does what a training pipeline does to an environment's state: it trains a model on the use case's
# data, logs it to the experiment, registers it and makes it champion, runs an Optuna trial in the study storage,
# and says where its feature repo, study storage and tracking store are
TRAIN = """import json, pathlib
import optuna
from sklearn.linear_model import LogisticRegression
import fixture_lib.use_case as fx
from notebench.features.store import FeatureRepo
from notebench.registry.tracking import log_sklearn_model
from notebench.workspace import Workspace
uc = step.use_case
frame = fx.readings(3).dropna()  # every reading with its outcome and every value
X, y = frame[list(uc.numeric)], frame[uc.target]
ws = Workspace()
client = ws.client()
run = client.create_run(ws.experiment_id(client))
info = log_sklearn_model(run.info.run_id, LogisticRegression(C=C, max_iter=500).fit(X, y), X.head(5))
client.set_terminated(run.info.run_id)
name = ws.settings.value("registry", "model_name")
if not client.search_registered_models(f"name = '{name}'"):
    client.create_registered_model(name)
version = client.create_model_version(name, info.model_uri, run_id=run.info.run_id,
                                      tags={"notebench.blessed": "true"})
client.set_registered_model_alias(name, "champion", version.version)
study = optuna.create_study(storage=f"sqlite:///{ws.root / 'optuna.db'}", study_name="tuning", load_if_exists=True)
study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
pathlib.Path(step.output("what")).write_text(json.dumps({
    "model": name, "version": version.version, "experiment": ws.experiment, "tracking": ws.tracking_uri,
    "optuna": str(ws.root / "optuna.db"), "feature_repo": str(FeatureRepo().path)}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("isolation")
    warm = SETTINGS.replace("= notebench.step", "= notebench.step, mlflow, sklearn.linear_model")
    project = make_project(tmp / "p", engine_wheel(tmp / "engine"), "1.0.0", body=TRAIN, settings=warm,
                           params="C = 1.0  # the model's regularization\n")
    return build(project)


def serve(env: str, port: int, log):
    """`notebench serve --env ENV` in its own process group, and a client that waits for it to be ready."""
    proc = subprocess.Popen([str(BIN / "notebench"), "serve", "--env", env, "--port", str(port), "--watch-interval",
                             "0.5", "--flush-interval", "0.2", "--log-level", "warning"], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{base}/ready never answered:\n{log.read_text()[-3000:]}")


def answers(base: str, rows: list[dict]) -> tuple[str, list]:
    """The version the service serves now (after making it check its alias) and its answers to `rows`."""
    assert httpx.post(f"{base}/reload", timeout=60).status_code == 200
    response = httpx.post(f"{base}/invocations", json={"dataframe_records": rows}, timeout=60)
    assert response.status_code == 200, response.text
    return httpx.get(f"{base}/ready", timeout=10).json()["model_version"], response.json()["predictions"]


def prod_state(workspace) -> dict:
    """Everything in prod's folder but the prediction log its service writes as it answers."""
    return {k: v for k, v in tree(workspace / "environments" / "prod").items()
            if not k.startswith("workspace/predictions/")}


@pytest.mark.slow
def test_a_run_in_staging_cannot_change_what_prod_serves_reads_or_caches(workspace, release, tmp_path):
    host = {**QUIET, "NOTEBENCH_ENVIRONMENTS_PROD_MIN_STAGING_RUNS": "0"}
    notebench("deploy", str(release.path), "--env", "staging", env=host, check=True)
    notebench("deploy", str(release.path), "--env", "prod", "--approve", "--by", "ci", env=host, check=True)
    notebench("run", "training", "--env", "prod", "--no-lineage", check=True)
    prod = output(workspace, "prod")
    envs = workspace / "environments"
    assert (prod["model"], str(prod["version"]), prod["experiment"]) == ("notebench-model-prod", "1", "notebench-prod")
    assert prod["tracking"] == f"sqlite:///{envs / 'prod' / 'workspace' / 'mlflow.db'}"
    assert prod["optuna"] == str(envs / "prod" / "workspace" / "optuna.db")
    assert prod["feature_repo"] == str(envs / "prod" / "workspace" / "feature_repo")

    import fixture_lib.use_case as fx

    rows = json.loads(fx.readings(5).head(20)[fx.NUMERIC].to_json(orient="records"))
    proc, base = serve("prod", free_port(), tmp_path / "prod.log")
    try:
        served, predictions = answers(base, rows)
        assert str(served) == "1"
        before = prod_state(workspace)

        # staging trains a very different model with the same release, and makes it champion in staging
        notebench("run", "training", "--env", "staging", "--no-lineage", "-p", "C=0.0001", check=True)
        staging = output(workspace, "staging")
        assert (staging["model"], str(staging["version"]), staging["experiment"]) == ("notebench-model-staging", "1",
                                                                                      "notebench-staging")
        assert staging["tracking"] == f"sqlite:///{envs / 'staging' / 'workspace' / 'mlflow.db'}"
        assert staging["optuna"] == str(envs / "staging" / "workspace" / "optuna.db")
        assert staging["feature_repo"] == str(envs / "staging" / "workspace" / "feature_repo")

        # prod serves what it served (its alias checked again), reads what it read, and keeps its cache
        assert answers(base, rows) == (served, predictions)
        assert prod_state(workspace) == before
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
    plan = notebench("run", "training", "--env", "prod", "--explain", check=True).stdout
    assert plan.split()[:2] == ["a", "cached"], plan
    # and staging's own service would serve staging's model: the two registries are apart
    from mlflow import MlflowClient

    for env, model in (("prod", "notebench-model-prod"), ("staging", "notebench-model-staging")):
        client = MlflowClient(f"sqlite:///{envs / env / 'workspace' / 'mlflow.db'}")
        assert [m.name for m in client.search_registered_models()] == [model]
        assert [str(v.version) for v in client.search_model_versions(f"name = '{model}'")] == ["1"]
