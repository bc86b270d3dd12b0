"""The prediction service on real models: a real uvicorn (and a real `mlflow models serve`) on free local ports,
and TestClient for the fast checks.

One small world of the engine tests' use case (sensors: a string entity `device_id`, the target inside the
feature batches) is trained into a temporary workspace: version 1 (champion) and a second model that predicts
differently (registered as version 2 by the swap test). The uvicorn server is started before training, so its
imports overlap the training; it waits for the champion alias. A second workspace holds the Feast feature repo
(sharing the first one's MLflow store), so that only the in-process app pays for importing Feast.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from notebench.data.batches import feature_rows, load_landing, read_batches
from notebench.serving import create_app, read_feedback, read_predictions
from notebench.serving.predlog import PredictionLog, compact
from notebench.settings import load_settings
from notebench.usecase import load_use_case
from notebench.workspace import Workspace

UC = load_use_case()  # the engine tests' use case (conftest selects it)
ENTITY, FEATURES, TARGET = UC.entities[0], UC.features, UC.target

BLESSING = ["auc overall 0.81 >= minimum 0.70"]
TOKEN = "s3cret-token"
BODY_LIMIT = 200_000


@dataclass
class World:
    ws: Workspace
    client: object
    name: str
    frame: pd.DataFrame  # feature rows of the model's inputs, none with a missing value
    runs: list  # (run_id, model_uri, local path) per trained model
    server: str  # base URL of the uvicorn server
    proc: subprocess.Popen
    server_log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def split(frame: pd.DataFrame) -> dict:
    return json.loads(frame.to_json(orient="split", index=False))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import mlflow
    from notebench.registry.tracking import log_sklearn_model

    root = tmp_path_factory.mktemp("serving")
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOTEBENCH_WORKSPACE_PATH", str(root / "ws"))
        mp.chdir(ROOT)
        ws = Workspace()
        client = ws.client()
        experiment = ws.experiment_id(client)  # creates the SQLite store before the server opens it
        name = ws.settings.value("registry", "model_name")

        port, log = free_port(), root / "server.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "notebench.serving", "--port", str(port), "--watch-interval",
                                 "0.5", "--flush-interval", "0.2", "--log-level", "warning"],
                                cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            UC.simulate(ws.landing, days=12, size=120)
            frame = load_landing(UC, ws.landing)
            X, y = frame[FEATURES], frame[TARGET]
            mlflow.set_tracking_uri(ws.tracking_uri)
            runs = []
            for params in ({}, {"max_iter": 10, "learning_rate": 0.3, "max_leaf_nodes": 8}):
                run = client.create_run(experiment)
                info = log_sklearn_model(run.info.run_id, UC.make_model(params).fit(X, y), X.head(5))
                local = mlflow.artifacts.download_artifacts(info.model_uri, tracking_uri=ws.tracking_uri)
                runs.append((run.info.run_id, info.model_uri, local))
            client.create_registered_model(name)
            v1 = client.create_model_version(name, runs[0][1], run_id=runs[0][0],
                                             tags={"notebench.blessed": "true",
                                                   "notebench.blessing.reasons": json.dumps(BLESSING)})
            client.set_registered_model_alias(name, "champion", v1.version)
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/ready", proc, log)
            yield World(ws, client, name, X.dropna().reset_index(drop=True), runs, base, proc, log)
        finally:
            mlflow.set_tracking_uri(previous_uri)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture(scope="module")
def features_ws(world, tmp_path_factory):
    """A second workspace with an applied, materialized feature repo, sharing the first one's MLflow store."""
    from notebench.features.store import FeatureRepo

    path = tmp_path_factory.mktemp("serving-features") / "ws"
    ws = Workspace(load_settings(environ={**os.environ, "NOTEBENCH_WORKSPACE_PATH": str(path),
                                          "NOTEBENCH_TRACKING_URI": world.ws.tracking_uri}))
    snapshots = feature_rows(UC, read_batches(world.ws.landing / "features"))  # the target stays out of the store
    source = ws.path("curated", "snapshots.parquet")
    snapshots.to_parquet(source)
    repo = FeatureRepo(ws)
    repo.apply(source)
    repo.materialize()
    latest = snapshots.sort_values(UC.timestamp).groupby(ENTITY).tail(1).set_index(ENTITY)
    return ws, latest.dropna(subset=FEATURES)


@pytest.fixture(scope="module")
def app_client(world, features_ws):
    """The app in-process on the feature workspace: token, small body limit, the challenger in shadow."""
    from fastapi.testclient import TestClient

    ws, _ = features_ws
    name = world.name
    v2 = world.client.create_model_version(name, world.runs[1][1], run_id=world.runs[1][0])
    world.client.set_registered_model_alias(name, "challenger", v2.version)
    app = create_app(ws, watch_interval=0, flush_interval=0.1, token=TOKEN, max_body_bytes=BODY_LIMIT,
                     shadow="challenger")
    with TestClient(app) as client:
        yield client


def good(client, frame) -> httpx.Response:
    response = client.post("/invocations", json={"dataframe_records": records(frame.head(2))})
    assert response.status_code == 200, response.text
    return response


# ---------------------------------------------------------------------------------------------------------
# formats and answers


def test_every_mlflow_format_gives_the_same_predictions(world, app_client):
    rows = world.frame.head(4)
    buffer = io.BytesIO()
    rows.to_parquet(buffer)
    columns = {c: rows[c].tolist() for c in rows}
    bodies = [{"json": {"dataframe_split": split(rows)}}, {"json": {"dataframe_records": records(rows)}},
              {"json": {"instances": records(rows)}}, {"json": {"inputs": columns}},
              {"json": {"instances": rows.values.tolist()}},
              {"content": rows.to_csv(), "headers": {"content-type": "text/csv"}},
              {"content": rows.to_csv(index=False), "headers": {"content-type": "text/csv; charset=utf-8"}},
              {"content": buffer.getvalue(), "headers": {"content-type": "application/vnd.apache.parquet"}}]
    answers = []
    for body in bodies:
        response = app_client.post("/invocations", **body)
        assert response.status_code == 200, (body, response.text)
        answers.append(response.json())
    assert all(a == answers[0] for a in answers)
    assert set(answers[0]) == {"predictions", "model_version"} and answers[0]["model_version"] == "1"
    assert np.array(answers[0]["predictions"]).shape == (4, 2)


def test_predict_by_record_and_by_entity(world, app_client, features_ws):
    _, latest = features_ws
    ids = latest.index[:3].tolist()
    assert all(isinstance(i, str) and i.startswith("dev-") for i in ids)  # a string entity, as the use case declares
    by_entity = app_client.post("/predict", json={"entities": ids})
    assert by_entity.status_code == 200, by_entity.text
    body = by_entity.json()
    assert body["entities"] == ids and body["model_version"] == "1" == by_entity.headers["x-model-version"]
    assert body["request_id"] == by_entity.headers["x-request-id"]
    by_record = app_client.post("/predict", json={"records": records(latest.loc[ids, FEATURES])}).json()
    assert np.allclose(body["predictions"], by_record["predictions"])  # the online store served the same features
    full = app_client.post("/invocations", json={"dataframe_split": split(latest.loc[ids, FEATURES])}).json()
    assert np.allclose(body["predictions"], np.array(full["predictions"])[:, 1])  # positive-class probability


BAD_INPUTS = [  # (what, request, status, words the message must hold)
    ("missing column", {"json": {"dataframe_records": "drop:hours_since_service"}}, 422,
     ["missing", "hours_since_service"]),
    ("extra column", {"json": {"dataframe_records": "add:shoe_size=42"}}, 422, ["unexpected", "shoe_size"]),
    ("string in a numeric column", {"json": {"dataframe_records": "set:temperature='abc'"}}, 422,
     ["temperature", "string 'abc'"]),
    ("fraction in an integer column", {"json": {"dataframe_records": "set:hours_since_service=3.5"}}, 422,
     ["hours_since_service", "3.5"]),
    ("null in an integer column", {"json": {"dataframe_records": "set:hours_since_service=None"}}, 422,
     ["hours_since_service", "null"]),
    ("NaN in an integer column", {"content": "nan"}, 422, ["hours_since_service", "NaN"]),
    ("number in a string column", {"json": {"dataframe_records": "set:line=5"}}, 422, ["line", "number 5"]),
    ("infinity in a float column", {"content": "inf"}, 422, ["load_pct", "finite"]),
    ("row of the wrong length", {"json": {"dataframe_split": {"columns": FEATURES, "data": [[1, 2]]}}}, 422,
     [f"{len(FEATURES)} values"]),
    ("empty payload (no rows)", {"json": {"dataframe_records": []}}, 422, ["empty payload"]),
    ("empty body", {"content": b"", "headers": {"content-type": "application/json"}}, 400, ["empty payload"]),
    ("malformed JSON", {"content": b'{"dataframe_records": [', "headers": {"content-type": "application/json"}},
     400, ["malformed JSON"]),
    ("no format key", {"json": {"rows": []}}, 400, ["dataframe_split", "exactly one"]),
    ("unsupported media type", {"content": b"a b", "headers": {"content-type": "text/plain"}}, 415,
     ["text/plain"]),
    ("body over the limit", {"content": b" " * (BODY_LIMIT + 1), "headers": {"content-type": "application/json"}},
     413, ["too large", str(f"{BODY_LIMIT:,}")]),
    ("malformed CSV header", {"content": b"a,b\n1,2\n", "headers": {"content-type": "text/csv"}}, 422,
     ["missing columns"]),
]


def _request(spec: dict, frame: pd.DataFrame) -> dict:
    """The request of a BAD_INPUTS entry (symbolic edits of two good records made concrete)."""
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.items()}
    if spec.get("content") in ("nan", "inf"):  # non-standard JSON tokens Python's json reads
        rows = records(frame.head(2))
        text = json.dumps({"dataframe_records": rows})
        col = "hours_since_service" if spec["content"] == "nan" else "load_pct"
        token = "NaN" if spec["content"] == "nan" else "Infinity"
        text = text.replace(f'"{col}": {rows[0][col]}', f'"{col}": {token}', 1)
        return {"content": text.encode(), "headers": {"content-type": "application/json"}}
    edit = spec.get("json", {}).get("dataframe_records")
    if isinstance(edit, str):
        op, _, arg = edit.partition(":")
        rows = records(frame.head(2))
        for row in rows:
            if op == "drop":
                row.pop(arg)
            else:
                key, _, value = arg.partition("=")
                if op == "add" or row is rows[1]:
                    row[key] = eval(value)  # a literal from the table above
        spec["json"] = {"dataframe_records": rows}
    return spec


@pytest.mark.parametrize("what, spec, status, words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_a_bad_input_gets_its_4xx_and_the_next_request_succeeds(world, app_client, what, spec, status, words):
    response = app_client.post("/invocations", **_request(spec, world.frame))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] and response.headers["x-model-version"] == "1"
    for word in words:
        assert word in body["message"], (word, body["message"])
    good(app_client, world.frame)


def test_what_is_accepted_as_the_signature_allows(world, app_client):
    rows = records(world.frame.head(2))
    rows[0]["hours_since_service"] = 12.0  # integral float in an integer column
    rows[0]["temperature"] = 50  # integer in a float column
    rows[1]["vibration"] = None  # missing value in a float column
    rows[1]["line"] = None  # missing category, as MLflow allows
    response = app_client.post("/invocations", json={"dataframe_records": rows})
    assert response.status_code == 200, response.text


def test_predict_and_feedback_refuse_bad_requests_by_name(world, app_client):
    unknown = app_client.post("/predict", json={"entities": ["dev-9999", "dev-0001"]})
    assert unknown.status_code == 404 and "dev-9999" in unknown.json()["message"]
    assert "dev-0001" not in unknown.json()["message"]  # only the ids the online store lacks are named
    number = app_client.post("/predict", json={"entities": [1]})  # device_id is a string: 1 is not "dev-0001"
    assert number.status_code == 422 and "device_id" in number.json()["message"], number.text
    both = app_client.post("/predict", json={"entities": ["dev-0001"], "records": records(world.frame.head(1))})
    assert both.status_code == 422 and "exactly one" in both.json()["message"]
    assert app_client.post("/predict", json={"entities": []}).status_code == 422
    bad_id = app_client.post("/predict", json={"entities": [True]})
    assert bad_id.status_code == 422 and "entity id" in bad_id.json()["message"]
    assert app_client.post("/predict", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    no_token = app_client.post("/feedback", json={"request_id": "x", "label": 1})
    assert no_token.status_code == 401 and no_token.headers["www-authenticate"] == "Bearer"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad_label = app_client.post("/feedback", json={"request_id": "x", "label": "yes"}, headers=auth)
    assert bad_label.status_code == 422 and "label" in bad_label.json()["message"]
    assert app_client.post("/reload").status_code == 401
    for body in (b'{"request_id": "\\ud800", "label": 1}', b'{"request_id": "r", "label": 1, "row": 1099511627776}'):
        odd = app_client.post("/feedback", content=body, headers={**auth, "content-type": "application/json"})
        assert odd.status_code == 422, odd.text  # found by the fuzzer: once a 500
    good(app_client, world.frame)


def test_feedback_is_durable_beside_the_predictions_and_shadow_is_logged(world, app_client, features_ws):
    ws, _ = features_ws
    rid = f"req-{uuid.uuid4().hex[:8]}"
    answer = app_client.post("/predict", json={"records": records(world.frame.head(2))}, headers={"X-Request-Id": rid})
    assert answer.json()["request_id"] == rid
    auth = {"Authorization": f"Bearer {TOKEN}"}
    fb = app_client.post("/feedback", json=[{"request_id": rid, "label": 1, "row": 0},
                                            {"request_id": rid, "label": False, "row": 1}], headers=auth)
    assert fb.status_code == 200 and fb.json()["accepted"] == 2
    got = read_feedback(ws)  # acknowledged means written: no waiting for a flush
    assert got[got.request_id == rid].sort_values("row").label.tolist() == [1.0, 0.0]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        logged = read_predictions(ws)
        mine = logged[logged.request_id == rid]
        if len(mine) == 4:
            break
        time.sleep(0.1)
    by_role = {role: rows for role, rows in mine.groupby("role")}
    assert set(by_role) == {"champion", "shadow"}, mine
    assert by_role["champion"].model_version.unique().tolist() == ["1"]
    assert by_role["shadow"].model_version.unique().tolist() == ["2"]
    assert np.allclose(by_role["champion"].prediction, answer.json()["predictions"])
    assert not np.allclose(by_role["shadow"].prediction, by_role["champion"].prediction)
    assert (by_role["champion"].hours_since_service.to_numpy()
            == world.frame.hours_since_service.head(2).to_numpy()).all()
    assert read_predictions(ws, since=pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=1)).empty
    # text that is not valid Unicode (a lone surrogate escaped in JSON) is scored, and logged repaired
    text = json.dumps({"dataframe_records": records(world.frame.head(1))}).replace('"line": "', '"line": "\\ud800')
    odd = app_client.post("/invocations", content=text.encode(), headers={"X-Request-Id": rid + "-odd"})
    assert odd.status_code == 200, odd.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (read_predictions(ws).request_id == rid + "-odd").any():
        time.sleep(0.1)
    logged = read_predictions(ws)
    assert logged[logged.request_id == rid + "-odd"].line.iloc[0].startswith("?")


def test_operations_endpoints(world, app_client):
    health = app_client.get("/health")
    assert health.status_code == 200 and health.headers["x-model-version"] == "1"
    assert app_client.get("/ready").json() == {"ready": True, "problems": [], "model_version": "1"}
    model = app_client.get("/model").json()
    assert (model["name"], model["version"], model["alias"], model["run_id"]) == (world.name, "1", "champion",
                                                                                  world.runs[0][0])
    assert model["blessing"] == {"blessed": True, "reasons": BLESSING}
    assert model["shadow"]["version"] == "2" and model["shadow"]["alias"] == "challenger"
    assert [c["name"] for c in model["inputs"]] == FEATURES
    reload = app_client.post("/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reload.status_code == 200 and reload.json()["changed"] is False
    metrics = app_client.get("/metrics")
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    for line in ('notebench_requests_total{endpoint="/invocations",method="POST",status="200"}',
                 'notebench_request_errors_total{endpoint="/invocations",status="422"}',
                 'notebench_request_duration_seconds_bucket{endpoint="/invocations",le="+Inf"}',
                 'notebench_predicted_rows_total{model_version="2",role="shadow"}'):
        assert line in text, line
    from prometheus_client.parser import text_string_to_metric_families

    info = {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "notebench_model_info"}
    assert info[(("alias", "champion"), ("name", world.name), ("version", "1"))] == 1, info
    assert app_client.get("/docs").status_code == 200 and "/invocations" in app_client.get("/openapi.json").json()[
        "paths"]


def test_a_service_without_a_champion_is_alive_not_ready_then_loads_on_reload(world, features_ws):
    from fastapi.testclient import TestClient

    ws, _ = features_ws
    name = f"later-{uuid.uuid4().hex[:6]}"
    with TestClient(create_app(ws, model_name=name, watch_interval=0, log_predictions=False)) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503 and name in ready.json()["problems"][0]
        assert client.post("/invocations", json={"dataframe_records": records(world.frame.head(1))}).status_code == 503
        world.client.create_registered_model(name)
        version = world.client.create_model_version(name, world.runs[1][1], run_id=world.runs[1][0])
        world.client.set_registered_model_alias(name, "champion", version.version)
        assert client.post("/reload").json()["changed"] is True
        assert client.get("/ready").status_code == 200
        assert good(client, world.frame).headers["x-model-version"] == "1"  # version 1 of the new name


def test_shutdown_flushes_the_prediction_log(world, tmp_path):
    from fastapi.testclient import TestClient

    ws = Workspace(load_settings(environ={**os.environ, "NOTEBENCH_WORKSPACE_PATH": str(tmp_path / "ws"),
                                          "NOTEBENCH_TRACKING_URI": world.ws.tracking_uri}))
    with TestClient(create_app(ws, watch_interval=0, flush_interval=3600, flush_rows=10**6)) as client:
        rid = good(client, world.frame).headers["x-request-id"]
        assert read_predictions(ws).empty  # nothing flushed yet...
    assert read_predictions(ws).request_id.tolist() == [rid, rid]  # ...until the server stops


def test_the_token_from_the_environment_guards_feedback_and_reload_only(world, tmp_path):
    """`NOTEBENCH_SERVING_TOKEN` (how production sets `[serving] token`) is enforced; predictions need no token."""
    from fastapi.testclient import TestClient

    ws = Workspace(load_settings(environ={**os.environ, "NOTEBENCH_WORKSPACE_PATH": str(tmp_path / "ws"),
                                          "NOTEBENCH_TRACKING_URI": world.ws.tracking_uri,
                                          "NOTEBENCH_SERVING_TOKEN": "from-the-env"}))
    with TestClient(create_app(ws, watch_interval=0, flush_interval=0.1)) as client:
        rid = good(client, world.frame).headers["x-request-id"]
        item = {"request_id": rid, "label": 1, "row": 0}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "from-the-env"},
                        {"Authorization": f"Bearer {TOKEN}"}):
            assert client.post("/feedback", json=item, headers=headers).status_code == 401, headers
            assert client.post("/reload", headers=headers).status_code == 401, headers
        auth = {"Authorization": "bearer from-the-env"}  # the scheme is case-insensitive
        assert client.post("/feedback", json=item, headers=auth).json()["accepted"] == 1
        assert client.post("/reload", headers=auth).status_code == 200
    assert read_feedback(ws).request_id.tolist() == [rid]  # only the authorized feedback was written


def test_a_request_finishes_on_the_version_it_started_with():
    """The micro-batcher groups queued requests by the model they started with, even across a swap."""
    import asyncio

    from notebench.serving.batching import MicroBatcher
    from notebench.serving.schema import Batch

    release = threading.Event()

    class Version:
        def __init__(self, version, slow=False):
            self.version, self.slow = version, slow

        def predict(self, batch):
            if self.slow:
                release.wait(5)
            return np.full(batch.rows, float(self.version))

    async def scenario():
        batcher = MicroBatcher().start()
        one = Batch({"x": np.array([0.0])}, 1)
        old, new = Version(1, slow=True), Version(2)
        first = asyncio.ensure_future(batcher.predict(old, one))  # in flight on version 1...
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.predict(new, one))  # ...when version 2 is swapped in
        third = asyncio.ensure_future(batcher.predict(old, one))  # a request that had taken version 1 earlier
        release.set()
        results = await asyncio.gather(first, second, third)
        batcher.stop()
        return [r.tolist() for r in results]

    assert asyncio.run(scenario()) == [[1.0], [2.0], [1.0]]


def test_prediction_log_segments_compaction_and_torn_writes(tmp_path):
    from notebench.serving.schema import Batch

    class Model:
        name, version = "m", "7"

    log = PredictionLog(tmp_path / "predictions", flush_interval=30).start()
    batch = Batch({"a": np.arange(3, dtype=np.int64), "b": np.array(["x", None, "z"], dtype=object)}, 3)
    log.log(request_id="r1", endpoint="/predict", model=Model, columns=batch.columns,
            output=np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]), rows=3, started=time.time(), latency=0.002)
    log.flush()
    other = {"a": np.array([5]), "c": np.array([1.5])}  # a version with other inputs, in a later segment
    log.log(request_id="r2", endpoint="/invocations", model=Model, columns=other, output=np.array([[0.4, 0.6]]),
            rows=1, started=time.time(), latency=0.001)
    log.close()  # flushes what is buffered
    day = next((tmp_path / "predictions" / "log").iterdir())
    assert len(list(day.glob("*.parquet"))) == 2
    (day / ".00000000000000001-1-000001.parquet.tmp").write_bytes(b"PAR1 torn")  # a writer killed mid-write
    rows = read_predictions(tmp_path)
    assert rows.request_id.tolist() == ["r1"] * 3 + ["r2"] and rows.row.tolist() == [0, 1, 2, 0]
    assert rows.prediction.tolist() == [0.1, 0.2, 0.3, 0.6] and rows.b.tolist() == ["x", None, "z", None]
    assert rows.c.isna().tolist() == [True] * 3 + [False]
    assert rows.latency_ms.iloc[0] == pytest.approx(2.0) and str(rows.time.dt.tz) == "UTC"
    # a closed day is compacted into one file; segments left by a compaction that died are never read twice
    old = tmp_path / "predictions" / "log" / "2020-01-01"
    day.rename(old)
    kept = next(old.glob("[0-9]*.parquet")).read_bytes()
    assert compact(tmp_path / "predictions") == [old / "compacted.parquet"]
    assert [p.name for p in old.glob("*.parquet")] == ["compacted.parquet"]
    (old / "00000000000000002-1-000002.parquet").write_bytes(kept)  # as if the deletion had not happened
    again = read_predictions(tmp_path)
    pd.testing.assert_frame_equal(again[rows.columns], rows)
    assert len(read_predictions(tmp_path, since="2020-01-02")) == 0


def test_rows_logged_after_their_day_are_read_by_time_not_by_folder(tmp_path):
    """A day folder is the day of the flush: rows of a request that started before midnight and was flushed after it
    sit in the next day's folder, and a read that ends before that day still finds them (the monitoring job's
    labelled windows read so; once they came back empty for an hour after each midnight)."""
    from notebench.serving.schema import Batch

    class Model:
        name, version = "m", "1"

    two_days_ago = time.time() - 2 * 86400
    log = PredictionLog(tmp_path / "predictions", flush_interval=30).start()
    batch = Batch({"a": np.arange(3, dtype=np.int64)}, 3)
    log.log(request_id="late", endpoint="/invocations", model=Model, columns=batch.columns,
            output=np.array([0.1, 0.2, 0.3]), rows=3, started=two_days_ago, latency=0.001)
    log.close()  # flushed now: today's folder
    (folder,) = (tmp_path / "predictions" / "log").iterdir()
    assert folder.name == time.strftime("%Y-%m-%d", time.gmtime())
    since, until = [pd.Timestamp(two_days_ago + d, unit="s", tz="UTC") for d in (-60, 86400)]
    rows = read_predictions(tmp_path, since=since, until=until)
    assert rows.request_id.tolist() == ["late"] * 3
    assert read_predictions(tmp_path, since=since, until=since + pd.Timedelta(seconds=1)).empty


# ---------------------------------------------------------------------------------------------------------
# the real server


def test_invocations_answers_as_mlflow_models_serve_does(world, monkeypatch):
    """The reference answers come from MLflow's own scoring server (`mlflow.pyfunc.scoring_server`, the app that
    `mlflow models serve` runs under uvicorn) on the same artifact; benchmarks/serving.py checks the CLI's too."""
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    monkeypatch.setenv("MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")  # `init` sets it: restored after the test
    mlflow_app = scoring_server.init(mlflow.pyfunc.load_model(world.runs[0][2]))
    rows = world.frame.iloc[10:15]
    with TestClient(mlflow_app) as theirs_client:
        for body in ({"json": {"dataframe_split": split(rows)}}, {"json": {"dataframe_records": records(rows)}},
                     {"content": rows.to_csv(index=False), "headers": {"content-type": "text/csv"}}):
            theirs = theirs_client.post("/invocations", **body)
            ours = httpx.post(f"{world.server}/invocations", timeout=30, **body)
            assert theirs.status_code == ours.status_code == 200, (theirs.text, ours.text)
            assert ours.headers["content-type"] == theirs.headers["content-type"] == "application/json"
            recorded = theirs.json()
            assert set(recorded) == {"predictions"}
            assert ours.json() == {**recorded, "model_version": "1"}  # same predictions, to the last digit


def test_fuzzing_the_openapi_spec_finds_no_server_error(world):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{world.server}/openapi.json")
    failures = []
    with httpx.Client(base_url=world.server, timeout=30) as http:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def run(case):
                    response = case.call(base_url=world.server)
                    if response.status_code >= 500:
                        failures.append((case.method, case.path, case.body, response.status_code, response.text))

                try:
                    run()
                except Unsatisfiable:  # no invalid input exists for an operation without parameters or body
                    assert mode == schemathesis.GenerationMode.NEGATIVE
        assert not failures, failures[:3]
        assert http.get("/ready").status_code == 200  # and it still serves
        good(http, world.frame)


def _load(base: str, stop: threading.Event, seen: list, rows: list[dict], ids: bool = False) -> None:
    """Single-row requests in a loop until `stop`; appends (version, prediction, status, rid, time) to `seen`."""
    with httpx.Client(base_url=base, timeout=30) as http:
        i = 0
        while not stop.is_set():
            rid = uuid.uuid4().hex
            try:
                r = http.post("/invocations", json={"dataframe_records": [rows[i % len(rows)]]},
                              headers={"X-Request-Id": rid})
            except httpx.HTTPError as exc:
                seen.append((None, None, type(exc).__name__, rid, time.time()))
                if ids:
                    return
                continue
            version = r.headers.get("x-model-version")
            seen.append((version, r.json()["predictions"][0][1] if r.status_code == 200 else None, r.status_code,
                         rid, time.time()))
            i += 1


def test_a_swap_under_steady_load_fails_no_request(world):
    rows = records(world.frame.head(1))
    stop, seen = threading.Event(), [[] for _ in range(4)]
    threads = [threading.Thread(target=_load, args=(world.server, stop, s, rows)) for s in seen]
    for t in threads:
        t.start()
    time.sleep(1.5)
    new = str(world.client.create_model_version(world.name, world.runs[1][1], run_id=world.runs[1][0]).version)
    world.client.set_registered_model_alias(world.name, "champion", new)  # the watcher will notice
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(s and s[-1][0] == new for s in seen):
        time.sleep(0.1)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    flat = [r for s in seen for r in s]
    assert [r for r in flat if r[2] != 200] == [], "failed requests during the swap"
    assert {r[0] for r in flat} == {"1", new}
    for s in seen:  # a client answered by the new version is never answered by the old one again
        versions = [r[0] for r in s]
        assert versions == sorted(versions, key=lambda v: v == new)
    by_version = {v: {round(r[1], 12) for r in flat if r[0] == v} for v in ("1", new)}
    assert len(by_version["1"]) == len(by_version[new]) == 1 and by_version["1"] != by_version[new]
    world.client.set_registered_model_alias(world.name, "champion", "1")  # and back, at once through /reload
    back = httpx.post(f"{world.server}/reload", timeout=60).json()  # (unless the watcher got there first)
    assert back["version"] == "1" and (back["changed"], back["previous_version"]) in ((True, new), (False, "1"))
    with httpx.Client(base_url=world.server) as http:
        assert good(http, world.frame).headers["x-model-version"] == "1"


def test_kill_9_under_load_leaves_a_whole_readable_log(world):
    """Last: it kills the module's server."""
    rows = records(world.frame.head(5))
    stop, seen = threading.Event(), [[] for _ in range(3)]
    threads = [threading.Thread(target=_load, args=(world.server, stop, s, rows, True)) for s in seen]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60  # some answered requests: on a busy machine 2.5 s may give only a few
    while time.monotonic() < deadline and sum(r[2] == 200 for s in seen for r in s) <= 25:
        time.sleep(0.1)
    time.sleep(0.5)
    killed_at = time.time()
    world.proc.send_signal(signal.SIGKILL)
    world.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    answered = {r[3]: r[4] for s in seen for r in s if r[2] == 200}
    assert len(answered) > 20
    for segment in (world.ws.root / "predictions" / "log").rglob("*.parquet"):
        import pyarrow.parquet as pq

        pq.read_table(segment)  # every finished segment is a whole Parquet file
    logged = read_predictions(world.ws)
    mine = logged[logged.request_id.isin(answered)]
    assert mine[["request_id", "time", "model_version", "prediction", *FEATURES]].notna().all().all()
    assert mine.prediction.between(0, 1).all() and (mine.row == 0).all()
    # at most the last flush interval is lost (0.2 s here; 1.5 s allows for a busy machine)
    must_have = {rid for rid, at in answered.items() if at < killed_at - 1.5}
    assert must_have <= set(mine.request_id), f"{len(must_have - set(mine.request_id))} answered rows lost"
    assert math.isfinite(mine.latency_ms.max())
