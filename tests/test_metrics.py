"""The service's `/metrics` through prometheus_client: the exposition parses with Prometheus's own text parser and
holds the metric names, labels and values the service counted; a hot swap leaves one `notebench_model_info` series;
OpenMetrics on request; and in multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`) the values of several processes are
merged at scrape time. The app runs in-process (TestClient) on a registered model of the fixture use case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from fixture_models import readings_frame, register_model
from notebench.workspace import Workspace
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict:
    """{(sample name, sorted label items): value} of a Prometheus text exposition, parsed by prometheus_client."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fastapi.testclient import TestClient
    from notebench.serving import create_app

    ws = Workspace.of(tmp_path_factory.mktemp("metrics") / "ws")
    model = register_model(ws, readings_frame())
    app = create_app(ws, watch_interval=0, flush_interval=0.1)
    with TestClient(app) as client:
        yield client, ws, model


def test_metrics_hold_what_the_service_counted(served):
    client, _, model = served
    rows = json.loads(model.frame.head(3).to_json(orient="records"))
    for _ in range(2):
        assert client.post("/invocations", json={"dataframe_records": rows}).status_code == 200
    assert client.post("/invocations", json={"dataframe_records": [{"nope": 1}]}).status_code == 422
    assert client.get("/ping").status_code == 200
    response = client.get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    got = samples(response.text)

    def value(metric, **labels):
        return got[(metric, tuple(sorted(labels.items())))]

    invocations = {"endpoint": "/invocations", "method": "POST"}
    assert value("notebench_requests_total", **invocations, status="200") == 2
    assert value("notebench_requests_total", **invocations, status="422") == 1
    assert value("notebench_requests_total", endpoint="/ping", method="GET", status="200") == 1
    assert value("notebench_request_errors_total", endpoint="/invocations", status="422") == 1
    assert value("notebench_request_duration_seconds_count", endpoint="/invocations") == 3
    assert value("notebench_request_duration_seconds_bucket", endpoint="/invocations", le="+Inf") == 3
    assert value("notebench_predicted_rows_total", model_version="1", role="champion") == 6
    assert value("notebench_batch_rows_count") == 2 and value("notebench_batch_rows_bucket", le="4.0") == 2
    assert value("notebench_model_info", name=model.name, version="1", alias="champion") == 1
    assert value("notebench_ready") == 1 and value("notebench_model_swaps") == 0
    assert value("notebench_model_check_failures_total") == 0
    assert value("notebench_model_loaded_timestamp_seconds") > 1.7e9
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"notebench_prediction_log_rows_written", "notebench_prediction_log_rows_buffered",
            "notebench_feedback_written", "notebench_shadow_model_info"} <= names
    assert not [n for n in got if n[0].endswith("_created")]  # no `_created` series beside the counters


def test_a_hot_swap_leaves_one_model_info_series(served):
    client, ws, model = served
    second = register_model(ws, readings_frame(days=4), params={"max_iter": 5})
    assert client.post("/reload").json()["version"] == second.version == "2"
    got = samples(client.get("/metrics").text)
    info = {dict(labels)["version"]: v for (name, labels), v in got.items() if name == "notebench_model_info"}
    assert info == {"2": 1}
    assert got[("notebench_model_swaps", ())] == 1


def test_openmetrics_when_the_scraper_asks_for_it(served):
    client, _, _ = served
    response = client.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n") and "notebench_requests_total{" in response.text


SCRIPT = textwrap.dedent("""
    import sys
    from notebench.serving.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    requests = metrics.counter("notebench_requests_total", "HTTP requests answered", ["endpoint", "method", "status"])
    rows = metrics.histogram("notebench_batch_rows", "Rows per model call", buckets=(1, 10, 100))
    metrics.gauge("notebench_prediction_log_rows_written", "rows written", lambda: int(sys.argv[1]), mode="sum")
    metrics.gauge("notebench_model_info", "served", lambda: {("m", sys.argv[2], "champion"): 1},
                  ["name", "version", "alias"])
    if sys.argv[3] == "count":
        requests.labels("/invocations", "POST", 200).inc(int(sys.argv[1]))
        rows.observe(int(sys.argv[1]))
        metrics.refresh()
    else:
        sys.stdout.write(metrics.render()[0].decode())
""")


def test_multiprocess_mode_merges_every_process_at_scrape_time(tmp_path):
    """Three processes: two count (as two workers would), a third renders what a scrape of any worker shows."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True,
                              check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("3", "1", "count")
    run("40", "2", "count")
    got = samples(run("0", "2", "render"))
    assert got[("notebench_requests_total", (("endpoint", "/invocations"), ("method", "POST"),
                                             ("status", "200")))] == 43
    assert got[("notebench_batch_rows_count", ())] == 2 and got[("notebench_batch_rows_bucket", (("le", "10.0"),))] == 1
    assert got[("notebench_prediction_log_rows_written", ())] == 43  # mode "sum": the renderer's own 0 adds nothing
    versions = {dict(labels)["version"] for (name, labels), _ in got.items() if name == "notebench_model_info"}
    assert versions == {"1", "2"}  # each process's served version, merged
