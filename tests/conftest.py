"""Shared fixtures: every test works in its own temporary workspace, never the project's, and on the engine tests'
own use case (`tests/fixture_project`: sensors, string entity ids, labels inside the batches, no segments), never
the project's reference use case. End-to-end tests of a reference use case unset NOTEBENCH_USE_CASE_OBJECT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIXTURE_PROJECT = Path(__file__).resolve().parent / "fixture_project"
FIXTURE_USE_CASE = "fixture_lib.use_case:USE_CASE"
DASHBOARD_TIMINGS = ROOT / "tests" / "artifacts" / "dashboards" / "timings.json"  # written by test_dashboards.py

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


def run(cmd: list[str], *, cwd: Path = ROOT, env: dict | None = None, timeout: float = 600):
    """Run `cmd` (environment `env`, default this process's) and capture its output; return the CompletedProcess.
    It runs in its own session, and a timeout (or Ctrl-C) kills its whole process group: what the command started (a
    service, a kernel server) must not outlive the test (a timed-out `notebench demo` left its service running)."""
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=os.environ if env is None else env, start_new_session=True) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except BaseException as exc:  # the timeout, or Ctrl-C (the new session does not get the terminal's)
            os.killpg(child.pid, signal.SIGKILL)
            out, err = child.communicate()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise AssertionError(f"{' '.join(map(str, cmd))} did not finish in {timeout} s\n{out[-4000:]}\n"
                                     f"{err[-4000:]}") from None
            raise
    return subprocess.CompletedProcess(cmd, child.returncode, out, err)


def notebench(*args: str, env: dict | None = None, timeout: float = 600, check: bool = False):
    """Run the real `notebench` console script (`env` added to this process's); return the CompletedProcess."""
    proc = run([str(BIN / "notebench"), *args], env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"notebench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# ---------------------------------------------------------------------------------------------------------
# the run: two xdist workers (ci/test), each module's shared fixtures built once, the longest work first

_STARTED = pytest.StashKey[float]()


def wait_until(condition, timeout: float, what: str):
    """condition()'s first truthy value, polling every 0.2 s; fails naming `what` after `timeout` seconds (a bound on
    a condition, never a budget: a busy machine only makes it wait longer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def pytest_configure(config):
    config.stash[_STARTED] = time.time()


def _minutes(item) -> float:
    """About how long a `slow` test (or its module) takes on a quiet 2-core machine: `slow(minutes=N)`, else 1."""
    mark = item.get_closest_marker("slow")
    return mark.kwargs.get("minutes", 1) if mark else 0


def pytest_collection_modifyitems(config, items):
    """Start the longest `slow` work first, so that the two workers finish together instead of one waiting on a long
    test dealt last."""
    position = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (-_minutes(item), position[id(item)]))  # a module's marks are its items': contiguous


def pytest_terminal_summary(terminalreporter, config):
    """Report the dashboards' render times this run measured (recorded, not asserted: they follow the load)."""
    path = DASHBOARD_TIMINGS
    if not path.exists() or path.stat().st_mtime < config.stash.get(_STARTED, 0):
        return
    terminalreporter.section("dashboards: seconds to a fully rendered page in Chromium (load average)")
    for tag, pages in json.loads(path.read_text()).items():
        terminalreporter.write_line(f"{tag:>8}: " + ", ".join(f"{page} {t['seconds']:.1f} s ({t['load']:.1f})"
                                                           for page, t in pages.items()))
