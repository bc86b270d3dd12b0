"""The data validation gate on the fixture world's scenarios, and the landing ledger."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fixture_lib.use_case import readings, simulate
from notebench.data.batches import validate_batch
from notebench.data.landing import BatchChanged, read_ledger, reconcile, scan
from notebench.data.validation import render_markdown, validate_batches

DEVICES = 600


def batches(scenario: str, days) -> dict[str, pd.DataFrame]:
    """The readings of `days` as batches, the scenario's change starting on day 10."""
    return {f"day {d}": readings(d, size=DEVICES, seed=3, scenario=scenario, shift_day=10) for d in days}


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return pd.concat(batches("stable", range(0, 10)).values(), ignore_index=True)


def gate(use_case, scenario: str, reference: pd.DataFrame | None, days=range(10, 13), **kw) -> dict:
    """The gate on `days` of `scenario` against `reference`, checking the schema as the validate step does."""
    return validate_batches(batches(scenario, days), reference,
                            lambda batch: validate_batch(batch, use_case.schema, use_case.keys),
                            list(use_case.numeric), list(use_case.categorical), **kw)


def test_stable_passes_clean(use_case, reference):
    report = gate(use_case, "stable", reference)
    assert report["verdict"] == "pass", report["skew"]


def test_schema_break_fails_naming_columns_and_what_was_expected(use_case, reference):
    report = gate(use_case, "schema_break", reference)
    assert report["verdict"] == "fail"
    problems = " ".join(a["problem"] for a in report["anomalies"])
    assert "temperature: expected dtype float64" in problems
    assert "site: column is missing" in problems and "plant: unexpected column" in problems
    assert {a["batch"] for a in report["anomalies"]} == {"day 10", "day 11", "day 12"}
    assert "statistics not computed" in report["note"]  # no batch passed the schema
    assert "Anomalies (the pipeline stops)" in render_markdown(report)


def test_null_spike_fails_or_warns_by_threshold(use_case, reference):
    strict = gate(use_case, "null_spike", reference, null_increase=0.2)
    assert strict["verdict"] == "fail"
    assert {a["column"] for a in strict["anomalies"]} == {"vibration"}
    assert "vibration: null rate" in strict["anomalies"][0]["problem"]
    lenient = gate(use_case, "null_spike", reference, null_increase=0.6)
    assert lenient["verdict"] == "warn" and not lenient["anomalies"]
    assert {s["column"] for s in lenient["skew"]} == {"vibration"}


def test_covariate_shift_is_skew_on_the_shifted_features(use_case, reference):
    report = gate(use_case, "covariate_shift", reference)
    assert report["verdict"] == "warn" and not report["anomalies"]
    skewed = {s["column"] for s in report["skew"]}
    assert {"temperature", "load_pct"} <= skewed
    assert not skewed & {"vibration", "hours_since_service", "line", "site"}, skewed


def test_concept_drift_changes_only_outcomes_so_the_data_gate_passes(use_case, reference):
    # the gate judges features, not how they relate to the outcome: catching this is the monitoring's job
    report = gate(use_case, "concept_drift", reference)
    assert report["verdict"] == "pass", report["skew"]


def test_a_shift_before_its_day_is_not_seen(use_case, reference):
    report = gate(use_case, "covariate_shift", reference, days=range(7, 10))  # the shift starts on day 10
    assert report["verdict"] == "pass", report["skew"]


def test_first_data_has_no_reference(use_case):
    report = gate(use_case, "stable", None, days=[0])
    assert report["verdict"] == "pass" and "no reference yet" in report["note"]


def test_ledger_takes_each_batch_once_and_refuses_changed_batches(tmp_path):
    simulate(tmp_path, days=5, size=50, seed=1)  # arrival days 2..4: the first readings land two days late
    first = reconcile(None, scan(tmp_path), run_id="r1")
    assert sorted(first["new"]) == [f"features/2026-02-0{d}.parquet" for d in (3, 4, 5)] and first["digest"]
    (tmp_path / "ledger.json").write_text(json.dumps(first))
    simulate(tmp_path, start_day=5, days=2, size=50, seed=1)
    second = reconcile(read_ledger(tmp_path / "ledger.json"), scan(tmp_path), run_id="r2")
    assert sorted(second["new"]) == ["features/2026-02-06.parquet", "features/2026-02-07.parquet"]
    assert second["batches"]["features/2026-02-03.parquet"]["run"] == "r1"
    assert second["digest"] != first["digest"]  # the digest covers exactly the new batches
    assert reconcile(second, scan(tmp_path))["new"] == []  # nothing new: nothing taken twice
    (tmp_path / "features" / "2026-02-04.parquet").write_bytes(b"tampered")
    with pytest.raises(BatchChanged, match="2026-02-04"):
        reconcile(second, scan(tmp_path))
