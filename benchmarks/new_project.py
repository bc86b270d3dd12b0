"""`notebench new` on a folder of 100k rows, and the generated project's first trained and registered model.

1. A folder of daily Parquet files (a binary world: 100 days x 1,000 accounts, labels in separate files) is made.
2. `notebench new DIR --data FOLDER` runs as a user runs it: reading, inference, the copier template, the data and
   notebooks, nbdev export, `uv lock` (offline from uv's cache when it can), git. Target: under 30 s.
3. The project's first model: `notebench run training` in the project, on the training batches `new` landed, with
   the project's own settings (setup excluded: the engine's venv stands in for `make install`). Target: under
   3 minutes from the command to the registered version.

`--quick`: 8 days x 500 rows and 2 trials, to check that the benchmark runs (ci/bench-quick). Figures go to
`benchmarks/results/new_project.json`. Run: `.venv/bin/python benchmarks/new_project.py [--quick]`.
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

import numpy as np
import pandas as pd

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "bench@localhost"}


def world(folder: Path, days: int, size: int) -> int:
    """Daily feature files and label files of a binary world; returns the rows written."""
    (folder / "labels").mkdir(parents=True)
    for day in range(days):
        rng = np.random.default_rng([7, day])
        at = pd.Timestamp("2026-01-01 06:00") + pd.Timedelta(days=day) + pd.to_timedelta(
            rng.integers(0, 12 * 60, size), unit="min")
        usage, tenure = rng.gamma(2, 5, size), rng.integers(0, 120, size)
        plan = rng.choice(["basic", "plus", "pro"], size, p=[.5, .3, .2])
        region = rng.choice(["n", "s", "e", "w"], size)
        score = -2 + .08 * (10 - usage) + .5 * (plan == "basic") - tenure / 100 + rng.normal(0, 1, size)
        accounts = [f"acct-{i:05d}" for i in range(size)]
        pd.DataFrame({"account_id": accounts, "seen_at": at, "usage_hours": usage, "tenure_months": tenure,
                      "tickets": rng.poisson(1, size), "plan": plan, "region": region}).to_parquet(
            folder / f"accounts-{day:03d}.parquet", index=False)
        pd.DataFrame({"account_id": accounts, "seen_at": at, "cancelled": score > 0}).to_parquet(
            folder / "labels" / f"labels-{day:03d}.parquet", index=False)
    return days * size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 days x 500 rows, 2 trials")
    p.add_argument("--days", type=int, default=100, help="days of data (default 100: 100k rows)")
    p.add_argument("--size", type=int, default=1000, help="accounts a day (default 1000)")
    p.add_argument("--trials", type=int, default=None, help="tuning trials (default: the project's settings)")
    args = p.parse_args()
    days, size, trials = (8, 500, 2) if args.quick else (args.days, args.size, args.trials)
    with tempfile.TemporaryDirectory() as tmp:
        rows = world(Path(tmp) / "data", days, size)
        project = Path(tmp) / "accounts"
        env = {**os.environ, **GIT_ENV}
        env.pop("NOTEBENCH_USE_CASE_OBJECT", None)
        start = time.perf_counter()
        new = subprocess.run([str(BIN / "notebench"), "new", str(project), "--data", str(Path(tmp) / "data")],
                             env=env, capture_output=True, text=True, check=False)
        new_seconds = time.perf_counter() - start
        if new.returncode:
            print(new.stdout, new.stderr, file=sys.stderr)
            return 1
        print(new.stdout)
        env.update(PYTHONPATH=str(project), NOTEBENCH_WORKSPACE_PATH=str(project / ".notebench"))
        params = ["-p", f"n_trials={trials}"] if trials else []
        if args.quick:  # one permutation-importance repeat over 500 rows: evaluate's own work, not the engine's
            params += ["-p", "importance_repeats=1", "-p", "importance_rows=500"]
        start = time.perf_counter()
        run = subprocess.run([str(BIN / "notebench"), "run", "training", *params], cwd=project, env=env,
                             capture_output=True, text=True, check=False)
        train_seconds = time.perf_counter() - start
        if run.returncode:
            print(run.stdout[-4000:], run.stderr[-4000:], file=sys.stderr)
            return 1
        registration = json.loads((project / ".notebench/pipelines/training/products/register/registration.json")
                                  .read_text())
        steps = [line.strip() for line in run.stdout.splitlines() if line.strip().startswith("✓")]
    result = {"rows": rows, "days": days, "new_seconds": round(new_seconds, 1), "new_target_seconds": 30,
              "first_model_seconds": round(train_seconds, 1), "first_model_target_seconds": 180,
              "model_version": registration.get("version"), "aliases": registration.get("aliases"),
              "trials": trials or "settings", "steps": steps, "load_average": os.getloadavg()[0]}
    out = RESULTS / ("quick" if args.quick else "") / "new_project.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"notebench new on {rows:,} rows: {new_seconds:.1f} s (target < 30 s)")
    print(f"first trained and registered model (version {registration.get('version')}): {train_seconds:.1f} s "
          "(target < 180 s)")
    print("\n".join(f"  {s}" for s in steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
