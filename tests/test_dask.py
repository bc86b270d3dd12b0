"""Executors: the Dask executor on a real local cluster (worker processes, papermill, warm kernels), a worker killed
mid-step, a third-party executor found through its entry point, and tuning trials as Dask tasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, FIXTURE_USE_CASE, ROOT, notebench, wait_until
from pipeline_kit import fork_join, make_pipeline

DASK = {"NOTEBENCH_PIPELINE_EXECUTOR": "dask", "NOTEBENCH_DASK_SCHEDULER": "local", "NOTEBENCH_DASK_WORKERS": "2"}


def last_run(ws: Path, pipeline: str) -> dict:
    return json.loads(sorted((ws / "pipelines" / pipeline / "runs").glob("*/run.json"))[-1].read_text())


def interval(ws: Path, pipeline: str, step: str, name: str) -> tuple[float, float]:
    start, end = (ws / "pipelines" / pipeline / "products" / step / name).read_text().split()[:2]
    return float(start), float(end)


def test_steps_run_on_dask_workers_in_parallel_then_cache_without_a_cluster(workspace, tmp_path):
    spec = fork_join(tmp_path / "fj", sleep=2.0)
    first = notebench("run", str(spec), "--wait-lineage", env=DASK, check=True)
    record = last_run(workspace, "fj")
    assert record["state"] == "succeeded" and record["executor"].startswith("dask (a local cluster, 2 worker(s)")
    steps = record["steps"]
    assert {s["worker"][:6] for s in steps.values()} == {"tcp://"}, steps  # every step ran on a Dask worker
    assert steps["b"]["worker"] != steps["c"]["worker"]  # one step per worker: the fork ran on both
    b, c = interval(workspace, "fj", "b", "b.txt"), interval(workspace, "fj", "c", "c.txt")
    assert b[0] < c[1] and c[0] < b[1], f"b {b} and c {c} did not overlap"
    assert {s["kernel"] for s in steps.values()} == {"warm"}  # kernels forked from each worker's warm server
    assert all(s["workers"][0]["pid"] != record["pid"] for s in steps.values())  # not the runner's process
    assert "on tcp://" in first.stderr and "(warm kernel)" in first.stderr
    a = (workspace / "pipelines/fj/products/a/a.txt").read_text()
    assert a in (workspace / "pipelines/fj/products/d/d.txt").read_text()  # upstream products passed on
    from mlflow import MlflowClient

    ids = json.loads((workspace / "pipelines/fj/runs" / record["run_id"] / "lineage.json").read_text())["mlflow_runs"]
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    assert {a.path for a in client.list_artifacts(ids["step:b"], "notebook")} == {"notebook/b.ipynb", "notebook/b.html"}

    notebench("run", str(spec), env=DASK, check=True)  # (benchmarks/team.py times it)
    cached = last_run(workspace, "fj")
    assert {s["state"] for s in cached["steps"].values()} == {"cached"}
    assert cached["executor"] == "dask", cached["executor"]  # nothing to run: no cluster was started
    shown = notebench("show", cached["run_id"][:15], check=True).stdout
    assert "steps ran on: dask" in shown


def test_retries_timeouts_and_failures_behave_as_locally(workspace, tmp_path):
    tries = tmp_path / "tries"
    spec = make_pipeline(tmp_path / "rt", {
        "flaky": {"retries": 1, "products": {"out": "out.txt"}, "body": (
            f"import pathlib\nlog = pathlib.Path({str(tries)!r})\nlog.write_text(log.read_text() + 'x' "
            "if log.exists() else 'x')\n"
            "if log.read_text() == 'x':\n    raise RuntimeError('first attempt fails')\n"
            "pathlib.Path(step.output('out')).write_text('ok')")},
        "slow": {"timeout": 3, "body": "import time\ntime.sleep(120)"},
    })
    proc = notebench("run", str(spec), "--no-lineage", env=DASK)
    assert proc.returncode == 1, proc.stderr
    record = last_run(workspace, "rt")
    assert record["state"] == "failed"
    flaky, slow = record["steps"]["flaky"], record["steps"]["slow"]
    assert flaky["state"] == "done" and flaky["attempts"] == 2 and tries.read_text() == "xx"
    assert (workspace / "pipelines/rt/products/flaky/out.txt").read_text() == "ok"
    assert slow["state"] == "failed" and slow["error"] == "timed out after 3 s", slow
    assert "time.sleep(120)" in record_notebook(workspace, record, "slow").read_text()  # the notebook is kept
    assert "step 'slow' failed: timed out after 3 s" in proc.stderr


def record_notebook(ws: Path, record: dict, step: str) -> Path:
    return ws / "pipelines" / record["pipeline"] / "runs" / record["run_id"] / f"{step}.ipynb"


def start_run(spec: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "notebench"), "run", str(spec), "--no-lineage"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})


def hanging_step(tmp_path: Path) -> tuple[Path, Path]:
    """A one-step pipeline whose first attempt, on whatever worker, writes a flag and hangs; later ones finish."""
    flag = tmp_path / "hung"
    spec = make_pipeline(tmp_path / "kw", {"s": {"products": {"out": "out.txt"}, "body": (
        f"import os, pathlib, time\nflag = pathlib.Path({str(flag)!r})\n"
        "if not flag.exists():\n    flag.write_text(str(os.getpid()))\n    time.sleep(300)\n"
        "pathlib.Path(step.output('out')).write_text('done')")}})
    return spec, flag


def kill_the_worker(workspace: Path, flag: Path) -> dict:
    """Once the step hangs, kill -9 the worker process running it (named by the step's claim); the claim."""
    claim = wait_until(lambda: next((workspace / "pipelines/kw/runs").glob("*/workers/s.json"), None), 120, "a claim")
    wait_until(flag.exists, 120, "the step's kernel to start")
    where = json.loads(claim.read_text())
    os.kill(where["pid"], signal.SIGKILL)
    return where


def test_a_worker_killed_mid_step_hands_the_step_to_another_worker(workspace, tmp_path):
    spec, flag = hanging_step(tmp_path)
    runner = start_run(spec, DASK)
    killed = kill_the_worker(workspace, flag)
    out, err = runner.communicate(timeout=300)
    assert runner.returncode == 0, err
    step = last_run(workspace, "kw")["steps"]["s"]
    assert step["state"] == "done" and len(step["workers"]) == 2, step
    assert step["workers"][0]["pid"] == killed["pid"] != step["workers"][1]["pid"]
    assert (workspace / "pipelines/kw/products/s/out.txt").read_text() == "done"


def test_a_worker_killed_once_too_often_fails_the_run_keeping_the_notebook(workspace, tmp_path):
    spec, flag = hanging_step(tmp_path)
    runner = start_run(spec, {**DASK, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"})
    kill_the_worker(workspace, flag)
    out, err = runner.communicate(timeout=300)
    assert runner.returncode == 1, err
    record = last_run(workspace, "kw")
    assert record["state"] == "failed" and record["steps"]["s"]["state"] == "failed"  # never left "running"
    assert "its worker died" in record["steps"]["s"]["error"] and "its worker died" in err
    assert record_notebook(workspace, record, "s").exists()  # what the step did before its worker died
    assert not (workspace / "pipelines/kw/products/s").exists()


RECORDING = '''
"""A third party's executor: each job goes to a new process as a JSON file, the result comes back as one."""
import json, subprocess, sys
from pathlib import Path
from notebench.pipeline.executors import Executor, JobResult

RUN = ("import json, sys; from dataclasses import asdict; from notebench.pipeline.executors import StepJob, run_job; "
       "from notebench.pipeline.kernels import KernelPool; job = StepJob.from_dict(json.load(open(sys.argv[1]))); "
       "result = run_job(job, KernelPool(enabled=False), worker='recording'); "
       "open(sys.argv[2], 'w').write(json.dumps(asdict(result)))")


class RecordingExecutor(Executor):
    name = "recording"

    def submit(self, job):
        folder = Path(job.output).parent / "jobs"
        folder.mkdir(exist_ok=True)
        path = folder / f"{job.step}.json"
        path.write_text(json.dumps(job.to_dict()))
        return (subprocess.Popen([sys.executable, "-c", RUN, str(path), str(path) + ".result"]), str(path))

    def wait(self, handles, timeout=None):
        import time
        deadline = time.time() + (timeout or 1e9)
        while time.time() < deadline:
            done = {h: JobResult.from_dict(json.loads(Path(h[1] + ".result").read_text()))
                    for h in handles if h[0].poll() is not None}
            if done:
                return done
            time.sleep(0.05)
        return {}
'''


def test_a_third_party_executor_from_an_entry_point_gets_each_job_as_plain_json(workspace, tmp_path):
    plugin = tmp_path / "plugin"
    (plugin / "recexec-1.0.dist-info").mkdir(parents=True)
    (plugin / "recexec.py").write_text(RECORDING)
    (plugin / "recexec-1.0.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: recexec\nVersion: 1.0\n")
    (plugin / "recexec-1.0.dist-info/entry_points.txt").write_text(
        "[notebench.executors]\nrecording = recexec:RecordingExecutor\n")
    env = {"PYTHONPATH": os.pathsep.join([str(plugin), os.environ["PYTHONPATH"]])}
    spec = fork_join(tmp_path / "fj", sleep=0.1)
    unknown = notebench("run", str(spec), "--executor", "nowhere", "--no-lineage", env=env)
    assert unknown.returncode != 0 and "unknown executor 'nowhere'" in unknown.stderr
    assert "dask" in unknown.stderr and "local" in unknown.stderr and "recording" in unknown.stderr
    notebench("run", str(spec), "--executor", "recording", "--no-lineage", env=env, check=True)
    record = last_run(workspace, "fj")
    assert record["executor"] == "recording" and {s["worker"] for s in record["steps"].values()} == {"recording"}
    job = json.loads((workspace / "pipelines/fj/runs" / record["run_id"] / "jobs" / "b.json").read_text())
    assert job["step"] == "b" and job["parameters"]["upstream"] == {"a": {"a_out": str(
        workspace / "pipelines/fj/products/a/a.txt")}}
    assert job["env"]["NOTEBENCH_USE_CASE_OBJECT"] == FIXTURE_USE_CASE  # the runner's settings overrides travel along
    assert "plain (disabled)" == record["steps"]["b"]["kernel"]


def test_trials_as_dask_tasks_share_the_study_and_log_child_runs(workspace, tmp_path, use_case):
    import mlflow
    import optuna
    import pandas as pd
    from fixture_lib.use_case import readings
    from notebench.settings import load_settings
    from notebench.tuning import TrialObjective, run_trials

    frame = pd.concat([readings(day, size=150) for day in range(12)]).dropna(subset=[use_case.target])
    cut = pd.Timestamp("2026-02-09", tz="UTC")
    fit, validation = frame[frame.observed_at < cut], frame[frame.observed_at >= cut]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("trials", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment).info.run_id
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    objective = TrialObjective(FIXTURE_USE_CASE, fit, validation, 42, uri, experiment, parent, "s",
                               pythonpath=os.environ["PYTHONPATH"].split(os.pathsep))
    spread = run_trials(study, objective, 6, 600, 2, load_settings(), storage)
    assert spread["trials"] == 6 and sum(spread["workers"].values()) == 6 and len(spread["workers"]) == 2, spread
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6  # each task's sampler seeded apart
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 6 and {r.data.tags["notebench.worker"] for r in children} == set(spread["workers"])
    assert all(r.info.status == "FINISHED" and "validation_auc" in r.data.metrics for r in children)


def test_a_trial_objective_travels_with_the_contract_columns_only(use_case):
    import pickle

    import pandas as pd
    from fixture_lib.use_case import readings
    from notebench.tuning import TrialObjective

    frame = pd.concat([readings(day, size=50) for day in range(2)]).dropna(subset=[use_case.target])
    objective = TrialObjective(FIXTURE_USE_CASE, frame, frame, 42, "sqlite://", "0", "p", "s")
    sent = pickle.loads(pickle.dumps(objective))
    assert list(sent.fit.columns) == [*use_case.features, use_case.target] == list(sent.validation.columns)
    assert "device_id" in objective.fit.columns  # the caller's frames are left as they were
    assert sent.fit.equals(frame[[*use_case.features, use_case.target]])


@pytest.mark.parametrize("env, applied", [({"MALLOC_TRIM_THRESHOLD_": "65536"}, True),  # a Dask nanny's setting
                                          ({}, False),
                                          ({"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_MMAP_THRESHOLD_": "4096"},
                                           False)])  # the operator's own choice is kept
def test_workers_undo_the_frozen_mmap_threshold_only_where_the_nanny_froze_it(env, applied):
    code = ("import os; from notebench.pipeline.dask_executor import roomy_malloc; "
            "print(roomy_malloc(), os.environ.get('MALLOC_MMAP_THRESHOLD_'))")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([str(BIN / "python"), "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ([str(True), str(32 * 1024 * 1024)] if applied else [str(False), env.get("MALLOC_MMAP_THRESHOLD_",
                                                                                           "None")])


@pytest.mark.parametrize("scheduler", ["tcp://127.0.0.1:9", "nonsense"])
def test_an_unreachable_scheduler_is_a_clear_error_naming_it(workspace, tmp_path, scheduler):
    spec = make_pipeline(tmp_path / "one", {"s": {"body": "pass"}})
    started = time.perf_counter()
    proc = notebench("run", str(spec), "--no-lineage", env={**DASK, "NOTEBENCH_DASK_SCHEDULER": scheduler,
                                                             "NOTEBENCH_DASK_CONNECT_TIMEOUT": "3"})
    assert proc.returncode != 0 and scheduler in proc.stderr and "[dask] scheduler" in proc.stderr, proc.stderr
    assert time.perf_counter() - started < 60
    record = last_run(workspace, "one")
    assert record["state"] == "failed"  # recorded as failed, never left "running"


@pytest.mark.parametrize("uri, loads_plugins", [("http://127.0.0.1:5000", True), ("", False)])
def test_warm_kernels_load_mlflows_http_plugins_only_against_a_tracking_server(workspace, monkeypatch, uri,
                                                                                loads_plugins):
    """Feast's MLflow header plugin imports Feast on a process's first request to a server (4 s a step here): the
    kernel server pays it once, before it forks the steps' kernels; a workspace store needs none of it."""
    from notebench.pipeline.executors import MLFLOW_HTTP_IMPORTS, kernel_imports
    from notebench.settings import load_settings

    monkeypatch.setenv("NOTEBENCH_TRACKING_URI", uri)
    imports = kernel_imports(load_settings())
    assert imports[:len(load_settings().value("pipeline", "warm_imports"))] == load_settings().value(
        "pipeline", "warm_imports")
    assert (MLFLOW_HTTP_IMPORTS in imports) is loads_plugins
