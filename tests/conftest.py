"""Shared fixtures: every test works in its own temporary workspace, never the project's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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
