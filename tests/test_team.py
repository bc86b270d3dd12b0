"""Team mode against the real team stack (`make team-test`: ci/team-up's PostgreSQL, mlflow server, Dask scheduler
and workers): the closed loop with steps and trials on the workers, and a worker killed mid-step.

Each test works in a folder of its own on the stack's shared path, with its own MLflow experiment and model name, so
that tests share the servers but nothing else. Skipped unless NOTEBENCH_TEAM_PROFILE names ci/team-up's profile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import BIN, ROOT, notebench, wait_until
from notebench.pipeline.store import PipelineStore
from pipeline_kit import make_pipeline

PROFILE = os.environ.get("NOTEBENCH_TEAM_PROFILE", "")
pytestmark = [pytest.mark.team,
              pytest.mark.skipif(not PROFILE, reason="needs the team stack: `make team-test` (ci/team-up)")]


def profile() -> dict[str, str]:
    """The settings ci/team-up wrote (NAME=value lines)."""
    lines = Path(PROFILE).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.fixture
def team(monkeypatch) -> dict[str, str]:
    """The team profile, with a workspace folder, an experiment and a model name of this test's own."""
    env = profile()
    name = f"t-{uuid.uuid4().hex[:8]}"
    env.update(NOTEBENCH_WORKSPACE_PATH=str(Path(env["NOTEBENCH_WORKSPACE_PATH"]).parent / name),
               NOTEBENCH_TRACKING_EXPERIMENT=name, NOTEBENCH_REGISTRY_MODEL_NAME=name)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT)
    return env


def last_run(ws: Path, pipeline: str) -> dict:
    return json.loads(sorted((ws / "pipelines" / pipeline / "runs").glob("*/run.json"))[-1].read_text())


def test_the_closed_loop_runs_its_steps_and_trials_on_the_workers_and_records_in_the_servers(team):
    proc = notebench("demo", "--days", "20", "--more-days", "5", "--trials", "4", env=team, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"Team mode: pipeline steps on Dask workers of {team['NOTEBENCH_DASK_SCHEDULER']}" in out
    assert f"MLflow tracking: {team['NOTEBENCH_TRACKING_URI']}" in out
    assert out.count("tuning: 4 trials on 2 Dask worker(s)") == 2, out  # both training runs spread their trials
    assert " 0 failed requests" in out and "of training: succeeded" in out
    assert "the service swapped to version 2 (as expected)" in out or "the service keeps version 1" in out

    ws = Path(team["NOTEBENCH_WORKSPACE_PATH"])
    workers = {s["worker"] for s in last_run(ws, "training")["steps"].values() if s["state"] == "done"}
    assert workers and all(w.startswith("tcp://") for w in workers), workers
    from mlflow import MlflowClient

    client = MlflowClient(team["NOTEBENCH_TRACKING_URI"])  # the mlflow server, on PostgreSQL
    exp = client.get_experiment_by_name(team["NOTEBENCH_TRACKING_EXPERIMENT"])
    trials = client.search_runs([exp.experiment_id], "tags.`notebench.kind` = 'trial'")
    assert len(trials) == 8 and len({r.data.tags["notebench.worker"] for r in trials}) == 2
    versions = client.search_model_versions(f"name = '{team['NOTEBENCH_REGISTRY_MODEL_NAME']}'")
    assert {v.version for v in versions} == {"1", "2"}
    train = client.search_runs([exp.experiment_id], "tags.`notebench.step` = 'train'")[0]
    notebooks = {a.path for a in client.list_artifacts(train.info.run_id, "notebook")}  # through the server's proxy
    assert notebooks == {"notebook/train.ipynb", "notebook/train.html"}


def test_a_team_worker_killed_mid_step_hands_the_step_to_the_other_worker(team, tmp_path):
    flag = tmp_path / "hung"
    spec = make_pipeline(tmp_path / "kw", {"s": {"products": {"out": "out.txt"}, "body": (
        f"import os, pathlib, time\nflag = pathlib.Path({str(flag)!r})\n"
        "if not flag.exists():\n    flag.write_text(str(os.getpid()))\n    time.sleep(300)\n"
        "pathlib.Path(step.output('out')).write_text('done')")}})
    runner = subprocess.Popen([str(BIN / "notebench"), "run", str(spec), "--no-lineage"], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    ws = Path(team["NOTEBENCH_WORKSPACE_PATH"])
    deadline = time.time() + 180
    while time.time() < deadline and not (flag.exists() and list(ws.glob("pipelines/kw/runs/*/workers/s.json"))):
        time.sleep(0.2)
    claim = json.loads(next(ws.glob("pipelines/kw/runs/*/workers/s.json")).read_text())
    store = PipelineStore(ws, "kw")
    wait_until(lambda: store.runs() and claim["pid"] in [w["pid"] for w in store.runs()[0]["steps"]["s"].get(
        "workers", [])], 120, "the runner to record where the step runs")  # it reads claims as it polls its jobs
    os.kill(claim["pid"], signal.SIGKILL)  # the worker process (its nanny restarts it)
    out, err = runner.communicate(timeout=300)
    assert runner.returncode == 0, err
    step = last_run(ws, "kw")["steps"]["s"]
    assert step["state"] == "done" and [w["pid"] for w in step["workers"]][0] == claim["pid"], step
    assert len(step["workers"]) == 2 and step["workers"][1]["pid"] != claim["pid"]
    assert (ws / "pipelines/kw/products/s/out.txt").read_text() == "done"


def test_a_runner_killed_mid_step_leaves_no_kernel_busy_on_a_worker(team, tmp_path):
    flag = tmp_path / "kernel.pid"
    spec = make_pipeline(tmp_path / "orphan", {"s": {"body": (
        f"import os, pathlib, time\npathlib.Path({str(flag)!r}).write_text(str(os.getpid()))\ntime.sleep(600)")}})
    runner = subprocess.Popen([str(BIN / "notebench"), "run", str(spec), "--no-lineage"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 180
    while time.time() < deadline and not flag.exists():
        time.sleep(0.2)
    kernel = int(flag.read_text())
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    deadline = time.time() + 60  # the worker notices within a second that nobody waits for the step any more
    while time.time() < deadline and Path(f"/proc/{kernel}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{kernel}").exists(), "the orphaned step's kernel is still running on its worker"
    ws = Path(team["NOTEBENCH_WORKSPACE_PATH"])
    store = PipelineStore(ws, "orphan")  # the run's record in the state database: alive while its lease is renewed
    ttl = float(team.get("NOTEBENCH_STATE_LEASE_TTL", 30))
    wait_until(lambda: store.runs()[0]["state"] == "killed", ttl + 120, "the dead runner's run to read killed")
