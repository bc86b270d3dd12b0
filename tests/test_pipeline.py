"""The runner end to end: real papermill kernels, real MLflow, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, FIXTURE_PROJECT, ROOT, notebench
from pipeline_kit import fork_join, make_pipeline


def products(ws: Path, pipeline: str, step: str, name: str) -> str:
    return (ws / "pipelines" / pipeline / "products" / step / name).read_text()


def interval(text: str) -> tuple[float, float]:
    start, end = text.split()[:2]
    return float(start), float(end)


def last_run(ws: Path, pipeline: str) -> dict:
    runs = sorted((ws / "pipelines" / pipeline / "runs").glob("*/run.json"))
    return json.loads(runs[-1].read_text())


def states(ws: Path, pipeline: str) -> dict[str, str]:
    return {name: s["state"] for name, s in last_run(ws, pipeline)["steps"].items()}


@pytest.fixture
def forkjoin(tmp_path):
    return fork_join(tmp_path / "fj", sleep=1.5)


def test_fork_join_runs_forks_in_parallel_then_caches(workspace, forkjoin):
    notebench("run", str(forkjoin), check=True)
    b, c = interval(products(workspace, "fj", "b", "b.txt")), interval(products(workspace, "fj", "c", "c.txt"))
    assert b[0] < c[1] and c[0] < b[1], f"b {b} and c {c} did not overlap"
    a_end = interval(products(workspace, "fj", "a", "a.txt"))[1]
    assert min(b[0], c[0]) >= a_end  # the join waited for its upstream
    assert products(workspace, "fj", "a", "a.txt") in products(workspace, "fj", "d", "d.txt")

    proc = notebench("run", str(forkjoin), check=True)  # nothing changed: no kernel starts, every step cached
    assert set(states(workspace, "fj").values()) == {"cached"}, proc.stderr
    assert "never ran" not in proc.stdout


def test_changed_step_reruns_with_its_downstream_only_and_explain_says_why(workspace, forkjoin):
    notebench("run", str(forkjoin), check=True)
    nb = forkjoin.parent / "c.ipynb"
    nb.write_text(nb.read_text().replace("time.sleep(1.5)", "time.sleep(0.1)"))
    plan = notebench("run", str(forkjoin), "--explain", check=True).stdout
    lines = {ln.split()[0]: ln for ln in plan.splitlines()}
    assert "cached" in lines["a"] and "cached" in lines["b"]
    assert "run" in lines["c"] and "notebook code changed" in lines["c"]
    assert "maybe" in lines["d"] and "c" in lines["d"]
    notebench("run", str(forkjoin), check=True)
    assert states(workspace, "fj") == {"a": "cached", "b": "cached", "c": "done", "d": "done"}


def test_parameter_override_reruns_and_is_named(workspace, tmp_path):
    spec = make_pipeline(tmp_path / "pp", {"only": {
        "params": "n = 1\n", "products": {"out": "out.txt"},
        "body": "import pathlib\npathlib.Path(step.output('out')).write_text(str(n * 10))"}})
    notebench("run", str(spec), "--no-lineage", check=True)
    assert products(workspace, "pp", "only", "out.txt") == "10"
    plan = notebench("run", str(spec), "-p", "n=3", "--explain", check=True).stdout
    assert "parameter n changed: 1 -> 3" in plan
    notebench("run", str(spec), "-p", "n=3", "--no-lineage", check=True)
    assert products(workspace, "pp", "only", "out.txt") == "30"


def test_changed_use_case_module_reruns_the_steps_and_explain_says_why(workspace, tmp_path):
    # a copy of the fixture project first on the path: the runner and its kernels take the use case from it
    project = shutil.copytree(FIXTURE_PROJECT, tmp_path / "fixture", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": os.pathsep.join([str(project), os.environ["PYTHONPATH"]])}
    # neither step names the use case's module: both reach it through the contract only (`step.use_case`)
    spec = make_pipeline(tmp_path / "uc", {
        "describe": {"products": {"what": "what.txt"}, "body": (
            "import pathlib\npathlib.Path(step.output('what')).write_text(step.use_case.description)")},
        "count": {"products": {"n": "n.txt"}, "body": (
            "import pathlib\npathlib.Path(step.output('n')).write_text(str(len(step.use_case.features)))")},
    })
    notebench("run", str(spec), "--no-lineage", env=env, check=True)
    assert products(workspace, "uc", "describe", "what.txt") == "will a device fail within two days of a reading?"
    plan = notebench("run", str(spec), "--explain", env=env, check=True).stdout
    assert all("cached" in ln for ln in plan.splitlines() if ln.split()[:1] in (["describe"], ["count"])), plan

    module = project / "fixture_lib" / "use_case.py"
    module.write_text(module.read_text().replace("within two days of a reading?", "within two days? (edited)"))
    plan = notebench("run", str(spec), "--explain", env=env, check=True).stdout
    lines = {ln.split()[0]: ln for ln in plan.splitlines() if ln.strip()}
    for step in ("describe", "count"):
        assert "run" in lines[step] and "module fixture_lib.use_case changed" in lines[step], plan
        assert "notebook code changed" not in lines[step] and "notebench." not in lines[step], plan
    notebench("run", str(spec), "--no-lineage", env=env, check=True)
    assert states(workspace, "uc") == {"describe": "done", "count": "done"}
    assert products(workspace, "uc", "describe", "what.txt") == "will a device fail within two days? (edited)"


def test_failed_step_keeps_notebook_fails_the_run_and_resumes(workspace, tmp_path):
    flag = tmp_path / "fixed"
    spec = make_pipeline(tmp_path / "ff", {
        "first": {"products": {"x": "x.txt"}, "body": "import pathlib\npathlib.Path(step.output('x')).write_text('1')"},
        "second": {"upstream": ["first"], "products": {"y": "y.txt"}, "body": (
            "import pathlib\n"
            f"if not pathlib.Path({str(flag)!r}).exists():\n    raise ValueError('broken on purpose')\n"
            "pathlib.Path(step.output('y')).write_text('2')")},
    })
    proc = notebench("run", str(spec), "--wait-lineage")
    assert proc.returncode == 1
    assert "ValueError: broken on purpose" in proc.stderr and "resume with" in proc.stderr
    record = last_run(workspace, "ff")
    assert record["state"] == "failed" and record["steps"]["second"]["state"] == "failed"
    failed_nb = workspace / "pipelines/ff/runs" / record["run_id"] / "second.ipynb"
    assert "broken on purpose" in failed_nb.read_text()
    lineage = json.loads((failed_nb.parent / "lineage.json").read_text())
    assert lineage["status"] == "FAILED"
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    assert client.get_run(lineage["mlflow_runs"]["pipeline"]).info.status == "FAILED"
    assert not (workspace / "pipelines/ff/products/second").exists()  # nothing half-written became valid

    flag.touch()
    notebench("run", str(spec), check=True)
    assert states(workspace, "ff") == {"first": "cached", "second": "done"}


def test_lineage_parent_and_child_runs(workspace, forkjoin):
    notebench("run", str(forkjoin), "--trigger", "schedule", "--wait-lineage", check=True)
    run_dir = sorted((workspace / "pipelines/fj/runs").glob("*"))[-1]
    ids = json.loads((run_dir / "lineage.json").read_text())["mlflow_runs"]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    parent = client.get_run(ids["pipeline"])
    assert parent.data.tags["notebench.trigger"] == "schedule"
    assert parent.data.tags["mlflow.source.git.commit"] and parent.data.tags["notebench.spec_digest"]
    child = client.get_run(ids["step:b"])
    assert child.data.tags["mlflow.parentRunId"] == ids["pipeline"]
    assert child.data.metrics["duration_s"] > 1.0
    artifacts = {a.path for a in client.list_artifacts(ids["step:b"], "notebook")}
    assert artifacts == {"notebook/b.ipynb", "notebook/b.html"}
    assert "b_out" in json.loads(Path(client.download_artifacts(ids["step:b"], "products.json")).read_text())

    notebench("run", str(forkjoin), "--wait-lineage", check=True)  # all cached: each step points at its producer
    run_dir = sorted((workspace / "pipelines/fj/runs").glob("*"))[-1]
    cached = client.get_run(json.loads((run_dir / "lineage.json").read_text())["mlflow_runs"]["step:b"])
    assert cached.data.tags["notebench.cached"] == "true"
    assert cached.data.tags["notebench.cached_from_mlflow_run"] == ids["step:b"]


def test_second_run_refuses_while_first_holds_the_lock(workspace, tmp_path):
    spec = make_pipeline(tmp_path / "slow", {"s": {"body": "import time\ntime.sleep(20)"}})
    first = subprocess.Popen([str(BIN / "notebench"), "run", str(spec), "--no-lineage"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        deadline = time.time() + 30
        while not (workspace / "pipelines/slow/runs").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = notebench("run", str(spec), "--no-lineage")
        assert second.returncode == 3 and "already running" in second.stderr and "--wait" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_kill_9_mid_step_then_a_new_run_completes(workspace, tmp_path):
    spec = make_pipeline(tmp_path / "kk", {
        "w": {"products": {"big": "big.txt"}, "body": (
            "import pathlib, time\nout = pathlib.Path(step.output('big'))\nout.write_text('partial')\n"
            "time.sleep(30)\nout.write_text('complete')")},
    })
    runner = subprocess.Popen([str(BIN / "notebench"), "run", str(spec)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=os.environ.copy())
    staging = workspace / "pipelines/kk/products/.staging"
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.read_text() == "partial" for p in staging.glob("*/big.txt")):
        time.sleep(0.2)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    assert not (workspace / "pipelines/kk/products/w").exists()  # the partial product never became valid
    nb = spec.parent / "w.ipynb"
    nb.write_text(nb.read_text().replace("time.sleep(30)", "time.sleep(0)"))
    notebench("run", str(spec), check=True)
    assert products(workspace, "kk", "w", "big.txt") == "complete"
    killed = sorted((workspace / "pipelines/kk/runs").glob("*/run.json"))[0]
    from notebench.pipeline.store import RunRecord

    assert RunRecord.load(killed)["state"] == "killed"
