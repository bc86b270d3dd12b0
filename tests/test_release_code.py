"""A release carries the code it runs: two releases of one project whose use-case code differs (release 2 derives a
feature) deployed to one environment; a run uses the new code, after `rollback --env` a run uses the old code again
(checked by what the step wrote), everything ran in the releases' own venvs, and the host's own install is
unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import notebench
from release_kit import QUIET, build, engine_wheel, host_install, make_project, output


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("releases")
    engine = engine_wheel(tmp / "engine")
    return {"one": build(make_project(tmp / "one", engine, "1.0.0")),
            "two": build(make_project(tmp / "two", engine, "2.0.0", derived=True))}


def run(env: str) -> None:
    notebench("run", "training", "--env", env, "--no-lineage", env=QUIET, check=True)


def test_a_run_uses_the_deployed_release_code_and_rollback_restores_it(workspace, releases):
    one, two = releases["one"], releases["two"]
    host = host_install()
    envs = workspace / "environments"

    proc = notebench("deploy", str(one.path), "--env", "dev", env=QUIET, check=True)
    assert "new layer of locked packages" in proc.stdout
    run("dev")
    first = output(workspace, "dev")
    venv_one = envs / "dev" / "venvs" / one.hash
    assert first["derived"] == [] and first["prefix"] == str(venv_one)
    assert first["code"].startswith(str(venv_one / "lib"))  # the release's wheel, not tests/fixture_project
    assert first["version"] == one.manifest["versions"]["notebench"]
    # the release's settings, read for dev: its [environments.dev] override and the environment's own names and state
    assert (first["env"], first["n_trials"]) == ("dev", 3)
    assert (first["model_name"], first["experiment"]) == ("notebench-model-dev", "notebench-dev")
    assert first["workspace"] == str(envs / "dev" / "workspace")
    kernel = json.loads((venv_one / "share/jupyter/kernels/notebench/kernel.json").read_text())
    assert kernel["argv"][0] == str(venv_one / "bin" / "python")

    # release 2 (same lock: its locked packages are reused) -> the run uses its code
    proc = notebench("deploy", str(two.path), "--env", "dev", env=QUIET, check=True)
    assert "locked packages reused" in proc.stdout
    run("dev")
    second = output(workspace, "dev")
    assert second["derived"] == ["temp_per_load"] and second["prefix"] == str(envs / "dev" / "venvs" / two.hash)
    shown = notebench("--env", "dev", "--version", check=True).stdout
    assert "sensors 2.0.0 (the project: fixture_lib.use_case)" in shown and f"release {two.short}" in shown

    # one command restores code, settings and notebooks together; the next run uses the old code again
    proc = notebench("rollback", "--env", "dev", "--reason", "release 2 misbehaves", check=True)
    assert f"rolled back to release {one.short} (sensors 1.0.0" in proc.stdout
    run("dev")
    third = output(workspace, "dev")
    assert third["derived"] == [] and third["prefix"] == str(venv_one)
    assert "sensors 1.0.0" in notebench("--env", "dev", "--version", check=True).stdout

    # the host never ran a release's code, and nothing was installed into it
    assert host_install() == host
    assert not (workspace / "pipelines").exists()
    # the project's workspace holds the environments and the state database of their deploy locks and history
    assert {p.name for p in workspace.iterdir()} <= {"environments", "state.db", "state.db-wal", "state.db-shm",
                                                     "locks", ".gitignore"}


def test_the_trigger_service_follows_its_environment_to_the_new_release(workspace, releases, tmp_path):
    import os
    import signal
    import subprocess
    import time

    from conftest import BIN, ROOT

    one, two = releases["one"], releases["two"]
    notebench("deploy", str(one.path), "--env", "dev", env=QUIET, check=True)
    log = tmp_path / "watch.log"
    proc = subprocess.Popen([str(BIN / "notebench"), "watch", "--env", "dev", "--interval", "1", "--no-lineage"],
                            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def release_of_watcher() -> str:
        environ = dict(line.split("=", 1) for line in (Path(f"/proc/{proc.pid}/environ").read_bytes()
                                                      .decode(errors="replace").split("\0")) if "=" in line)
        return environ.get("NOTEBENCH_RELEASE", "")

    def wait(condition, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{what}:\n{log.read_text()}"
            time.sleep(0.5)

    try:
        wait(lambda: "watching for triggers" in log.read_text(), "the trigger service never started")
        assert release_of_watcher() == one.hash
        notebench("deploy", str(two.path), "--env", "dev", env=QUIET, check=True)
        wait(lambda: log.read_text().count("watching for triggers") == 2, "it never started again")
        assert "its release changed" in log.read_text() and release_of_watcher() == two.hash
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
