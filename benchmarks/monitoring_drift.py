"""Drift over 1M logged predictions x 15 features against a 100k-row reference: Notebench vs Evidently.

Each contender runs in its own subprocess on the same deterministic data (so peak memory is its own):

- `evidently`: Evidently's `DataDriftPreset` on the reference and current DataFrames (what a user would run);
- `notebench`: `drift.profile` of the reference (once per model, timed apart: training does it), then `compare`
  of the current rows as one window — the same computation the monitoring job does per window;
- `monitor-1m` and `monitor-1k`: the whole `monitoring.monitor()` pass over the same 1M rows written to the
  prediction log (reading the Parquet log included), as one window of 1M rows and as 1,000 windows of 1,000.

Wall time is the drift computation only (data generation excluded); peak memory is the subprocess's peak RSS
(`ru_maxrss`, data included), with the RSS before the computation for reference. Per-feature verdicts are compared;
where they differ the script prints both methods and scores (Evidently treats an integer column with few distinct
values as categorical, Notebench keeps the column kind the training profile declares).

    .venv/bin/python benchmarks/monitoring_drift.py            # needs `uv sync --group bench` for Evidently
    .venv/bin/python benchmarks/monitoring_drift.py --quick    # 10k reference, 20k current rows: the code paths

`--quick` runs every contender on small data and judges no target; without Evidently installed (the `bench`
group, which `make test` does not install) it skips only the Evidently comparison, saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCE_ROWS, CURRENT_ROWS = 100_000, 1_000_000
QUICK_ROWS = 10_000, 20_000  # --quick: reference and current rows
NUMERIC = [f"n{i}" for i in range(11)]
CATEGORICAL = [f"c{i}" for i in range(4)]


def make(rows: int, seed: int, shifted: bool):
    """15 features; in the current data n0, n4, c0 move clearly, n2, n8, c3 a little (below the thresholds)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    s = 1.0 if shifted else 0.0
    levels = {"c0": list("abcd"), "c1": ["x", "y", "z"], "c2": [f"k{i}" for i in range(6)], "c3": ["yes", "no"]}
    mixes = {"c0": [[.4, .3, .2, .1], [.2, .2, .3, .3]], "c1": [[.5, .3, .2]] * 2,
             "c2": [[.1, .2, .3, .2, .1, .1]] * 2, "c3": [[.7, .3], [.68, .32]]}
    frame = pd.DataFrame({
        "n0": rng.normal(50 + 3 * s, 10, rows), "n1": rng.gamma(2, 3, rows),
        "n2": rng.lognormal(0, .5, rows) * (1 + .02 * s), "n3": rng.uniform(0, 100, rows),
        "n4": rng.poisson(3 + .6 * s, rows), "n5": rng.normal(7, 1.5, rows).round(1),
        "n6": rng.exponential(4, rows), "n7": rng.beta(2, 5, rows), "n8": rng.normal(.03 * s, 1, rows),
        "n9": rng.integers(0, 1000, rows), "n10": rng.standard_t(5, rows)})
    frame.loc[rng.random(rows) < .02, "n5"] = np.nan
    for c, values in levels.items():
        frame[c] = np.asarray(values, dtype=object)[rng.choice(len(values), rows, p=mixes[c][int(shifted)])]
    return frame


def peak_mb() -> float:
    """Peak RSS of this process since it started (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------
# contenders, each in its own process


def run_evidently(reference_rows: int, current_rows: int) -> dict:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    reference, current = make(reference_rows, 1, False), make(current_rows, 2, True)
    before = peak_mb()
    start = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current_data=current, reference_data=reference)
    seconds = time.perf_counter() - start
    verdicts = {}
    for metric in snapshot.dict()["metrics"]:
        name = metric["metric_name"]
        if name.startswith("ValueDrift("):
            fields = dict(part.split("=", 1) for part in name[len("ValueDrift("):-1].split(","))
            score, threshold = float(metric["value"]), float(fields["threshold"])
            test = fields["method"]
            drift = score < threshold if "p_value" in test or "test" in test.lower() else score >= threshold
            verdicts[fields["column"]] = {"method": test, "score": score, "threshold": threshold, "drift": drift}
    return {"seconds": seconds, "peak_mb": peak_mb(), "rss_before_mb": before, "verdicts": verdicts}


def run_notebench(reference_rows: int, current_rows: int) -> dict:
    from notebench.monitoring.drift import compare, profile

    reference, current = make(reference_rows, 1, False), make(current_rows, 2, True)
    start = time.perf_counter()
    ref = json.loads(json.dumps(profile(reference, NUMERIC, CATEGORICAL)))  # as stored with the model
    profile_seconds = time.perf_counter() - start
    del reference
    before = peak_mb()
    start = time.perf_counter()
    out = compare(ref, current, small=1000, p_value=0.05, distance=0.1, drift_share=0.5)
    seconds = time.perf_counter() - start
    verdicts = {c: {"method": v["drift"]["test"], "score": v["drift"]["score"], "threshold": v["drift"]["threshold"],
                    "drift": v["drift"]["drift"]} for c, v in out["columns"].items()}
    return {"seconds": seconds, "profile_seconds": profile_seconds, "peak_mb": peak_mb(), "rss_before_mb": before,
            "verdicts": verdicts}


def prepare_log(workspace: Path, reference_rows: int, current_rows: int) -> None:
    """The current rows in the prediction log (segments of 10k rows), and the reference in the monitoring cache."""
    from types import SimpleNamespace

    from notebench.monitoring.drift import profile
    from notebench.monitoring.monitor import _reference_file
    from notebench.pipeline.store import atomic_write_json
    from notebench.serving.predlog import PredictionLog, log_root
    from notebench.workspace import Workspace

    ws = Workspace.of(workspace)
    ref = profile(make(reference_rows, 1, False), NUMERIC, CATEGORICAL)
    atomic_write_json(_reference_file(ws, "bench", "1"), {"model_name": "bench", "model_version": "1", "run_id": "",
                                                         "profile": ref, "holdout": {}, "fetched": "benchmark"})
    current = make(current_rows, 2, True)
    log = PredictionLog(log_root(workspace))
    model = SimpleNamespace(name="bench", version="1")
    t0 = time.time() - 3600
    scores = np.random.default_rng(3).random(len(current))
    for i in range(0, len(current), 1000):
        chunk = current.iloc[i:i + 1000]
        log.log(request_id=f"r{i:08d}", endpoint="/invocations", model=model, rows=len(chunk), started=t0 + i / 1e6,
                latency=0.001, columns={c: chunk[c].to_numpy() for c in chunk}, output=scores[i:i + 1000])
        if (i // 1000) % 10 == 9:
            log.flush()
    log.flush()


def run_monitor(workspace: str, window: int) -> dict:
    os.environ["NOTEBENCH_WORKSPACE_PATH"] = workspace
    os.environ["NOTEBENCH_MONITORING_WINDOW"] = str(window)
    from notebench.monitoring.monitor import monitor

    before = peak_mb()
    start = time.perf_counter()
    report = monitor(workspace, log_to_mlflow=False, settle=0)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": peak_mb(), "rss_before_mb": before, "windows": len(report.windows),
            "rows": report.rows_judged, "drifted_first_window": report.windows[0]["drifted"] if report.windows else []}


# ---------------------------------------------------------------------------------------------------------
# the comparison


def child(*args: str) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "")}
    env = {k: v for k, v in env.items() if v != ""}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False, env=env,
                          cwd=HERE.parent)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def have_evidently() -> bool:
    import importlib.util

    return importlib.util.find_spec("evidently") is not None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small data, every code path, no target judged")
    args = p.parse_args()
    reference_rows, current_rows = QUICK_ROWS if args.quick else (REFERENCE_ROWS, CURRENT_ROWS)
    sizes = (str(reference_rows), str(current_rows))
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f}; {reference_rows:,} reference rows, {current_rows:,} current rows, "
          f"{len(NUMERIC) + len(CATEGORICAL)} features", flush=True)
    ev = None
    if have_evidently():
        ev = child("evidently", *sizes)
        print(f"Evidently DataDriftPreset: {ev['seconds']:.2f} s, peak {ev['peak_mb']:.0f} MB", flush=True)
    elif args.quick:
        print("Evidently: skipped (not installed: `uv sync --group bench`); the Notebench side runs alone", flush=True)
    else:
        raise SystemExit("the comparison needs Evidently: `uv sync --group bench` (or run with --quick)")
    nb = child("notebench", *sizes)
    print(f"Notebench compare:         {nb['seconds']:.2f} s, peak {nb['peak_mb']:.0f} MB "
          f"(reference profile, once per model: {nb['profile_seconds']:.2f} s)", flush=True)
    monitors = {}
    for key, window in (("monitor_one_window", current_rows), ("monitor_1000_row_windows", 1000)):
        with tempfile.TemporaryDirectory(prefix="nb-monitor-bench-") as tmp:
            child("prepare", tmp, *sizes)
            m = monitors[key] = child("monitor", tmp, str(window))
        print(f"monitor() over the log, {m['windows']:,} window(s) of {window:,}: {m['seconds']:.2f} s, "
              f"peak {m['peak_mb']:.0f} MB", flush=True)
        if m["rows"] != current_rows // window * window:
            raise SystemExit(f"monitor() judged {m['rows']} rows in windows of {window}; expected "
                             f"{current_rows // window * window}")
    result = {"notebench": nb, **monitors, "rows": {"reference": reference_rows, "current": current_rows},
              "load_before": load, "load_after": os.getloadavg()}
    if ev is not None:
        agree, differ = [], []
        for column, theirs in ev["verdicts"].items():
            ours = nb["verdicts"][column]
            (agree if ours["drift"] == theirs["drift"] else differ).append(column)
            flag = {True: "DRIFT", False: "ok"}
            print(f"  {column:>4}: Evidently {theirs['method']:<30} {theirs['score']:.4f} {flag[theirs['drift']]:>5} | "
                  f"Notebench {ours['method']:<15} {ours['score']:.4f} {flag[ours['drift']]:>5}")
        result.update(evidently=ev, speedup=ev["seconds"] / nb["seconds"], memory_ratio=nb["peak_mb"] / ev["peak_mb"],
                      verdicts_agree=len(agree), verdicts_differ=differ)
        print(f"\nspeed-up {result['speedup']:.1f}x (target >= 20x); peak memory {result['memory_ratio']:.2f} of "
              f"Evidently's (target <= 0.5); verdicts agree on {len(agree)} of {len(ev['verdicts'])} features"
              + (f", differ on {', '.join(differ)}" if differ else "")
              + (" (targets not judged in --quick: small data)" if args.quick else ""))
    shifted = {"n0", "n4", "c0"}  # what make() moves clearly: every size must see it
    if not shifted <= set(monitors["monitor_one_window"]["drifted_first_window"]):
        raise SystemExit(f"monitor() missed the shifted features {sorted(shifted)}: "
                         f"{monitors['monitor_one_window']['drifted_first_window']}")
    out = HERE / "results" / ("quick" if args.quick else "") / "monitoring_drift.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"figures in {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        sys.path.insert(0, str(HERE.parent))
        mode, rest = sys.argv[1], sys.argv[2:]
        if mode == "prepare":
            prepare_log(Path(rest[0]), int(rest[1]), int(rest[2]))
            print("{}")
        elif mode == "monitor":
            print(json.dumps(run_monitor(rest[0], int(rest[1])), default=str))
        else:
            contender = {"evidently": run_evidently, "notebench": run_notebench}[mode]
            print(json.dumps(contender(int(rest[0]), int(rest[1])), default=str))
    else:
        sys.exit(main())
