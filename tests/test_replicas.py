"""`notebench serve --workers 2`: two replicas behind one port, a hot swap under load with no failed request, every
replica's predictions in the log, and /metrics summing both (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from conftest import BIN, ROOT, wait_until
from notebench.data.batches import load_landing
from notebench.serving import read_predictions
from notebench.usecase import load_use_case
from notebench.workspace import Workspace

UC = load_use_case()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def feast_was_imported(tmp_path: Path) -> dict[str, str]:
    """The variables a process that imported Feast hands its children (Feast's private metrics folder): the replicas
    must still share a folder of their own, not Feast's."""
    folder = tmp_path / "feast_metrics_parent"
    folder.mkdir()
    return {"PROMETHEUS_MULTIPROC_DIR": str(folder), "PROMETHEUS_MULTIPROCESS_DIR": str(folder)}


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def load(base: str, stop: threading.Event, seen: list, row: dict) -> None:
    """Single-row requests, a new connection each (so that both replicas accept some), until `stop`."""
    while not stop.is_set():
        try:
            r = httpx.post(f"{base}/invocations", json={"dataframe_records": [row]}, timeout=30,
                           headers={"X-Request-Id": uuid.uuid4().hex, "Connection": "close"})
            seen.append((r.headers.get("x-model-version"), r.status_code))
        except httpx.HTTPError as exc:
            seen.append((None, type(exc).__name__))


def segment_pids(ws: Path) -> dict[int, set[str]]:
    """{writer pid: model versions it logged} from the prediction log's segments (names carry the pid)."""
    import pyarrow.parquet as pq

    out: dict[int, set[str]] = {}
    for segment in (ws / "predictions" / "log").rglob("*.parquet"):
        pid = int(segment.name.split("-")[1])
        out.setdefault(pid, set()).update(pq.read_table(segment, columns=["model_version"]).column(0).to_pylist())
    return out


def requests_counted(base: str) -> float:
    """notebench_requests_total for /invocations answered 200, as one scrape of the service shows it."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(
        r'^notebench_requests_total\{[^}]*endpoint="/invocations"[^}]*status="200"[^}]*\} (\S+)$', text, re.M))


def test_two_replicas_swap_without_a_failed_request_and_share_their_metrics(tmp_path, monkeypatch):
    import mlflow
    from notebench.registry.tracking import log_sklearn_model

    monkeypatch.setenv("NOTEBENCH_WORKSPACE_PATH", str(tmp_path / "ws"))
    monkeypatch.chdir(ROOT)
    ws = Workspace()
    client = ws.client()
    experiment = ws.experiment_id(client)
    name = ws.settings.value("registry", "model_name")
    UC.simulate(ws.landing, days=10, size=100)
    frame = load_landing(UC, ws.landing)
    X, y = frame[UC.features], frame[UC.target]
    mlflow.set_tracking_uri(ws.tracking_uri)
    models = []
    for params in ({}, {"max_iter": 10, "learning_rate": 0.3, "max_leaf_nodes": 8}):
        run = client.create_run(experiment)
        models.append((run.info.run_id, log_sklearn_model(run.info.run_id, UC.make_model(params).fit(X, y),
                                                          X.head(5)).model_uri))
    client.create_registered_model(name)
    first = str(client.create_model_version(name, models[0][1], run_id=models[0][0]).version)
    client.set_registered_model_alias(name, "champion", first)

    port, log = free_port(), tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    metrics_dirs = set(Path(tempfile.gettempdir()).glob("notebench-metrics-*"))
    server = subprocess.Popen([str(BIN / "notebench"), "serve", "--workers", "2", "--port", str(port),
                               "--watch-interval", "0.5", "--flush-interval", "0.2", "--log-level", "warning"],
                              cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **feast_was_imported(tmp_path)},
                              stdout=log.open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    stop, threads = threading.Event(), []
    try:
        wait_until(lambda: ready(base) or server.poll() is not None, 180, "the replicas to be ready")
        assert server.poll() is None, log.read_text()[-3000:]
        row = json.loads(X.dropna().head(1).to_json(orient="records"))[0]
        seen = [[] for _ in range(4)]
        threads = [threading.Thread(target=load, args=(base, stop, s, row)) for s in seen]
        for t in threads:
            t.start()
        wait_until(lambda: len(segment_pids(ws.root)) == 2, 120, "both replicas to log predictions")
        second = str(client.create_model_version(name, models[1][1], run_id=models[1][0]).version)
        client.set_registered_model_alias(name, "champion", second)  # each replica's watcher notices
        wait_until(lambda: all(second in versions for versions in segment_pids(ws.root).values()), 120,
                   "both replicas to predict with the new version")
        wait_until(lambda: all(s and s[-1][0] == second for s in seen), 60, "every client to get the new version")
        stop.set()
        for t in threads:
            t.join(60)
        answers = [r for s in seen for r in s]
        assert [r for r in answers if r[1] != 200] == [], "failed requests during the swap"
        assert {r[0] for r in answers} == {first, second}
        pids = segment_pids(ws.root)
        assert len(pids) == 2 and all(v == {first, second} for v in pids.values()), pids  # both served, both swapped
        # one scrape, whichever replica answers it, counts every replica's requests
        wait_until(lambda: requests_counted(base) == len(answers), 30, "/metrics to count every request")
        text = httpx.get(f"{base}/metrics", timeout=10).text
        assert re.search(rf'^notebench_model_info\{{[^}}]*version="{second}"[^}}]*\}} 1\.0$', text, re.M), text
        logged = read_predictions(ws)
        assert len(logged) <= len(answers) and set(logged.model_version) == {first, second}
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        os.killpg(server.pid, signal.SIGINT)
        server.wait(60)
    assert not set(Path(tempfile.gettempdir()).glob("notebench-metrics-*")) - metrics_dirs  # its metrics folder is gone
    assert not list((tmp_path / "feast_metrics_parent").iterdir())  # Feast's inherited folder was never used
    flushed = read_predictions(ws)
    assert len(flushed) == len(answers)  # stopping flushed every replica's log


COMPACT = """import sys, time
from pathlib import Path
from notebench.serving.predlog import compact
start = float(sys.argv[2])
time.sleep(max(0, start - time.time()))  # both processes start compacting at the same moment
print(len(compact(Path(sys.argv[1]))))
"""


def test_replicas_compacting_the_same_day_at_once_write_it_whole_and_once(tmp_path):
    """Every replica's log writer compacts closed days: two at once must neither clobber one file nor lose rows."""
    import numpy as np
    from notebench.serving.predlog import PredictionLog
    from notebench.serving.schema import Batch

    class Model:
        name, version = "m", "1"

    root = tmp_path / "predictions"
    for writer in range(2):  # two replicas' segments of one day
        log = PredictionLog(root, flush_interval=30).start()
        for i in range(150):
            batch = Batch({"x": np.arange(200, dtype=np.float64)}, 200)
            log.log(request_id=f"w{writer}-{i}", endpoint="/invocations", model=Model, columns=batch.columns,
                    output=np.full((200, 2), 0.5), rows=200, started=time.time(), latency=0.001)
            log.flush()
        log.close()
    day = next((root / "log").iterdir())
    day = day.rename(day.parent / "2020-01-01")  # a closed day
    start = time.time() + 3
    procs = [subprocess.Popen([str(BIN / "python"), "-c", COMPACT, str(root), str(start)], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    written = sorted(int(p.communicate(timeout=300)[0]) for p in procs)
    assert written == [0, 1]  # one compacted the day, the other found it taken
    assert [p.name for p in day.iterdir() if not p.name.startswith(".compaction")] == ["compacted.parquet"]
    rows = read_predictions(tmp_path)
    assert len(rows) == 2 * 150 * 200 and rows.request_id.nunique() == 300
