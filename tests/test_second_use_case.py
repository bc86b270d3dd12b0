"""A second use case through the whole product, changing nothing but `notebooks/0*.ipynb` and `settings.ini`.

The project is copied as a user would clone it; its use-case notebooks are replaced by the engine tests' fixture
(sensors: string device ids, labels inside the batches, no segments) and exported with nbdev; then the CLI runs
`notebench check`, `ci/smoke` and the whole `notebench demo` loop (train, serve, feedback, monitor, triggered
retrain), and the dashboards' panels read the result. Every command runs in a fresh process on the copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, FIXTURE_PROJECT, ROOT, run

pytestmark = pytest.mark.slow(minutes=4)  # check, ci/smoke and the whole demo loop on a copy


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = run(cmd, cwd=cwd, env=env, timeout=timeout)
    said = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{said}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    """A copy of this project whose use case is the fixture's, committed in a git repository of its own."""
    copy = tmp_path_factory.mktemp("second") / "project"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        source = ROOT / name
        if source.is_file() and not name.startswith(("tests/", "benchmarks/")):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    # the only edits: the use-case notebooks (and what nbdev exports from them)
    for old in (copy / "notebooks").glob("0*.ipynb"):
        old.unlink()
    for old in (copy / "nbs_lib").glob("*.py"):
        old.unlink()
    shutil.copy2(FIXTURE_PROJECT / "notebooks" / "01_use_case.ipynb", copy / "notebooks" / "01_use_case.ipynb")
    env = {k: v for k, v in os.environ.items() if k != "NOTEBENCH_USE_CASE_OBJECT"}
    env.update(PYTHONPATH=str(copy), PATH=f"{BIN}{os.pathsep}{env['PATH']}",
               NOTEBENCH_WORKSPACE_PATH=str(copy.parent / "workspace"),
               NOTEBENCH_MONITORING_SETTLE="2")  # the demo's monitoring pass need not wait 10 s after the replay
    _run([str(BIN / "nbdev-export")], copy, env)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "sensors"]):
        _run(cmd, copy, env)
    return copy, env


def test_the_copy_reads_the_second_use_case(project):
    copy, env = project
    assert sorted(p.name for p in (copy / "nbs_lib").glob("*.py")) == ["__init__.py", "_modidx.py", "use_case.py"]
    probe = "from notebench.usecase import load_use_case; import nbs_lib; uc = load_use_case(); " \
            "print(uc.name, uc.labels, nbs_lib.__file__)"
    out = _run([sys.executable, "-c", probe], copy, env).stdout.split()
    assert out[:2] == ["sensors", "in_batches"] and out[2].startswith(str(copy))


def test_check_and_smoke_pass(project):
    copy, env = project
    ws = Path(env["NOTEBENCH_WORKSPACE_PATH"])
    _run([str(BIN / "notebench"), "demo-data", "--days", "20"], copy, env)
    checked = _run([str(BIN / "notebench"), "check"], copy, env)
    assert "sensors" in checked.stdout + checked.stderr
    smoke = _run(["bash", "ci/smoke"], copy, env, timeout=1200)
    assert "ci/smoke passed" in smoke.stdout
    shutil.rmtree(ws)


def test_the_whole_loop_runs_on_the_second_use_case(project):
    copy, env = project
    demo = _run([str(BIN / "notebench"), "demo", "--days", "20", "--more-days", "5", "--trials", "2"], copy, env,
                 timeout=1500)
    out = demo.stdout
    served = out.split("3. Serving the champion")[1]
    assert "serves notebench-model version 1" in served and " 0 failed requests" in served
    assert "of training: succeeded" in served and "model version 2" in served  # the triggered retrain
    probe = """
import json
from notebench.dashboards import panels
from notebench.monitoring.monitor import read_results
from notebench.serving import read_feedback, read_predictions
from notebench.workspace import Workspace
ws = Workspace()
print(json.dumps({"champion": (panels.champion_summary(ws) or {}).get("version"),
                  "versions": len(panels.versions_table(ws)), "windows": len(read_results(ws)),
                  "predictions": len(read_predictions(ws)), "labels": len(read_feedback(ws)),
                  "runs": len(panels.recent_runs(ws))}))
"""
    seen = json.loads(_run([sys.executable, "-c", probe], copy, env).stdout.strip().splitlines()[-1])
    assert seen["champion"] in ("1", "2", 1, 2) and seen["versions"] == 2 and seen["runs"] >= 2
    assert seen["windows"] > 0 and seen["predictions"] > 0 and 0 < seen["labels"] <= seen["predictions"]
