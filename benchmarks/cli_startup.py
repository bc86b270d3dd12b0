"""`notebench --help` against `mlflow --help`: wall time of the whole process, median of repeated runs.

`--quick`: one timed run of each, no warm-up run, the target reported but not judged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def wall_times(cmd: list[str], repeat: int) -> list[float]:
    """Seconds each of `repeat` runs of `cmd` took, output discarded."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=10, help="runs per command (default 10)")
    p.add_argument("--quick", action="store_true", help="one run each, no warm-up, target not judged")
    args = p.parse_args()
    repeat = 1 if args.quick else args.repeat
    results = {}
    for name in ("notebench", "mlflow"):
        cmd = [str(BIN / name), "--help"]
        if not args.quick:
            wall_times(cmd, 1)  # warm the file cache
        times = wall_times(cmd, repeat)
        results[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
        print(f"{name + ' --help':<18} median {results[name]['median_s']:.3f} s   "
              f"min {results[name]['min_s']:.3f} s   max {results[name]['max_s']:.3f} s")
    ratio = results["mlflow"]["median_s"] / results["notebench"]["median_s"]
    ok = results["notebench"]["median_s"] < 0.5
    print(f"notebench is {ratio:.0f}x faster; target (< 0.5 s): {'met' if ok else 'MISSED'}"
          + (" (not judged in --quick)" if args.quick else ""))
    out = RESULTS / ("quick" if args.quick else "") / "cli_startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
