"""The full training pipeline on ~200k labelled rows with 20 trials: wall time per step, and the share of it
spent outside the steps' own work (kernel start, papermill, caching, lineage, waiting).

A step's own work is the sum of its notebook cells' execution times as papermill records them; the rest of
the step's wall time is the engine's. Run: `.venv/bin/python benchmarks/training_pipeline.py`. `--quick`: the
pipeline on the use case's small sample (`notebench demo-data --sample`) with 2 trials, as `ci/smoke` runs it, and
one permutation-importance repeat.
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

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def cell_seconds(notebook: Path) -> float:
    """Seconds the notebook's code cells ran, as papermill recorded them."""
    nb = json.loads(notebook.read_text())
    return sum((c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0)
               for c in nb["cells"] if c["cell_type"] == "code")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--customers", type=int, default=6000, help="customers in the demo world (default 6000)")
    p.add_argument("--days", type=int, default=40, help="days landed (default 40: ~200k labelled rows)")
    p.add_argument("--trials", type=int, default=20, help="Optuna trials (default 20)")
    p.add_argument("--quick", action="store_true", help="the use case's small sample, 2 trials")
    args = p.parse_args()
    if args.quick:
        args.trials = 2
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "NOTEBENCH_WORKSPACE_PATH": tmp}
        world = ["--sample"] if args.quick else ["--days", str(args.days), "--size", str(args.customers)]
        subprocess.run([str(BIN / "notebench"), "demo-data", *world], env=env, check=True, capture_output=True)
        start = time.perf_counter()
        # --quick: one permutation-importance repeat over 500 rows (evaluate's own work, not the engine's)
        light = ["-p", "importance_repeats=1", "-p", "importance_rows=500"] if args.quick else []
        subprocess.run([str(BIN / "notebench"), "run", "training", "-p", f"n_trials={args.trials}", *light], env=env,
                       check=True, capture_output=True)
        wall = time.perf_counter() - start
        run_dir = sorted(Path(tmp, "pipelines", "training", "runs").glob("*"))[-1]
        record = json.loads((run_dir / "run.json").read_text())
        rows = json.loads(Path(tmp, "pipelines/training/products/features/feature_view.json").read_text())
        training_rows = len(__import__("pandas").read_parquet(
            Path(tmp, "pipelines/training/products/features/training_set.parquet")))
        own_work = {name: cell_seconds(run_dir / f"{name}.ipynb") for name in record["steps"]}
    steps, own_total = {}, 0.0
    for name, s in record["steps"].items():
        own = own_work[name]
        own_total += own
        steps[name] = {"wall_s": s["duration"], "own_work_s": own, "outside_s": s["duration"] - own}
        print(f"{name:<16} {s['duration']:7.1f} s   own work {own:7.1f} s   outside {s['duration'] - own:5.1f} s")
    share = (wall - own_total) / wall
    print(f"{'pipeline':<16} {wall:7.1f} s   own work {own_total:7.1f} s   outside {wall - own_total:5.1f} s "
          f"({share:.0%}, process start, kernels and lineage included); {training_rows:,} labelled rows")
    out = RESULTS / ("quick" if args.quick else "") / "training_pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(
        {"wall_s": wall, "own_work_s": own_total, "outside_share": share, "steps": steps,
         "training_rows": training_rows, "feature_view": rows.get("features", [])[:1]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
