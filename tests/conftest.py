"""Shared fixtures: every test works in its own temporary workspace, never the project's, and on the engine tests'
own use case (`tests/fixture_project`: sensors, string entity ids, labels inside the batches, no segments), never
the project's reference use case. End-to-end tests of a reference use case unset NOTEBENCH_USE_CASE_OBJECT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIXTURE_PROJECT = Path(__file__).resolve().parent / "fixture_project"
FIXTURE_USE_CASE = "fixture_lib.use_case:USE_CASE"

# the fixture use case, for this process and every process it starts (CLI, kernels, services)
os.environ["NOTEBENCH_USE_CASE_OBJECT"] = FIXTURE_USE_CASE
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FIXTURE_PROJECT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(FIXTURE_PROJECT))


@pytest.fixture(scope="session")
def use_case():
    """The engine tests' use case (the contract object of `fixture_lib.use_case`)."""
    from notebench.usecase import load_use_case

    return load_use_case(reference=FIXTURE_USE_CASE)


@pytest.fixture
def reference_use_case(monkeypatch):
    """For end-to-end tests of the project's own reference use case: the contract settings.ini names."""
    monkeypatch.delenv("NOTEBENCH_USE_CASE_OBJECT")


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A fresh workspace folder, selected through NOTEBENCH_WORKSPACE_PATH as CI does."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("NOTEBENCH_WORKSPACE_PATH", str(ws))
    monkeypatch.chdir(ROOT)
    return ws


def notebench(*args: str, env: dict | None = None, timeout: float = 600, check: bool = False):
    """Run the real `notebench` console script; return the CompletedProcess."""
    proc = subprocess.run([str(BIN / "notebench"), *args], cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"notebench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
