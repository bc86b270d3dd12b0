"""`notebench monitor`: one monitoring pass from the shell, with a per-window summary and the alerts."""

from __future__ import annotations

__all__ = ["add_commands"]


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def _print_report(report) -> None:
    """The pass as text: one line per window judged or scored, then the alerts."""
    print(report.message)
    for line in report.skipped:
        print(f"skipped: {line}")
    if report.windows or report.quality:
        metric = next((q["metric"] for q in report.quality if q.get("metric")), "live")  # the primary metric
        print(f"\n{'window end':<27} {'version':>7} {'rows':>6} {'drift share':>11} {'dataset':>7} "
              f"{'pred.':>5} {'labels':>6} {metric[:8]:>8} {'holdout':>7}  drifted / bad data")
        quality = {q["window_id"]: q for q in report.quality}
        seen = set()
        for w in report.windows:
            q = quality.get(w["window_id"], {})
            seen.add(w["window_id"])
            notes = ", ".join(w["drifted"]) + (f"; data quality: {', '.join(w['data_quality'])}"
                                               if w["data_quality"] else "")
            share = _fmt(w["drift_share"], ".2f")
            print(f"{w['window_end'][:26]:<27} {w['model_version']:>7} {w['rows']:>6} {share:>11} "
                  f"{'DRIFT' if w['dataset_drift'] else 'ok':>7} {'DRIFT' if w['prediction_drift'] else 'ok':>5} "
                  f"{q.get('labels', '-')!s:>6} {_fmt(q.get('value')):>8} {_fmt(q.get('holdout')):>7}  {notes}")
        for q in report.quality:
            if q["window_id"] not in seen:
                print(f"{q['window_end'][:26]:<27} {q['model_version']:>7} {q['rows']:>6} {'':>11} {'':>7} {'':>5} "
                      f"{q['labels']:>6} {_fmt(q.get('value')):>8} {_fmt(q.get('holdout')):>7}  (labels arrived)")
    if report.alerts:
        print(f"\n{len(report.alerts)} alert(s):")
        for a in report.alerts:
            print(f"  [{a.kind}] version {a.model_version}, window ending {a.window_end[:19]}: {a.reason}")
    if report.mlflow_run_id:
        print(f"\nMLflow run {report.mlflow_run_id}; results: notebench.monitoring.read_results()")
    if report.mlflow_error:
        print(f"\nwarning: results are stored, but logging to MLflow failed: {report.mlflow_error}")


def cmd_monitor(args) -> int:
    """One monitoring pass over the prediction log and the feedback."""
    from notebench.monitoring.monitor import monitor

    report = monitor(log_to_mlflow=not args.no_mlflow, settle=args.settle, wait=args.wait)
    if args.json:
        import json

        print(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        _print_report(report)
    return 0


def add_commands(sub) -> None:
    """Add `monitor` to the `notebench` subcommands."""
    m = sub.add_parser("monitor", help="judge new predictions and labels against the champion's training reference",
                       description="One monitoring pass: new prediction-log rows in windows of [monitoring] window, "
                                   "drift, prediction drift and data quality against the serving version's "
                                   "training reference; model quality once labels arrived. Results go to "
                                   "<workspace>/monitoring/monitoring.db and MLflow.")
    m.add_argument("--json", action="store_true", help="print the pass as JSON")
    m.add_argument("--no-mlflow", action="store_true", help="store results in the workspace only")
    m.add_argument("--settle", type=float, help="judge only predictions older than this many seconds "
                                                "([monitoring] settle)")
    m.add_argument("--wait", type=float, default=60.0, help="seconds to wait for another pass to finish (60)")
    m.set_defaults(func=cmd_monitor)
