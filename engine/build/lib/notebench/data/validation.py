"""The data validation gate, as TFX's ExampleValidator does it: schema anomalies stop, value skew is recorded.

`validate_batches` checks each new batch against the use case's schema (a function that raises with
`problems`, like `notebench.data.batches.validate_batch`), then compares the statistics of the batches that passed with
a reference (the data accepted before them): null rates, ranges, unseen categories and a distribution distance
per feature (`notebench.monitoring.drift`). The verdict is `fail` (an anomaly: the pipeline must stop), `warn` (skew,
recorded) or `pass`, with a readable reason for each finding.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from notebench.monitoring.drift import compare, profile

__all__ = ["render_markdown", "validate_batches"]


def _schema_findings(name: str, frame: pd.DataFrame, check_schema: Callable) -> list[dict]:
    """The schema problems of one batch, each naming the column, the problem and some of the rows."""
    try:
        check_schema(frame)
        return []
    except Exception as exc:  # the schema function's own error type carries `problems`
        problems = getattr(exc, "problems", None) or [str(exc)]
        cases = getattr(exc, "failure_cases", None)
        findings = []
        for problem in problems:
            column = problem.split(":")[0].strip()
            rows = []
            if cases is not None and "index" in cases:
                hit = cases[cases["column"].astype(str) == column]["index"].dropna()
                rows = sorted({int(i) for i in hit})[:10]
            findings.append({"batch": name, "column": column, "problem": problem, "rows": rows})
        return findings


def validate_batches(batches: dict[str, pd.DataFrame], reference: pd.DataFrame | None, check_schema: Callable,
                     numeric: list[str], categorical: list[str], *, null_increase: float = 0.2,
                     skew_distance: float = 0.1, p_value: float = 0.05, small: int = 1000) -> dict:
    """Validate new batches: schema per batch, then statistics of the valid ones against `reference`."""
    anomalies = [f for name, frame in batches.items() for f in _schema_findings(name, frame, check_schema)]
    bad = {a["batch"] for a in anomalies}
    valid = [frame for name, frame in batches.items() if name not in bad]
    report = {"batches": list(batches), "rows": int(sum(len(f) for f in batches.values())), "anomalies": anomalies,
              "skew": [], "statistics": {}, "reference_rows": 0 if reference is None else int(len(reference)),
              "thresholds": {"null_increase": null_increase, "skew_distance": skew_distance, "p_value": p_value}}
    if valid and reference is not None and len(reference):
        current = pd.concat(valid, ignore_index=True)
        ref = profile(reference, numeric, categorical)
        stats = compare(ref, current, small=small, p_value=p_value, distance=skew_distance)
        report["statistics"] = stats["columns"]
        for column, s in stats["columns"].items():
            q, d = s["quality"], s["drift"]
            rise = q.get("null_rate", 0) - q.get("reference_null_rate", 0)
            if rise > null_increase:
                anomalies.append({"batch": "new batches", "column": column, "rows": [],
                                  "problem": f"{column}: null rate {q['null_rate']:.1%} against "
                                             f"{q['reference_null_rate']:.1%} in the reference "
                                             f"(rise {rise:.1%} > allowed {null_increase:.1%})"})
            elif rise > 0.01:
                report["skew"].append({"column": column, "problem": f"null rate rose by {rise:.1%}"})
            if q.get("unseen"):
                report["skew"].append({"column": column, "problem": f"{q['unseen']:.1%} unseen values "
                                                                      f"{q.get('unseen_values')}"})
            if d.get("drift"):
                report["skew"].append({"column": column, "test": d["test"], "score": d["score"],
                                       "threshold": d.get("threshold"),
                                       "problem": f"distribution moved: {d['test']} = {d['score']:.3g} "
                                                  f"(threshold {d.get('threshold')})"})
    elif not valid:
        report["note"] = "no batch passed the schema; statistics not computed"
    else:
        report["note"] = "no reference yet (first data): schema checked, these batches become the reference"
    report["verdict"] = "fail" if anomalies else "warn" if report["skew"] else "pass"
    return report


def render_markdown(report: dict) -> str:
    """The report as Markdown a person can read: verdict, anomalies, skew."""
    lines = [f"# Data validation: {report['verdict'].upper()}", "",
             f"{len(report['batches'])} new batch(es), {report['rows']:,} rows; reference: "
             f"{report['reference_rows']:,} rows.", ""]
    if report.get("note"):
        lines += [f"_{report['note']}_", ""]
    if report["anomalies"]:
        lines += ["## Anomalies (the pipeline stops)", "", "| batch | column | problem | rows (first) |",
                  "|---|---|---|---|"]
        lines += [f"| {a['batch']} | {a['column']} | {a['problem']} | {', '.join(map(str, a['rows'])) or '-'} |"
                  for a in report["anomalies"]]
        lines.append("")
    if report["skew"]:
        lines += ["## Skew (recorded, the pipeline goes on)", "", "| column | finding |", "|---|---|"]
        lines += [f"| {s['column']} | {s['problem']} |" for s in report["skew"]]
        lines.append("")
    if report["verdict"] == "pass":
        lines.append("No anomaly, no skew.")
    return "\n".join(lines)
