"""The regression reference use case, `examples/deliveries/`: a project of its own, made by `notebench new`.

Its lessons run (the world and its scenarios, the inferred schema, the model, the contract), `notebench check` passes
on its sample, and its whole `make demo` loop runs on small sizes: land the world's first days, train and register a
regression model, serve it, replay shifted days as traffic with their delivery times as feedback, monitor, retrain on
the trigger, swap. Every command runs in a fresh process in the example's folder, on a workspace of the test's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, ROOT

pytestmark = pytest.mark.slow
EXAMPLE = ROOT / "examples" / "deliveries"


def _env(ws: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTEBENCH_USE_CASE_OBJECT", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(EXAMPLE), "NOTEBENCH_WORKSPACE_PATH": str(ws),
            "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}


def _run(cmd: list[str], env: dict, timeout: float = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    said = f"{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{said}"
    return proc


def test_the_example_is_a_project_of_its_own():
    settings = (EXAMPLE / "settings.ini").read_text()
    assert "object = deliveries_lib.use_case:USE_CASE" in settings and "model_name = deliveries-model" in settings
    for name in ("Makefile", "ci", "notebooks/pipelines", "dashboards"):  # the template's own files, linked
        assert (EXAMPLE / name).is_symlink() and (EXAMPLE / name).resolve() == (ROOT / name).resolve(), name
    assert not (EXAMPLE / ".copier-answers.yml").exists()  # copier would take it for the template's own


def test_the_lessons_pass(tmp_path):
    _run([str(BIN / "nbdev-test"), "--n-workers", "2", "--skip-folder-re", "^(pipelines|[_.].*)$"], _env(tmp_path))


def test_check_passes_on_the_sample(tmp_path):
    env = _env(tmp_path)
    _run([str(BIN / "notebench"), "demo-data", "--sample"], env)
    said = _run([str(BIN / "notebench"), "check"], env).stdout
    assert "use case 'deliveries': regression on 'delivery_minutes'" in said and "ok: split" in said


def test_the_whole_loop_runs(tmp_path):
    env = _env(tmp_path)
    out = _run([str(BIN / "notebench"), "demo", "--days", "16", "--more-days", "4", "--size", "150", "--trials", "2"],
               env).stdout
    served = out.split("3. Serving the champion")[1]
    assert "serves deliveries-model version 1" in served and " 0 failed requests" in served
    assert "model version 2" in served  # the retrain the new data and the drift triggered
    probe = """
import json
from notebench.monitoring.monitor import read_results
from notebench.serving import read_feedback, read_predictions
from notebench.workspace import Workspace
ws = Workspace()
print(json.dumps({"windows": len(read_results(ws)), "predictions": len(read_predictions(ws)),
                  "labels": len(read_feedback(ws))}))
"""
    proc = subprocess.run([sys.executable, "-c", probe], cwd=EXAMPLE, env=env, capture_output=True, text=True,
                          check=True)
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["predictions"] == 4 * 150 and seen["windows"] > 0 and 0 < seen["labels"] <= seen["predictions"]
