"""`notebench demo-data` and `notebench demo`: real files, a real MLflow store, a model that loads elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import notebench


def test_demo_data_is_deterministic_and_lands_daily_batches(workspace, tmp_path):
    notebench("demo-data", "--days", "9", "--customers", "60", check=True)
    notebench("demo-data", "--days", "9", "--customers", "60", "--out", str(tmp_path / "again"), check=True)
    first = sorted((workspace / "landing" / "features").glob("*.parquet"))
    assert [p.name for p in first][:2] == ["2026-01-01.parquet", "2026-01-02.parquet"] and len(first) == 9
    for path in first + sorted((workspace / "landing" / "labels").glob("*.parquet")):
        again = tmp_path / "again" / path.parent.name / path.name
        assert path.read_bytes() == again.read_bytes(), path.name


def test_demo_data_rejects_an_unknown_scenario(workspace):
    proc = notebench("demo-data", "--scenario", "meteor")
    assert proc.returncode == 2 and "invalid choice: 'meteor'" in proc.stderr


def test_demo_trains_and_logs_a_loadable_model(workspace):
    proc = notebench("demo", "--days", "24", "--customers", "300", check=True)
    assert "holdout ROC AUC" in proc.stdout and f"sqlite:///{workspace}/mlflow.db" in proc.stdout
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    exp = client.get_experiment_by_name("notebench")
    assert exp.artifact_location.startswith(f"file://{workspace}")  # artifacts stay inside the workspace
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["auc"] > 0.6
    assert run.data.tags["mlflow.source.git.commit"] and "notebench.version" in run.data.tags
    assert run.inputs.dataset_inputs, "the training data is logged as a dataset input"
    model_uri = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("Model:"))
    model = client.get_logged_model(model_uri.split("/")[-1])
    assert model.source_run_id == run.info.run_id

    code = ("import mlflow, json, sys; mlflow.set_tracking_uri(sys.argv[1]);"
            "m = mlflow.pyfunc.load_model(sys.argv[2]);"
            "ex = m.input_example; out = m.predict(ex);"
            "print(json.dumps({'rows': len(out), 'cols': list(m.metadata.get_input_schema().input_names())}))")
    out = subprocess.run([sys.executable, "-c", code, f"sqlite:///{workspace / 'mlflow.db'}", model_uri],
                         capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert loaded["rows"] == 5 and "customer_id" not in loaded["cols"] and len(loaded["cols"]) == 14

    again = notebench("demo", "--days", "24", "--customers", "300", check=True)
    assert "already holds batches" in again.stderr  # the second demo reuses the landed data
