"""The dashboards: their panel readers on a seeded workspace, and the real `notebench dashboards` in a real browser.

The browser tests start `notebench dashboards` on a free port against a small workspace of the engine tests' use
case (sensors, no segments; real MLflow registry, real pipeline run records, a real prediction log; see
`dashboard_seed.py`), then load each dashboard in
Debian's Chromium through Playwright: no Python traceback, no console error, the expected values on the page, the
render time recorded (`tests/artifacts/dashboards/timings.json`) and a screenshot saved beside it. An empty
workspace must give the friendly "nothing yet" state on every page.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import BIN, ROOT
from dashboard_seed import DRIFT_REASON, FAIL_ERROR, METRIC, SHIFTED, UC, seed

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts" / "dashboards"
PAGES = ("overview", "registry", "pipelines", "monitoring")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]
RENDER_BUDGET_S = float(os.environ.get("NOTEBENCH_DASHBOARD_BUDGET_S", "5"))  # the target per page
needs_browser = pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                                   reason="Debian's Chromium is not installed (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NO_SERVICE_PORT = _free_port()  # where no prediction service listens, whatever else runs on this machine


def _env(ws: Path, **extra) -> dict:
    return {**os.environ, "NOTEBENCH_WORKSPACE_PATH": str(ws), "NOTEBENCH_SERVING_PORT": str(NO_SERVICE_PORT),
            **extra}


def _settings_for(ws: Path):
    from notebench.settings import load_settings

    return load_settings(environ=_env(ws, NOTEBENCH_PIPELINE_WARM_IMPORTS="notebench.step"))


def _empty_mlflow_store(cache, ws: Path) -> None:
    """A migrated, empty MLflow SQLite store in `ws` (creating one runs every migration: seconds; kept in pytest's
    cache, keyed by the MLflow version)."""
    import mlflow

    folder = cache.mkdir(f"notebench-mlflow-{mlflow.__version__}")
    template = folder / "mlflow.db"
    if not template.exists():
        from mlflow import MlflowClient

        MlflowClient(f"sqlite:///{folder / 'building.db'}").search_experiments()
        os.replace(folder / "building.db", template)
    ws.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, ws / "mlflow.db")


@pytest.fixture(scope="module")
def empty_server(tmp_path_factory):
    """Dashboards on an empty workspace, started first so that its kernels warm while the other workspace is seeded."""
    srv = Dashboards(tmp_path_factory.mktemp("empty") / "ws")
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, request, empty_server):
    """A seeded workspace: three versions (v2 champion), a failed then a succeeded run, two hours of predictions."""
    from notebench.workspace import Workspace

    root = tmp_path_factory.mktemp("dashboards")
    ws_path = root / "ws"
    _empty_mlflow_store(request.config.cache, ws_path)
    ws = Workspace(_settings_for(ws_path))
    started = time.perf_counter()
    facts = seed(ws, root / "pipelines")
    facts.update(ws=ws, seconds=time.perf_counter() - started)
    return facts


class Dashboards:
    """A running `notebench dashboards` process on a free port."""

    def __init__(self, ws: Path, *args: str):
        self.ws, self.port = ws, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ws.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(ws.parent / f"dashboards-{self.port}.log", "w+")
        self.proc = subprocess.Popen([str(BIN / "notebench"), "dashboards", "--no-browser", "--port", str(self.port),
                                      *args], cwd=ROOT, env=_env(ws), stdout=self.log, stderr=subprocess.STDOUT)
        self.started = time.perf_counter()

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, page: str | None = None, timeout: float = 150) -> float:
        """Wait until `page` (None: every dashboard) has a warm kernel; seconds it took since the start."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"notebench dashboards exited {self.proc.returncode}:\n{self.output()}"
            try:
                ready = json.loads(self.get("/api/notebench/ready", timeout=2)[1])
                if ready["dashboards"].get(page, True) if page else ready["ready"]:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"dashboards not warm within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def server(seeded):
    srv = Dashboards(seeded["ws"].root)
    srv.warm_s = srv.wait_ready()
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def browser():
    """One browser profile for the module, as a stakeholder clicking through the pages has (Voila's scripts cached
    after the first page)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        yield context
        context.close()
        chromium.close()


def load(browser, server, page_name: str, tag: str) -> dict:
    """Open a dashboard once its kernel is warm: time to fully rendered, text, console errors, a screenshot."""
    server.wait_ready(page_name)
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    started = time.perf_counter()
    page.goto(f"{server.url}/voila/render/{page_name}.ipynb")
    page.wait_for_function("document.querySelector('#notebench-rendered') !== null || "
                           "document.body.innerText.includes('There was an error when executing cell')",
                           timeout=90_000)  # a failing cell stops Voila: the marker would never come
    seconds = time.perf_counter() - started
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{tag}-{page_name}.png"), full_page=True)
    out = {"text": page.inner_text("body"), "html": page.content(), "errors": errors, "seconds": seconds,
           "page": page}
    _record_timing(tag, page_name, seconds)
    return out


def _record_timing(tag: str, page_name: str, seconds: float) -> None:
    path = ARTIFACTS / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings.setdefault(tag, {})[page_name] = {"seconds": round(seconds, 2), "load": os.getloadavg()[0]}
    path.write_text(json.dumps(timings, indent=1))


def assert_clean(result: dict) -> None:
    assert "Traceback" not in result["text"] and "There was an error when executing cell" not in result["text"]
    assert "jp-OutputArea-error" not in result["html"] and "Error" not in [e.split(":")[0] for e in result["errors"]]
    assert result["errors"] == [], f"browser console errors: {result['errors']}"


# the panels, read directly ---------------------------------------------------------------------------------
def test_panels_read_the_champion_versions_and_the_primary_metric_without_segments(seeded):
    from notebench.dashboards import panels

    ws = seeded["ws"]
    assert panels.primary_metric(ws) == UC.metric == METRIC and not UC.segments
    champ = panels.champion_summary(ws)
    assert champ["version"] == seeded["champion"] == "2" and champ["metrics"][METRIC] == pytest.approx(0.81)
    assert champ["metric"] == METRIC and champ["score"] == pytest.approx(0.81)
    assert champ["promoted_why"] == "blessed; [gates] promotion = auto" and champ["pipeline_run"] == seeded["ok_run"]
    table = panels.versions_table(ws)
    assert table["version"].tolist() == ["3", "2", "1"]
    assert table.set_index("version").loc["3", "blessed"].item() is False
    assert "dropped 0.0100 against champion v2" in table.set_index("version").loc["3", "reasons"][0]
    assert set(table.set_index("version").loc["2", "notebooks"]) == {"ingest", "train"}
    assert panels.metric_names(table, METRIC) == [METRIC, "brier"]  # the primary metric first
    # no segments: each version's overall metric from its evaluate step, not an empty panel
    segments = panels.segment_metrics(ws)
    assert list(segments.columns) == ["overall"]
    assert segments["overall"].to_dict() == pytest.approx({"v3": 0.80, "v2": 0.81, "v1": 0.79})
    assert panels.champion_history(ws)["version"].tolist() == ["2", "1"]


def test_segment_metrics_has_a_column_per_segment_an_evaluate_step_recorded(tmp_path, request):
    """A use case with segments: the evaluate step's `segment.<column>.<value>.<metric>` metrics, one column each."""
    from dashboard_seed import _evaluate_run
    from notebench.dashboards import panels
    from notebench.registry import models as registry
    from notebench.workspace import Workspace

    _empty_mlflow_store(request.config.cache, tmp_path / "ws")
    ws = Workspace(_settings_for(tmp_path / "ws"))
    client = ws.client()
    parent = _evaluate_run(client, ws.experiment_id(client), 0.8)
    evaluate = client.search_runs([ws.experiment_id(client)], "tags.`notebench.step` = 'evaluate'")[0].info.run_id
    for key, value in {f"segment.line.alpha.{METRIC}": 0.78, f"segment.line.beta.{METRIC}": 0.83,
                       "segment.line.beta.brier": 0.1}.items():
        client.log_metric(evaluate, key, value)
    run = client.create_run(ws.experiment_id(client), run_name="train").info.run_id
    registry.register(client, ws.settings.value("registry", "model_name"), f"runs:/{run}/model",
                      {"notebench.pipeline_mlflow_run": parent}, run_id=run)
    segments = panels.segment_metrics(ws)
    assert segments.loc["v1"].to_dict() == pytest.approx({"overall": 0.8, "line=alpha": 0.78, "line=beta": 0.83})


def test_panels_read_runs_with_the_failing_step_and_cached_steps(seeded):
    from notebench.dashboards import panels

    runs = panels.recent_runs(seeded["ws"])
    assert runs["run_id"].tolist() == [seeded["ok_run"], seeded["failed_run"]]
    assert runs["state"].tolist() == ["succeeded", "failed"] and runs.iloc[1]["failed_step"] == "train"
    assert FAIL_ERROR in runs.iloc[1]["error"] and runs.iloc[0]["cached"] == 1
    detail = panels.run_detail(seeded["ws"], seeded["ok_run"])["steps"].set_index("step")
    assert detail.loc["ingest", "cached_from"] == seeded["failed_run"]  # its notebook is the earlier run's
    assert detail.loc["ingest", "notebook"] == f"/runs/training/{seeded['failed_run']}/ingest.html"


def test_panels_volume_and_health_states(seeded):
    from notebench.dashboards import panels

    volume = panels.prediction_volume(seeded["ws"])
    assert volume["predictions"].sum() == seeded["predictions"] and set(volume["model_version"]) == {"2"}
    state = panels.health(seeded["ws"])
    checks = {c["name"]: c for c in state["checks"]}
    assert checks["model"]["state"] == "green" and "version 2" in checks["model"]["text"]
    assert checks["service"]["state"] == "red"  # no prediction service runs in this test
    assert checks["pipeline"]["state"] == "green" and state["state"] == "red"


def _results(alerts: dict[str, bool], windows: int = 2) -> pd.DataFrame:
    """Monitoring results in `notebench.monitoring.monitor.read_results`'s shape: the newest window flags `alerts`."""
    rows = []
    for w in range(windows):
        end = f"2026-11-27T1{w}:00:00+00:00"
        newest = w == windows - 1
        for feature in UC.numeric[:3]:
            rows.append({"window_id": f"w{w}", "window_start": end, "window_end": end, "model_version": "2",
                         "rows": 1000, "check": "drift", "feature": feature, "method": "wasserstein",
                         "statistic": 0.3 if newest and alerts.get(feature) else 0.02, "threshold": 0.1,
                         "alert": bool(newest and alerts.get(feature))})
        rows.append({"window_id": f"w{w}", "window_start": end, "window_end": end, "model_version": "2", "rows": 1000,
                     "check": "dataset_drift", "feature": None, "method": "share_of_drifting_features",
                     "statistic": 0.0, "threshold": 0.5, "alert": bool(newest and alerts.get("dataset"))})
        rows.append({"window_id": f"w{w}", "window_start": end, "window_end": end, "model_version": "2", "rows": 1000,
                     "check": "quality", "feature": "", "method": METRIC, "statistic": 0.8 - 0.1 * w,
                     "threshold": 0.76, "alert": 0.8 - 0.1 * w < 0.76})
    return pd.DataFrame(rows)


def test_drift_status_names_the_drifting_features_of_the_newest_window():
    from notebench.dashboards import panels

    quiet = panels.drift_status(results=_results({}, windows=1))
    assert quiet["state"] == "green" and quiet["drifting"] == []
    some = panels.drift_status(results=_results({"temperature": True, "load_pct": True}, windows=1))
    assert some["state"] == "amber" and some["drifting"] == ["load_pct", "temperature"] and some["features"] == 3
    dataset = panels.drift_status(results=_results({"temperature": True, "dataset": True}, windows=1))
    assert dataset["state"] == "red" and dataset["alerts"]["dataset_drift"] is True
    decayed = panels.drift_status(results=_results({}, windows=2))
    assert decayed["window_id"] == "w1" and decayed["state"] == "red"  # quality fell below its bound
    over_time = panels.drift_over_time(results=_results({"temperature": True}))
    assert len(over_time) == 6 and over_time["alert"].sum() == 1
    assert str(over_time["window_end"].dtype).startswith("datetime64")
    assert panels.quality_over_time(results=_results({}))["alert"].tolist() == [False, True]
    assert panels.drift_status(results=_results({}).iloc[:0])["state"] == "grey"


def test_readers_on_an_empty_workspace_create_nothing(tmp_path):
    from notebench.dashboards import panels
    from notebench.workspace import Workspace

    ws = Workspace(_settings_for(tmp_path / "empty"))
    assert panels.champion_summary(ws) is None and panels.versions_table(ws).empty
    assert panels.recent_runs(ws).empty and panels.run_detail(ws) is None
    assert panels.prediction_volume(ws).empty and panels.segment_metrics(ws).empty
    assert panels.health(ws)["checks"][0]["state"] == "red"
    assert not (tmp_path / "empty" / "mlflow.db").exists()  # reading never creates an MLflow store


# the real server in a real browser -------------------------------------------------------------------------
@needs_browser
def test_landing_page_lists_the_four_dashboards_and_serves_executed_notebooks(server, seeded):
    status, body = server.get("/")
    assert status == 200 and "Notebench dashboards" in body
    assert all(f"/voila/render/{p}.ipynb" in body for p in PAGES)
    status, body = server.get(f"/runs/training/{seeded['failed_run']}/train.html")
    assert status == 200 and FAIL_ERROR in body  # the failed step's notebook, traceback included
    assert server.get("/runs/../mlflow.db")[0] == 404 and server.get("/runs/training/nope/x.html")[0] == 404


@needs_browser
@pytest.mark.parametrize("page_name", PAGES)
def test_dashboard_renders_the_seeded_workspace_in_a_browser(browser, server, seeded, page_name):
    result = load(browser, server, page_name, "seeded")
    assert_clean(result)
    text = result["text"]
    expected = {
        "overview": [f"Champion: version {seeded['champion']}", "last run " + seeded["ok_run"], "does not answer",
                     f"holdout {METRIC} 0.810"],
        "registry": ["3 versions", "not blessed", "dropped 0.0100 against champion v2", f"Holdout {METRIC}",
                     "No segment metrics", "Champion history"],
        "pipelines": [f"Last run: {seeded['ok_run']}", f"Last failed run: {seeded['failed_run']}", FAIL_ERROR],
        "monitoring": [f"Prediction volume: {seeded['predictions']:,} predictions"],
    }[page_name]
    assert all(e in text for e in expected), f"{page_name} lacks {[e for e in expected if e not in text]}"
    assert "Nothing yet" not in text or page_name == "monitoring"  # training ran: no panel of it may say otherwise
    if page_name == "overview":
        assert result["page"].inner_text("#champion-version") == seeded["champion"]
    if page_name == "pipelines":  # the failed step's row links its executed notebook
        row = result["page"].locator("tr[data-row='train']").last
        assert "failed" in row.inner_text() and row.locator("a").get_attribute("href").endswith("/train.html")
    if page_name == "monitoring" and seeded["monitoring"]:  # with notebench.monitoring.monitor: a real pass ran
        assert result["page"].inner_text("#drifting-features") == ", ".join(SHIFTED)
    if page_name in ("overview", "monitoring") and seeded["triggers"]:  # ... with notebench.triggers: one queued
        assert DRIFT_REASON in text
    result["page"].close()
    # rendering competes for the CPU: on a machine busier than its cores the budget stretches with the load
    assert result["seconds"] < max(RENDER_BUDGET_S, 3 * os.getloadavg()[0]), \
        f"{page_name} took {result['seconds']:.1f} s (budget {RENDER_BUDGET_S} s; load {os.getloadavg()[0]:.1f})"


@needs_browser
def test_every_dashboard_says_nothing_yet_on_an_empty_workspace(browser, empty_server):
    for page_name in PAGES:
        result = load(browser, empty_server, page_name, "empty")
        assert_clean(result)
        assert "Nothing yet" in result["text"]
        assert page_name == "monitoring" or "Run notebench demo to fill this in" in result["text"]
        result["page"].close()
    assert not (empty_server.ws / "mlflow.db").exists()  # looking creates no store


def test_wait_for_visitor_returns_at_once_outside_a_preheated_kernel(monkeypatch):
    from notebench.dashboards.render import wait_for_visitor

    monkeypatch.delenv("VOILA_PREHEAT", raising=False)
    started = time.perf_counter()
    wait_for_visitor()  # a kernel Voila started for a visitor (pool empty), JupyterLab, nbclient: nothing to wait for
    assert time.perf_counter() - started < 0.1


def test_a_taken_port_is_refused_with_exit_3(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([str(BIN / "notebench"), "dashboards", "--no-browser", "--port", str(port)],
                              check=False, cwd=ROOT,
                              env=_env(tmp_path / "ws"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and f"127.0.0.1:{port} is in use" in proc.stderr
