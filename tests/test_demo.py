"""`notebench demo-data` and `notebench demo` on the project's reference use case (end to end, through the CLI):
real files, a real MLflow store, a model that loads elsewhere."""

from __future__ import annotations

import pytest
from conftest import notebench

# the gates let any model above [gates] min_auc through, so that the retrained model is promoted and the hot swap is
# checked on every run (refusals are test_blessing's and test_deploycheck's); the monitoring pass need not wait 10 s
# for rows to settle after the replay (they are flushed within [serving] flush_interval)
LOOP_ENV = {"NOTEBENCH_GATES_MAX_REGRESSION": "1", "NOTEBENCH_GATES_SEGMENT_TOLERANCE": "1",
            "NOTEBENCH_MONITORING_SETTLE": "2"}


def test_demo_data_is_deterministic_and_lands_daily_batches(workspace, tmp_path, reference_use_case):
    notebench("demo-data", "--days", "9", "--size", "60", check=True)
    notebench("demo-data", "--days", "9", "--size", "60", "--out", str(tmp_path / "again"), check=True)
    first = sorted((workspace / "landing" / "features").glob("*.parquet"))
    assert [p.name for p in first][:2] == ["2026-01-01.parquet", "2026-01-02.parquet"] and len(first) == 9
    for path in first + sorted((workspace / "landing" / "labels").glob("*.parquet")):
        again = tmp_path / "again" / path.parent.name / path.name
        assert path.read_bytes() == again.read_bytes(), path.name


def test_demo_data_rejects_an_unknown_scenario(workspace, reference_use_case):
    proc = notebench("demo-data", "--scenario", "meteor")
    assert proc.returncode == 2 and "unknown scenario 'meteor'" in proc.stderr, proc.stderr
    assert not (workspace / "landing" / "features").exists() or not any((workspace / "landing").rglob("*.parquet"))


@pytest.mark.slow(minutes=3)
def test_demo_closes_the_loop(workspace, reference_use_case):
    """Train, serve, replay shifted traffic, monitor, trigger, retrain, promote, swap: each event printed."""
    args = ("demo", "--days", "24", "--more-days", "4", "--size", "300", "--trials", "2")
    proc = notebench(*args, env=LOOP_ENV, timeout=900, check=True)
    out = proc.stdout
    assert "no champion yet: no baseline to compare with" in out  # the first model, handled explicitly
    served = out.split("3. Serving the champion")[1]
    assert "serves notebench-model version 1" in served and " 0 failed requests" in served
    assert "new_data event(s)" in served  # the landed days; drift alerts join them when the window shows them
    assert "of training: succeeded" in served  # one training run started by the trigger pass
    assert "model version 2" in served and "champion v1" in served  # compared with the champion on one holdout
    second = served.split("model version 2")[1]
    assert "BLESSED" in second and "promoted to champion" in second and "champion unchanged" not in second, second
    assert "the service swapped to version 2 (as expected)" in out  # the promotion reached the running service
    from mlflow import MlflowClient
    from notebench.registry.models import versions
    from notebench.serving import read_feedback, read_predictions
    from notebench.triggers import read_events

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}", f"sqlite:///{workspace / 'mlflow.db'}")
    rows = versions(client, "notebench-model")
    assert [r["version"] for r in rows] == ["2", "1"] and rows[0]["blessed"] is not None
    exp = client.get_experiment_by_name("notebench")
    assert exp.artifact_location.startswith(f"file://{workspace}")  # artifacts stay inside the workspace
    events = read_events(workspace)
    started = events[events.status == "started"]
    assert len(started) >= 1 and started.run_id.nunique() == 1  # every event joined the one run
    assert len(read_predictions(workspace)) == len(read_feedback(workspace)) > 0  # every prediction got its label
    from notebench.monitoring.monitor import read_results

    assert not read_results(workspace).empty  # the monitoring table the dashboards read
    # in MLflow: the monitoring pass, and the training run that names the events that started it
    passes = client.search_runs([exp.experiment_id], "tags.`notebench.kind` = 'monitoring'")
    triggered = client.search_runs([exp.experiment_id], "tags.`notebench.trigger` LIKE '%new_data%'")
    assert passes and triggered and started.run_id.iloc[0] in {r.data.tags.get("notebench.run_id") for r in triggered}
