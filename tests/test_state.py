"""The state layer: migrations, the one lock primitive, leases instead of pids, atomic champion changes under two
real promoter processes, clear errors for unreachable servers with credentials masked.

Every test runs on SQLite in a temporary workspace; the ones marked `team` run the same against a real PostgreSQL
(the team stack's when `NOTEBENCH_TEST_POSTGRES` names one, else a throwaway server started here as the `postgres`
user and stopped afterwards) and a real `mlflow server` on it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import BIN, ROOT, notebench
from notebench.state import schema
from notebench.state.store import LockBusy, State, StateError, StateUnavailable, open_state
from notebench.state.uri import mask_uri, sqlalchemy_url
from pipeline_kit import make_pipeline

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
SECRET = "s3cret-Pa55"


# ---------------------------------------------------------------------------------------------------------------
# helpers


def python(code: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """A Python process running `code` (its stdout a pipe of lines), with this test's environment."""
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})  # stdin open: it waits on it until killed


def line(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The next line the process prints (fails when it exits or stays silent for `timeout` seconds)."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not got or not got[0]:
        proc.kill()
        raise AssertionError(f"no line from the process: {proc.stderr.read()[-3000:]}")
    return got[0].strip()


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_until(condition, timeout: float, every: float = 0.05) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)
    return time.monotonic() - start


def silent_server() -> socket.socket:
    """A TCP port that accepts connections and never answers: a hung server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# backends: SQLite in the workspace always, PostgreSQL for the team tests


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server URL without a database: the team stack's, or a throwaway one in a folder of its own."""
    if os.environ.get("NOTEBENCH_TEST_POSTGRES"):
        yield os.environ["NOTEBENCH_TEST_POSTGRES"].rstrip("/")
        return
    if not PG_BINS:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql; `make team-up` does it)")
    bin_dir = PG_BINS[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="nb-pg-"))
    port = closed_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "nb"]),
                   check=True, capture_output=True)
    ctl = [str(bin_dir / "pg_ctl"), "-D", str(folder / "data")]
    subprocess.run(_as_postgres([*ctl, "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
                                 "-l", str(folder / "log"), "-w", "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://nb@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([*ctl, "-m", "immediate", "-w", "stop"]), check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _forget(uri: str) -> None:
    from notebench.state import store

    state = store._OPEN.pop(uri, None)
    if state is not None:
        state.dispose()


@pytest.fixture
def pg_database(postgres):
    """A fresh database on the test server; its URL."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(sqlalchemy_url(f"{postgres}/postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    uri = f"{postgres}/{name}"
    yield uri
    _forget(uri)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.team)])
def backend(request, workspace, monkeypatch):
    """The workspace's state on SQLite (the default) or on PostgreSQL (`[state] uri`, as a team sets it)."""
    if request.param == "postgresql":
        uri = request.getfixturevalue("pg_database")
        monkeypatch.setenv("NOTEBENCH_STATE_URI", uri)
    return request.param


# ---------------------------------------------------------------------------------------------------------------
# migrations


def test_a_new_database_is_migrated_once_even_by_two_processes_at_once(backend, workspace):
    code = "from notebench.state import open_state\nprint(open_state().version(), flush=True)"
    procs = [python(code) for _ in range(2)]
    assert [line(p) for p in procs] == [str(schema.VERSION)] * 2
    for p in procs:
        p.wait()
    state = open_state()
    with state.read() as conn:
        applied = conn.execute(sa.select(schema.schema_version.c.version)).scalars().all()
        tables = set(sa.inspect(conn).get_table_names())
    assert applied == [n for n, *_ in schema.MIGRATIONS]  # each migration recorded exactly once
    assert {t.name for t in schema.metadata.sorted_tables} <= tables
    assert state.migrate() == []  # nothing left to apply


def test_a_database_from_a_newer_notebench_is_refused(workspace):
    state = open_state()
    with state.write() as conn:
        conn.execute(schema.schema_version.insert().values(version=schema.VERSION + 1, applied=time.time(),
                                                           description="from the future"))
    with pytest.raises(StateError, match=f"schema version {schema.VERSION + 1}, newer than this notebench"):
        State(state.uri).open()


# ---------------------------------------------------------------------------------------------------------------
# the lock primitive

HOLD = """
import sys
from notebench.state import open_state
lock = open_state().lock(sys.argv[1], holder="holder-process")
assert lock.acquire(wait=30)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lock_excludes_other_processes_names_its_holder_and_dies_with_it(backend, workspace):
    state = open_state()
    holder = python(HOLD, "pipeline:demo")
    assert line(holder) == "held"
    mine = state.lock("pipeline:demo")
    assert mine.acquire(wait=0) is False
    with pytest.raises(LockBusy, match="held by holder-process since") as busy:
        with mine.held(wait=0.3):
            pass
    assert busy.value.name == "pipeline:demo"
    with state.lock("pipeline:other").held(wait=0):  # another name is another lock
        pass
    kill9(holder)  # no cleanup runs: the lock must go with the process
    assert wait_until(lambda: mine.acquire(wait=0), timeout=5) < 5
    mine.release()


# ---------------------------------------------------------------------------------------------------------------
# leases: alive is a heartbeat in the store, never a pid

LEASE = """
import sys
from notebench.state import open_state
lease = open_state().lease(sys.argv[1], ttl=float(sys.argv[2]))
print("leased", flush=True)
sys.stdin.read()
"""


def test_a_lease_lives_while_its_holder_beats_and_expires_after_it_is_killed(backend, workspace):
    state, ttl = open_state(), 1.5
    holder = python(LEASE, "run:demo:1", str(ttl))
    assert line(holder) == "leased"
    start = time.monotonic()
    while time.monotonic() - start < 2.5 * ttl:  # well past its time to live: the heartbeat keeps it alive
        assert state.alive("run:demo:1")
        time.sleep(0.1)
    assert state.alive_leases("run:demo:") == {"run:demo:1"}
    killed = time.monotonic()
    kill9(holder)
    wait_until(lambda: not state.alive("run:demo:1"), timeout=ttl + 5)
    assert time.monotonic() - killed <= ttl + 5


RUNNER = """
import sys, time
from pathlib import Path
from notebench.pipeline.store import PipelineStore, RunRecord
store = PipelineStore(Path(sys.argv[1]), "demo")
store.lock()
RunRecord.create(store.run_dir("r1") / "run.json", run_id="r1", pipeline="demo", state="running",
                 started=time.time(), steps={})
print("running", flush=True)
sys.stdin.read()
"""


def test_a_killed_runner_reads_killed_once_its_lease_lapses_and_at_once_to_the_next_run(backend, workspace,
                                                                                        monkeypatch):
    from notebench.pipeline.store import PipelineStore

    monkeypatch.setenv("NOTEBENCH_STATE_LEASE_TTL", "1.5")
    first = python(RUNNER, str(workspace))
    assert line(first) == "running"
    store = PipelineStore(workspace, "demo")
    assert store.record("r1")["state"] == "running"
    assert json.loads((store.run_dir("r1") / "run.json").read_text())["state"] == "running"  # the copy
    kill9(first)
    wait_until(lambda: store.record("r1")["state"] == "killed", timeout=10)  # the lease lapsed: no pid asked

    second = python(RUNNER.replace('"r1"', '"r2"'), str(workspace))  # a new runner: takes the lock at once
    assert line(second) == "running"
    with store.state.read() as conn:  # it recorded the dead run killed for good, not only as read
        stored = conn.execute(sa.select(schema.pipeline_runs.c.state).where(schema.pipeline_runs.c.run_id == "r1")
                              ).scalar_one()
    assert stored == "killed" and store.record("r1")["ended"]
    assert [r["run_id"] for r in store.runs()] == ["r2", "r1"] and store.runs()[0]["state"] == "running"
    kill9(second)


# ---------------------------------------------------------------------------------------------------------------
# the champion: atomic under two promoters

PROMOTER = """
import json, os, sys, time
from pathlib import Path
from mlflow import MlflowClient
from notebench.registry import models as registry

uri, name, go, versions, rounds = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4].split(","), int(sys.argv[5])
client = MlflowClient(uri, uri)
registry.champion(client, name)  # imports and connections made before the start
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
changed = sum(registry.promote(client, name, v, who=f"pid {os.getpid()}")["changed"]
              for _ in range(rounds) for v in versions)
print(json.dumps({"changed": changed}), flush=True)
"""


@pytest.fixture
def registry_with_versions(workspace, tmp_path):
    """A SQLite MLflow registry with four blessed versions of one model."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    run = client.create_run(client.create_experiment("promoters", artifact_location=(tmp_path / "a").as_uri()))
    client.create_registered_model("m")
    for i in range(4):
        client.create_model_version("m", source=f"{run.info.artifact_uri}/model{i}", run_id=run.info.run_id,
                                    tags={"notebench.blessed": "true"})
    return uri, client


def test_two_promoter_processes_at_once_never_lose_or_misorder_a_champion_change(backend, registry_with_versions,
                                                                                 tmp_path):
    from notebench.registry import models as registry

    uri, client = registry_with_versions
    go = tmp_path / "go"
    procs = [python(PROMOTER, uri, "m", str(go), versions, "6") for versions in ("1,2", "3,4")]
    assert [line(p) for p in procs] == ["ready", "ready"]
    go.touch()  # both start promoting at the same moment
    changed = sum(json.loads(line(p, timeout=300))["changed"] for p in procs)
    events = registry.history(client, "m")
    assert len(events) == changed == 24  # every change recorded, none lost
    assert events[0]["previous"] is None
    for before, after in zip(events, events[1:], strict=False):  # each change saw the one before it
        assert after["previous"] == before["version"], (before, after)
    assert registry.champion(client, "m") == events[-1]["version"]
    copy = json.loads(client.get_registered_model("m").tags[registry.HISTORY_TAG])
    assert copy == events  # the tag copy agrees with the state database


def test_a_history_only_in_the_tag_is_imported_on_the_first_change(workspace, registry_with_versions):
    from notebench.registry import models as registry

    _, client = registry_with_versions
    legacy = [{"action": "promote", "version": "1", "previous": None, "who": "old", "when": "2026-01-01T00:00:00",
               "why": "blessed", "forced": False}]
    client.set_registered_model_alias("m", "champion", "1")
    client.set_registered_model_tag("m", registry.HISTORY_TAG, json.dumps(legacy))
    assert registry.history(client, "m") == legacy  # read from the tag while the database has none
    registry.promote(client, "m", "2")
    assert [e["version"] for e in registry.history(client, "m")] == ["1", "2"]
    assert registry.rollback(client, "m")["version"] == "1"  # the imported event is a champion to go back to


# ---------------------------------------------------------------------------------------------------------------
# unreachable servers: a clear error naming the URI, credentials masked, within 10 s, nothing written


def test_mask_uri_hides_passwords_and_secret_parameters_only():
    assert mask_uri(f"postgresql+psycopg://nb:{SECRET}@db:5432/nb") == "postgresql+psycopg://nb:***@db:5432/nb"
    assert mask_uri("postgresql://nb:p@ss@db/nb?sslmode=require&password=x1") == \
        "postgresql://nb:***@db/nb?sslmode=require&password=***"
    assert mask_uri("http://mlflow:5000") == "http://mlflow:5000" and mask_uri("sqlite:////a/b.db") == "sqlite:////a/b.db"


@pytest.mark.parametrize("server", ["refused", "silent"])
def test_an_unreachable_state_database_is_a_clear_error_within_10_s(workspace, server):
    sock = silent_server() if server == "silent" else None
    port = sock.getsockname()[1] if sock else closed_port()
    uri = f"postgresql://nb:{SECRET}@127.0.0.1:{port}/notebench"
    start = time.monotonic()
    with pytest.raises(StateUnavailable) as err:
        State(uri).open()
    assert time.monotonic() - start < 10
    assert f"postgresql://nb:***@127.0.0.1:{port}/notebench" in str(err.value) and SECRET not in str(err.value)
    if sock:
        sock.close()


def test_the_cli_stops_before_writing_anything_when_the_state_or_mlflow_server_is_down(workspace, tmp_path):
    spec = make_pipeline(tmp_path / "p", {"s": {"body": "pass"}})
    state_down = {"NOTEBENCH_STATE_URI": f"postgresql://nb:{SECRET}@127.0.0.1:{closed_port()}/nb",
                  "NOTEBENCH_TRIGGERS_PIPELINE": str(spec)}
    for args in (["run", str(spec), "--no-check"], ["trigger", "p", "--reason", "x", "--no-run"]):
        start = time.monotonic()
        proc = notebench(*args, env=state_down)
        assert proc.returncode != 0 and time.monotonic() - start < 30  # the CLI's own start-up included
        assert "cannot reach the state database postgresql://nb:***@127.0.0.1" in proc.stderr, proc.stderr
        assert SECRET not in proc.stderr + proc.stdout
    hung = silent_server()
    mlflow_down = {"NOTEBENCH_TRACKING_URI": f"http://ana:{SECRET}@127.0.0.1:{hung.getsockname()[1]}"}
    start = time.monotonic()
    proc = notebench("run", str(spec), "--no-check", env=mlflow_down)
    assert proc.returncode != 0 and time.monotonic() - start < 30
    assert "cannot reach the MLflow tracking store http://ana:***@127.0.0.1" in proc.stderr, proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    hung.close()
    assert not (workspace / "pipelines").exists() and not (workspace / "state.db").exists()  # nothing written


def test_config_shows_uris_and_tokens_masked(workspace):
    env = {"NOTEBENCH_STATE_URI": f"postgresql://nb:{SECRET}@db/nb", "NOTEBENCH_SERVING_TOKEN": SECRET,
           "NOTEBENCH_TRAINING_STUDY_STORAGE": f"postgresql://nb:{SECRET}@db/optuna"}
    text = notebench("config", env=env, check=True).stdout
    listed = json.loads(notebench("config", "--json", env=env, check=True).stdout)
    assert SECRET not in text and SECRET not in json.dumps(listed)
    assert "postgresql://nb:***@db/nb" in text and listed["serving.token"]["value"] == "***"
    assert listed["training.study_storage"]["value"] == "postgresql://nb:***@db/optuna"
    assert listed["state.uri"]["source"] == "NOTEBENCH_STATE_URI"


def test_the_study_storage_heartbeats_and_prints_masked(workspace, monkeypatch):
    import optuna
    from notebench.state import study_storage

    storage = study_storage()
    assert storage.heartbeat_interval == 30 and storage.grace_period == 60
    assert str(storage) == f"sqlite:///{workspace / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2
    monkeypatch.setenv("NOTEBENCH_TRAINING_STUDY_STORAGE", f"postgresql://nb:{SECRET}@127.0.0.1:{closed_port()}/o")
    from notebench.state.services import TrackingUnavailable

    with pytest.raises(TrackingUnavailable, match=r"Optuna study storage postgresql://nb:\*\*\*@127") as err:
        study_storage()
    assert SECRET not in str(err.value)


def test_feature_store_yaml_names_the_team_stores_and_show_masks_them(workspace, tmp_path, monkeypatch, use_case):
    from notebench.features.store import FeatureRepo
    from notebench.workspace import Workspace

    monkeypatch.setenv("NOTEBENCH_FEATURES_REGISTRY", f"postgresql://nb:{SECRET}@db:5432/feast")
    monkeypatch.setenv("NOTEBENCH_FEATURES_ONLINE_STORE", f"postgresql://nb:{SECRET}@db:5433/online?sslmode=disable")
    source = tmp_path / "snapshots.parquet"
    source.write_bytes(b"")
    repo = FeatureRepo(Workspace(), use_case=use_case)
    shown = repo.show()  # (before `write`: not applied, nothing to connect to)
    assert shown["registry"] == "postgresql://nb:***@db:5432/feast" and SECRET not in json.dumps(shown)
    assert shown["online_store"] == "postgres postgresql://nb:***@db:5433/online?sslmode=disable"
    repo.write(source)
    import yaml

    config = yaml.safe_load((repo.path / "feature_store.yaml").read_text())
    assert config["registry"] == {"registry_type": "sql", "path": f"postgresql+psycopg://nb:{SECRET}@db:5432/feast",
                                  "cache_ttl_seconds": 60, "sqlalchemy_config_kwargs": {"pool_pre_ping": True}}
    assert config["online_store"] == {"type": "postgres", "host": "db", "port": 5433, "database": "online",
                                      "db_schema": "public", "user": "nb", "password": SECRET, "sslmode": "disable"}
    assert (repo.path / "feature_store.yaml").stat().st_mode & 0o077 == 0  # readable by its owner only


# ---------------------------------------------------------------------------------------------------------------
# team mode: two trigger services on one state database, and an mlflow server on PostgreSQL


@pytest.mark.team
def test_team_two_trigger_services_at_once_start_one_run(workspace, tmp_path, pg_database, monkeypatch):
    from notebench.pipeline.store import PipelineStore
    from notebench.triggers import enqueue, read_events

    monkeypatch.setenv("NOTEBENCH_STATE_URI", pg_database)
    spec = make_pipeline(tmp_path / "tp", {"train": {"body": "import time\ntime.sleep(1)\nimport pathlib\n"
                                                     "pathlib.Path(step.output('m')).write_text('x')",
                                                     "products": {"m": "m.txt"}}})
    for i in range(6):
        enqueue(workspace, "drift", f"feature f{i} drifted")
    env = {**os.environ, "NOTEBENCH_TRIGGERS_PIPELINE": str(spec), "NOTEBENCH_PIPELINE_WARM_IMPORTS": "notebench.step"}
    ticks = [subprocess.Popen([str(BIN / "notebench"), "tick", "--no-lineage"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [t.communicate(timeout=300) for t in ticks]
    assert [t.returncode for t in ticks] == [0, 0], outs
    runs = PipelineStore(workspace, "tp").runs()
    assert len(runs) == 1 and runs[0]["state"] == "succeeded", outs
    events = read_events(workspace).sort_values("id")
    assert set(events["run_id"]) == {runs[0]["run_id"]}
    assert events["status"].tolist() == ["started"] + ["coalesced"] * 5
    assert not (workspace / "state.db").exists()  # everything went to PostgreSQL


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    """A real `mlflow server` on a PostgreSQL database, artifacts proxied to a folder of its own."""
    name = "mlflow_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(sqlalchemy_url(f"{postgres}/postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    port = closed_port()
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", sqlalchemy_url(f"{postgres}/{name}"),
                             "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        import urllib.request

        assert proc.poll() is None, proc.stderr.read()[-3000:]
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return True
        except OSError:
            return False

    try:
        wait_until(up, timeout=180, every=0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.team
def test_team_the_engine_uses_an_mlflow_server_without_local_files(workspace, tmp_path, mlflow_server,
                                                                   pg_database, monkeypatch):
    from notebench.registry import models as registry
    from notebench.workspace import Workspace

    monkeypatch.setenv("NOTEBENCH_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("NOTEBENCH_STATE_URI", pg_database)
    ws = Workspace()
    client = ws.client()  # checked: the server answers
    experiment = client.get_experiment(ws.experiment_id(client))
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's, proxied: no file: path
    run = client.create_run(experiment.experiment_id)
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    assert any((tmp_path / "artifacts").rglob("note.txt"))  # it went through the server to its destination
    client.create_registered_model("m")
    for i in range(2):
        client.create_model_version("m", source=f"{run.info.artifact_uri}/m{i}", run_id=run.info.run_id,
                                    tags={"notebench.blessed": "true"})
    registry.promote(client, "m", "1")
    registry.promote(client, "m", "2")
    assert registry.rollback(client, "m")["version"] == "1"
    assert [e["action"] for e in registry.history(client, "m")] == ["promote", "promote", "rollback"]
    assert not (workspace / "mlflow.db").exists() and not (workspace / "mlartifacts").exists()
    assert not (workspace / "state.db").exists()
