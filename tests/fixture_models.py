"""Registered models of the fixture use case for serving tests: trained on a few days of `fixture_lib.use_case`
readings, logged with `notebench.registry.tracking.log_sklearn_model`, registered in a workspace's own store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
from conftest import BIN, ROOT
from notebench.workspace import Workspace


@dataclass
class Registered:
    name: str  # registered model name
    version: str
    run_id: str
    model: object  # the fitted estimator
    frame: pd.DataFrame  # the model's input columns, one row per reading


def readings_frame(days: int = 6, size: int = 60, seed: int = 0) -> pd.DataFrame:
    """Labelled readings of `days` days, the model's input columns and the target."""
    from fixture_lib.use_case import USE_CASE, readings

    frame = pd.concat([readings(day, size, seed) for day in range(days)], ignore_index=True)
    return frame.dropna(subset=[USE_CASE.target]).reset_index(drop=True)


def register_model(ws: Workspace, frame: pd.DataFrame, params: dict | None = None,
                   alias: str | None = "champion") -> Registered:
    """Train `make_model(params)` on `frame`, log it to a run of `ws`'s store, register it (alias `alias`)."""
    import mlflow
    from fixture_lib.use_case import USE_CASE, make_model
    from notebench.registry.tracking import log_sklearn_model

    client = ws.client()
    name = ws.settings.value("registry", "model_name")
    X = frame[list(USE_CASE.features)].reset_index(drop=True)
    model = make_model(params).fit(X, frame[USE_CASE.target])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(ws.tracking_uri)  # logging, and resolving the logged model's URI, use MLflow's global URI
    try:
        run = client.create_run(ws.experiment_id(client))
        info = log_sklearn_model(run.info.run_id, model, X.head(5))
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        version = client.create_model_version(name, info.model_uri, run_id=run.info.run_id)
    finally:
        mlflow.set_tracking_uri(previous)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return Registered(name, str(version.version), run.info.run_id, model, X)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(ws: Workspace, port: int, log: Path, *args: str) -> subprocess.Popen:
    """`notebench serve` (the console script) for workspace `ws` on 127.0.0.1:`port`."""
    env = {**os.environ, "NOTEBENCH_WORKSPACE_PATH": str(ws.root), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([str(BIN / "notebench"), "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning", *args], cwd=ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(url: str, proc: subprocess.Popen, log: Path, status: int = 200, timeout: float = 120.0):
    """Poll `url` until it answers `status`; fail naming the server's log if it exits or never does."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the service exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == status:
                return response
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {status} in {timeout} s (last: {last}):\n{log.read_text()[-3000:]}")


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
