"""`notebench demo-data` and `notebench demo`: real files, a real MLflow store, a model that loads elsewhere."""

from __future__ import annotations

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


def test_demo_trains_twice_through_the_pipeline_and_shows_the_verdicts(workspace):
    args = ("demo", "--days", "24", "--more-days", "4", "--customers", "300", "--trials", "2")
    proc = notebench(*args, check=True)
    out = proc.stdout
    assert out.count("model version") == 2
    assert "no champion yet: no baseline to compare with" in out  # the first model, handled explicitly
    assert "champion" in out.split("3. Landing")[1]  # the second model was compared with the champion
    from mlflow import MlflowClient

    from nbs_lib.registry import versions

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}", f"sqlite:///{workspace / 'mlflow.db'}")
    rows = versions(client, "notebench-model")
    assert [r["version"] for r in rows] == ["2", "1"] and rows[0]["blessed"] is not None
    assert any("champion" in r["aliases"] for r in rows)
    exp = client.get_experiment_by_name("notebench")
    assert exp.artifact_location.startswith(f"file://{workspace}")  # artifacts stay inside the workspace
    again = notebench(*args, check=True)  # everything landed and cached: the second demo is quick
    assert "never ran" not in again.stderr and "changed" not in again.stderr
