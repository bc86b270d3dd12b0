"""Building and releasing a pipeline version: Notebench's bundle, deploy and rollback against the shell a user
would otherwise write (`git archive` of the same files; `tar xzf` into a folder and `ln -sfn`), on this repo.

Notebench does more for its time: a manifest with the sha256 of every file, verification of every file on
deploy, the environment's rules, the run locks, an atomic switch and a history line. The figures say what that
costs. Medians of repeated runs, process start included, in a temporary workspace. `--quick`: one run of each,
the target reported but not judged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def timed(cmd: str, repeat: int, env: dict, before: str = "") -> float:
    """Median seconds of `repeat` runs of the shell command `cmd` (each after the untimed command `before`)."""
    times = []
    for _ in range(repeat):
        if before:
            subprocess.run(before, shell=True, cwd=ROOT, env=env, check=True, capture_output=True)
        start = time.perf_counter()
        subprocess.run(cmd, shell=True, cwd=ROOT, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def second_project(tmp: Path) -> Path:
    """A copy of this repo's pipelines and lock with one byte changed: a second bundle to switch to."""
    proj = tmp / "proj"
    (proj / "notebooks").mkdir(parents=True)
    subprocess.run(["cp", "-r", str(ROOT / "notebooks" / "pipelines"), str(proj / "notebooks")], check=True)
    subprocess.run(["cp", str(ROOT / "uv.lock"), str(proj)], check=True)
    spec = next((proj / "notebooks" / "pipelines").glob("*/pipeline.yaml"))
    spec.write_text(spec.read_text() + "\n")
    return proj


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5, help="runs per command (default 5)")
    p.add_argument("--quick", action="store_true", help="one run of each, target not judged")
    args = p.parse_args()
    if args.quick:
        args.repeat = 1
    tmp = Path(tempfile.mkdtemp(prefix="nb-release-bench-"))
    env = {**os.environ, "NOTEBENCH_WORKSPACE_PATH": str(tmp / "ws"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    py, nb = BIN / "python", BIN / "notebench"
    a, b = tmp / "a", tmp / "b"
    for dist, root in ((a, ROOT), (b, second_project(tmp))):
        subprocess.run(f"{py} -m notebench.release.bundle stage smoke passed --root {root} --dist {dist}", shell=True,
                       cwd=ROOT, env=env, check=True, capture_output=True)
    results = {
        "build: notebench bundle (manifest, hashes, deterministic tar)":
            timed(f"{py} -m notebench.release.bundle build --dist {a}", args.repeat, env),
        "build: git archive + sha256sum":
            timed(f"git archive --format=tar.gz -o {tmp}/plain.tar.gz HEAD notebooks/pipelines uv.lock && "
                  f"sha256sum {tmp}/plain.tar.gz", args.repeat, env),
    }
    subprocess.run(f"{py} -m notebench.release.bundle build --root {tmp / 'proj'} --dist {b}", shell=True, cwd=ROOT,
                   env=env, check=True, capture_output=True)
    bundle_a, bundle_b = (next(d.glob("notebench-pipelines-*.tar.gz")) for d in (a, b))
    plain = tmp / "plain"
    results["deploy: notebench deploy (verify, rules, locks, switch, history)"] = timed(
        f"{nb} deploy {bundle_b} --env dev", args.repeat, env, before=f"{nb} deploy {bundle_a} --env dev")
    results["deploy: tar xzf + ln -sfn"] = timed(
        f"mkdir -p {plain}/r && tar xzf {bundle_b} -C {plain}/r && ln -sfn {plain}/r {plain}/current", args.repeat,
        env, before=f"rm -rf {plain}")
    results["rollback: notebench rollback --env"] = timed(
        f"{nb} rollback --env dev", args.repeat, env, before=f"{nb} deploy {bundle_b} --env dev")
    results["rollback: ln -sfn"] = timed(f"ln -sfn {plain}/r {plain}/current", args.repeat, env)
    for name, seconds in results.items():
        print(f"{name:<66} {seconds:6.3f} s")
    load = os.getloadavg()[0]
    print(f"(median of {args.repeat}; load average {load:.1f} on {os.cpu_count()} cores)")
    out = RESULTS / ("quick" if args.quick else "") / "release.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seconds": results, "repeat": args.repeat, "load": load, "cpus": os.cpu_count()},
                              indent=1))
    ok = results["deploy: notebench deploy (verify, rules, locks, switch, history)"] < 2
    print("target (a deploy under 2 s):", "met" if ok else "NOT met", "(not judged in --quick)" if args.quick else "")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
