"""The training pipeline's data side through the real CLI: ingest, the validation gate, the feature store."""

from __future__ import annotations

import json

import pandas as pd
from conftest import notebench

from nbs_lib.data import ENTITY, FEATURES, TARGET, TIMESTAMP

WORLD = ["--customers", "200", "--scenario", "schema_break", "--shift-day", "16"]


def test_data_side_ingests_once_caches_and_stops_on_a_schema_break(workspace):
    notebench("demo-data", "--days", "16", *WORLD, check=True)
    first = notebench("run", "training", "--to", "features", check=True)
    products = workspace / "pipelines" / "training" / "products"
    ledger = json.loads((products / "ingest" / "ledger.json").read_text())
    assert len(ledger["new"]) == len(ledger["batches"]) > 16 and len(ledger["digest"]) == 64
    training = pd.read_parquet(products / "features" / "training_set.parquet")
    assert list(training.columns) == [ENTITY, TIMESTAMP, TARGET, *FEATURES]
    assert len(training) > 1000 and training[FEATURES].notna().any(axis=1).all()

    plan = notebench("run", "training", "--to", "features", "--explain", check=True).stdout
    assert all(" cached " in line for line in plan.splitlines()), plan  # no new batch: nothing to do
    assert "ingest" in first.stderr

    notebench("demo-data", "--days", "3", "--start-day", "16", *WORLD, check=True)
    plan = notebench("run", "training", "--to", "features", "--explain", check=True).stdout
    assert "input added: landing/features/2026-01-17.parquet" in plan
    broken = notebench("run", "training", "--to", "features")
    assert broken.returncode == 1
    assert "data validation found anomalies" in broken.stderr and "monthly_charges" in broken.stderr
    run_dir = sorted((workspace / "pipelines" / "training" / "runs").glob("*"))[-1]
    report = (run_dir / "validate.ipynb").read_text()
    assert "payment_method: column is missing" in report and "Anomalies (the pipeline stops)" in report
    assert json.loads((products / "ingest" / "ledger.json").read_text())["new"] == [
        f"{kind}/2026-01-{day}.parquet" for kind in ("features", "labels") for day in (17, 18, 19)]
