"""The training pipeline's data side through the real CLI: ingest, the validation gate, the feature store."""

from __future__ import annotations

import json

import pandas as pd
from conftest import notebench

# the readings of day d land on arrival day d + 2: the first 18 arrival days hold days 0..15, all before the break
# (16 days of labelled rows: enough for `notebench check`'s holdout and validation slice of 7 days each)
WORLD = ["--size", "200", "--scenario", "schema_break", "--shift-day", "16"]


def test_data_side_ingests_once_caches_and_stops_on_a_schema_break(workspace, use_case):
    notebench("demo-data", "--days", "18", *WORLD, check=True)
    first = notebench("run", "training", "--to", "features", check=True)
    products = workspace / "pipelines" / "training" / "products"
    ledger = json.loads((products / "ingest" / "ledger.json").read_text())
    assert len(ledger["new"]) == len(ledger["batches"]) == 16 and len(ledger["digest"]) == 64
    assert all(name.startswith("features/") for name in ledger["batches"])  # the labels are inside the batches
    training = pd.read_parquet(products / "features" / "training_set.parquet")
    assert list(training.columns) == [*use_case.keys, use_case.target, *use_case.features]
    assert 16 * 200 * 0.9 < len(training) < 16 * 200  # every reading whose outcome was recorded (~98%)
    assert training[use_case.target].notna().all() and training[use_case.features].notna().any(axis=1).all()

    plan = notebench("run", "training", "--to", "features", "--explain", check=True).stdout
    assert all(" cached " in line for line in plan.splitlines()), plan  # no new batch: nothing to do
    assert "ingest" in first.stderr

    notebench("demo-data", "--days", "3", "--start-day", "18", *WORLD, check=True)
    plan = notebench("run", "training", "--to", "features", "--explain", check=True).stdout
    assert "input added: landing/features/2026-02-19.parquet" in plan
    broken = notebench("run", "training", "--to", "features")
    assert broken.returncode == 1
    assert "data validation found anomalies" in broken.stderr and "temperature" in broken.stderr
    run_dir = sorted((workspace / "pipelines" / "training" / "runs").glob("*"))[-1]
    report = (run_dir / "validate.ipynb").read_text()
    assert "site: column is missing" in report and "Anomalies (the pipeline stops)" in report
    assert json.loads((products / "ingest" / "ledger.json").read_text())["new"] == [
        f"features/2026-02-{day}.parquet" for day in (19, 20, 21)]
