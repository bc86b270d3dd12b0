"""Team mode's speed on this machine, side by side in one run, against a real team stack (ci/team-up):

1. 6 independent CPU-bound steps of ~10 s each: the Dask executor on the stack's 2 workers vs the local executor
   with `[pipeline] parallelism = 1` (target: ≥ 1.6× faster);
2. 20 Optuna trials of the fixture use case's model on 500k rows (about 2.5 s a trial): `[training] trial_workers =
   2` (Dask tasks on the 2 workers) vs 1 (in one process), same objective, same study storage (target: ≥ 1.6×
   faster, judged on workers that have run a study before, as a team cluster's are; the workers' first study, which
   also pays their one-time imports, is reported beside it);
3. per-step overhead, Dask vs local: a chain of 6 trivial steps (nothing waits for a free worker); a step's overhead
   is its time from queued to committed minus the work its notebook measured;
4. a fully cached `notebench run` in team mode, process start included (target: < 3 s).

Uses the stack named by --profile (ci/team-up's .team/team.env; default $NOTEBENCH_TEAM_PROFILE, which `make
team-test` sets), else starts one in a temporary folder and stops it at the end. `--quick`: 2 s steps, 6 trials on
less data, the same code paths, targets printed not judged; `make team-test` runs it on the stack it started.
Writes benchmarks/results/team.json (quick/team.json). Run when the machine is otherwise idle: on 2 cores, any other
load takes the second core the comparison is about.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "fixture_project"))
from pipeline_kit import make_pipeline  # noqa: E402

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
FIXTURE = {"NOTEBENCH_USE_CASE_OBJECT": "fixture_lib.use_case:USE_CASE",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests" / "fixture_project"),
                                                       os.environ.get("PYTHONPATH")]))}
SPIN = """import time, pathlib
t0 = time.perf_counter()
cpu = time.process_time()
while time.process_time() - cpu < {seconds}:  # CPU-bound work, {seconds} s of one core
    sum(i * i for i in range(10_000))
work = time.perf_counter() - t0
pathlib.Path(step.output({product!r})).write_text(f"{{t0}} {{work}}")
"""


def load_profile(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def run(spec: Path, env: dict, *extra: str) -> float:
    """Wall time of `notebench run SPEC` (process start included)."""
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "notebench"), "run", str(spec), "--no-check", *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"notebench run {spec} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def record(ws: Path, pipeline: str) -> dict:
    return json.loads(sorted((ws / "pipelines" / pipeline / "runs").glob("*/run.json"))[-1].read_text())


def overheads(ws: Path, pipeline: str) -> list[float]:
    """Per step: seconds from queued to committed minus the work the notebook measured."""
    rec = record(ws, pipeline)
    out = []
    for step in rec["steps"].values():
        work = float(Path(next(iter(step["products"].values()))).read_text().split()[1])
        out.append(step["ended"] - step["queued"] - work)
    return out


def steps_benchmark(folder: Path, team: dict, seconds: float) -> dict:
    """6 independent spinning steps: local executor, parallelism 1, vs the Dask executor on the team workers."""
    spec = make_pipeline(folder / "six", {f"s{i}": {"body": SPIN.format(seconds=seconds, product=f"s{i}_out"),
                                                     "products": {f"s{i}_out": "out.txt"}} for i in range(6)})
    local_env = {**os.environ, **FIXTURE, "NOTEBENCH_WORKSPACE_PATH": str(folder / "ws-local"),
                 "NOTEBENCH_PIPELINE_EXECUTOR": "local", "NOTEBENCH_PIPELINE_PARALLELISM": "1"}
    dask_env = {**os.environ, **FIXTURE, **team, "NOTEBENCH_WORKSPACE_PATH": str(folder / "ws-dask")}
    local = run(spec, local_env, "--no-lineage")
    dask = run(spec, dask_env, "--no-lineage")
    state = record(folder / "ws-dask", "six")
    cached = min(run(spec, dask_env) for _ in range(3))  # team mode, lineage on: nothing to run
    return {"step_seconds": seconds, "local_parallelism_1_s": round(local, 2), "dask_2_workers_s": round(dask, 2),
            "speedup": round(local / dask, 2), "dask_workers_used": len({s["worker"] for s in state["steps"].values()}),
            "cached_team_run_s": round(cached, 2)}


def overhead_benchmark(folder: Path, team: dict) -> dict:
    """A chain of 6 trivial steps: mean per-step overhead on each executor."""
    body = "import time, pathlib\nt0 = time.perf_counter()\nwork = time.perf_counter() - t0\n" \
           "pathlib.Path(step.output({product!r})).write_text(f'{{t0}} {{work}}')\n"
    steps = {f"c{i}": {"body": body.format(product=f"c{i}_out"), "products": {f"c{i}_out": "out.txt"},
                       **({"upstream": [f"c{i - 1}"]} if i else {})} for i in range(6)}
    spec = make_pipeline(folder / "chain", steps)
    out = {}
    for name, env in (("local", {"NOTEBENCH_PIPELINE_EXECUTOR": "local"}), ("dask", team)):
        ws = folder / f"ws-chain-{name}"
        run(spec, {**os.environ, **FIXTURE, **env, "NOTEBENCH_WORKSPACE_PATH": str(ws)}, "--no-lineage")
        values = overheads(ws, "chain")
        out[name] = {"mean_s": round(sum(values) / len(values), 3), "steps_s": [round(v, 3) for v in values]}
    return out


def trials_benchmark(folder: Path, team: dict, n_trials: int, size: int) -> dict:
    """`n_trials` trials in one process (trial_workers = 1) vs as Dask tasks on 2 workers, same storage."""
    os.environ.update(FIXTURE)
    import mlflow
    import optuna
    import pandas as pd
    from fixture_lib.use_case import readings
    from notebench.settings import load_settings
    from notebench.tuning import TrialObjective, run_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # a line per trial run otherwise
    frame = pd.concat([readings(day, size=size) for day in range(20)]).dropna(subset=["failed"])
    cut = pd.Timestamp("2026-02-15", tz="UTC")
    fit, validation = frame[frame.observed_at < cut], frame[frame.observed_at >= cut]
    client = mlflow.MlflowClient(team["NOTEBENCH_TRACKING_URI"])
    experiment = client.create_experiment(f"bench-trials-{int(time.time())}")
    parent = client.create_run(experiment).info.run_id
    storage = team.get("NOTEBENCH_TRAINING_STUDY_STORAGE") or (team["TEAM_POSTGRES"].replace(
        "postgresql://", "postgresql+psycopg://") + "/optuna")
    if storage.startswith("postgresql://"):
        storage = storage.replace("postgresql://", "postgresql+psycopg://", 1)
    out = {"rows_fit": len(fit), "rows_validation": len(validation), "trials": n_trials}
    # 2 workers twice: first on workers that never ran a trial (they import the model library, Optuna and MLflow's
    # HTTP client while the first trials wait), then again, as a team cluster's workers are after their first study;
    # the in-process run between them is warm too (this process imported everything above)
    for label, workers in (("trial_workers_2_first_study", 2), ("trial_workers_1", 1), ("trial_workers_2", 2)):
        name = f"bench-{label}-{int(time.time())}"
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=42))
        objective = TrialObjective("fixture_lib.use_case:USE_CASE", fit, validation, 42, team["NOTEBENCH_TRACKING_URI"],
                                   experiment, parent, name, pythonpath=FIXTURE["PYTHONPATH"].split(os.pathsep))
        started = time.perf_counter()
        if workers == 1:
            study.optimize(objective, n_trials=n_trials)
        else:
            os.environ.update(team)
            run_trials(study, objective, n_trials, 3600, workers, load_settings(), storage)
        out[f"{label}_s"] = round(time.perf_counter() - started, 2)
    out["speedup"] = round(out["trial_workers_1_s"] / out["trial_workers_2_s"], 2)
    out["speedup_first_study"] = round(out["trial_workers_1_s"] / out["trial_workers_2_first_study_s"], 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s steps, 6 trials on less data; targets not judged")
    profile = os.environ.get("NOTEBENCH_TEAM_PROFILE")
    parser.add_argument("--profile", type=Path, default=Path(profile) if profile else None,
                        help="a running stack's profile (.team/team.env); default $NOTEBENCH_TEAM_PROFILE, "
                             "else one started")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="notebench-team-bench-"))
    team_dir = folder / "team"
    path = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    if args.profile is None:
        subprocess.run([str(ROOT / "ci" / "team-up")], env={**os.environ, **path, "TEAM_DIR": str(team_dir)},
                       check=True, stdout=subprocess.DEVNULL)
    try:
        team = load_profile(args.profile or team_dir / "team.env")
        seconds, n_trials, size = (2.0, 6, 300) if args.quick else (10.0, 20, 25000)
        load = os.getloadavg()
        results = {"cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load], "quick": args.quick}
        results["steps"] = steps_benchmark(folder, team, seconds)
        results["overhead_per_step"] = overhead_benchmark(folder, team)
        results["trials"] = trials_benchmark(folder, team, n_trials, size)
        results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if args.profile is None:
            subprocess.run([str(ROOT / "ci" / "team-down")], env={**os.environ, **path, "TEAM_DIR": str(team_dir)},
                           stdout=subprocess.DEVNULL, check=False)
    s, t, o = results["steps"], results["trials"], results["overhead_per_step"]
    results["targets"] = {"steps_speedup_1.6": s["speedup"] >= 1.6, "trials_speedup_1.6": t["speedup"] >= 1.6,
                          "cached_team_run_under_3s": s["cached_team_run_s"] < 3}
    print(f"6 steps of {s['step_seconds']:.0f} s: local (parallelism 1) {s['local_parallelism_1_s']:.1f} s, "
          f"Dask (2 workers) {s['dask_2_workers_s']:.1f} s: {s['speedup']:.2f}x")
    print(f"{t['trials']} trials: 1 worker {t['trial_workers_1_s']:.1f} s, 2 workers {t['trial_workers_2_s']:.1f} s: "
          f"{t['speedup']:.2f}x (the workers' first study: {t['trial_workers_2_first_study_s']:.1f} s, "
          f"{t['speedup_first_study']:.2f}x)")
    print(f"per-step overhead: local {o['local']['mean_s']:.2f} s, Dask {o['dask']['mean_s']:.2f} s")
    print(f"fully cached run in team mode: {s['cached_team_run_s']:.2f} s")
    print(f"load average before {results['load_before']}, after {results['load_after']} on {results['cpus']} cores")
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in results["targets"].items())
          + (" (not judged in --quick)" if args.quick else ""))
    out = RESULTS / ("quick" if args.quick else "") / "team.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    return 0 if all(results["targets"].values()) or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
