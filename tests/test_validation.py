"""The data validation gate on the demo world's scenarios, and the landing ledger."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from notebench.data.landing import BatchChanged, read_ledger, reconcile, scan
from notebench.data.validation import render_markdown, validate_batches

from nbs_lib.data import CATEGORICAL, NUMERIC, validate_batch
from nbs_lib.demo_data import daily_snapshot, generate

CUSTOMERS = 600


def batches(scenario: str, days) -> dict[str, pd.DataFrame]:
    return {f"day {d}": daily_snapshot(d, scenario=scenario, customers=CUSTOMERS, seed=3, shift_day=10)
            .drop(columns=["churned"], errors="ignore") for d in days}


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return pd.concat(batches("stable", range(0, 10)).values(), ignore_index=True)


def gate(scenario: str, reference: pd.DataFrame, **kw) -> dict:
    return validate_batches(batches(scenario, range(10, 13)), reference, validate_batch, NUMERIC, CATEGORICAL, **kw)


def test_stable_passes_clean(reference):
    report = gate("stable", reference)
    assert report["verdict"] == "pass", report["skew"]


def test_schema_break_fails_naming_columns_and_what_was_expected(reference):
    report = gate("schema_break", reference)
    assert report["verdict"] == "fail"
    problems = " ".join(a["problem"] for a in report["anomalies"])
    assert "monthly_charges" in problems and "float64" in problems
    assert "payment_method: column is missing" in problems and "payment_type" in problems
    assert "Anomalies (the pipeline stops)" in render_markdown(report)


def test_null_spike_fails_or_warns_by_threshold(reference):
    strict = gate("null_spike", reference, null_increase=0.2)
    assert strict["verdict"] == "fail"
    assert {a["column"] for a in strict["anomalies"]} == {"usage_hours_7d", "satisfaction_score"}
    lenient = gate("null_spike", reference, null_increase=0.6)
    assert lenient["verdict"] == "warn"
    assert {"usage_hours_7d", "satisfaction_score"} <= {s["column"] for s in lenient["skew"]}


def test_covariate_shift_is_skew_on_the_shifted_features(reference):
    report = gate("covariate_shift", reference)
    assert report["verdict"] == "warn" and not report["anomalies"]
    skewed = {s["column"] for s in report["skew"]}
    assert {"monthly_charges", "support_calls_30d"} <= skewed
    assert not skewed & {"discount_pct", "num_devices", "plan"}, skewed


def test_first_data_has_no_reference():
    report = validate_batches(batches("stable", [0]), None, validate_batch, NUMERIC, CATEGORICAL)
    assert report["verdict"] == "pass" and "no reference yet" in report["note"]


def test_ledger_takes_each_batch_once_and_refuses_changed_batches(tmp_path):
    generate(tmp_path, days=3, customers=50, seed=1)
    first = reconcile(None, scan(tmp_path), run_id="r1")
    assert len(first["new"]) == len(scan(tmp_path)) and first["digest"]
    (tmp_path / "ledger.json").write_text(json.dumps(first))
    generate(tmp_path, days=2, start_day=3, customers=50, seed=1)
    second = reconcile(read_ledger(tmp_path / "ledger.json"), scan(tmp_path), run_id="r2")
    assert sorted(second["new"]) == ["features/2026-01-04.parquet", "features/2026-01-05.parquet"]
    assert second["batches"]["features/2026-01-01.parquet"]["run"] == "r1"
    assert reconcile(second, scan(tmp_path))["new"] == []  # nothing new: nothing taken twice
    (tmp_path / "features" / "2026-01-02.parquet").write_bytes(b"tampered")
    with pytest.raises(BatchChanged, match="2026-01-02"):
        reconcile(second, scan(tmp_path))
