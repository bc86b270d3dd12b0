"""Building, deploying and rolling back a release of this repository, as CI and an operator would, timed.

- build: both wheels (`uv build --no-build-isolation`, as ci/build does) and the release (manifest, hashes,
  settings checked for every environment, deterministic tar);
- deploy, new lock: the first deploy into a fresh workspace with uv's cache warm: the lock's packages installed
  into a layer (`uv sync --frozen`, linked from the cache), the release's venv, wheels, kernelspec, the check inside
  it, the switch (the layer's bytecode is compiled afterwards, in the background; off here so as not to disturb the
  next timings);
- deploy, same lock: another release of the same lock (the usual case: code changed, dependencies did not);
- rollback: back to the release the current one replaced.

Every figure is a whole command (process start included), median of --repeat runs, in a temporary workspace.
Targets (issue 17): build < 10 s, deploy with a warm uv cache < 10 s, rollback < 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
TARGETS = {"build": 10.0, "deploy, new lock (warm uv cache)": 10.0, "rollback": 2.0}


def timed(cmd: list[str], env: dict) -> float:
    """Seconds one run of `cmd` takes, process start included."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - start


def uv() -> str:
    return shutil.which("uv", path=str(BIN)) or shutil.which("uv") or "uv"


def build_cmds(dist: Path) -> list[list[str]]:
    """What ci/build runs: both wheels, then the release."""
    return [[uv(), "build", "--all-packages", "--wheel", "--no-build-isolation", "--python", sys.executable,
             "--out-dir", str(dist), "--quiet"],
            [sys.executable, "-m", "notebench.release.bundle", "build", "--root", str(ROOT), "--dist", str(dist)]]


def second_release(tmp: Path, dist: Path, env: dict) -> Path:
    """Another release of the same lock: this repo's pipelines with one byte changed, the same wheels."""
    proj = tmp / "proj"
    shutil.copytree(ROOT / "notebooks" / "pipelines", proj / "notebooks" / "pipelines")
    for name in ("uv.lock", "pyproject.toml", "settings.ini"):
        shutil.copy(ROOT / name, proj / name)
    (proj / "engine").mkdir()
    shutil.copy(ROOT / "engine" / "pyproject.toml", proj / "engine" / "pyproject.toml")
    spec = next((proj / "notebooks" / "pipelines").glob("*/pipeline.yaml"))
    spec.write_text(spec.read_text() + "\n")
    other = tmp / "dist-b"
    other.mkdir()
    for wheel in dist.glob("*.whl"):
        shutil.copy(wheel, other / wheel.name)
    subprocess.run([sys.executable, "-m", "notebench.release.bundle", "stage", "smoke", "passed", "--root", str(proj),
                    "--dist", str(other)], cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "notebench.release.bundle", "build", "--root", str(proj), "--dist",
                    str(other)], cwd=ROOT, env=env, check=True, capture_output=True)
    return next(other.glob("release-*.tar.gz"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    p.add_argument("--quick", action="store_true", help="one run per figure (CI)")
    args = p.parse_args()
    repeat = 1 if args.quick else args.repeat
    tmp = Path(tempfile.mkdtemp(prefix="nb-release-bench-"))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NOTEBENCH_ENVIRONMENTS_COMPILE_BYTECODE": "false",
           "NOTEBENCH_ENVIRONMENTS_KEEP_RELEASES": "3"}
    env.pop("VIRTUAL_ENV", None)
    nb = str(BIN / "notebench")
    try:
        dist = tmp / "dist"
        dist.mkdir()
        subprocess.run([sys.executable, "-m", "notebench.release.bundle", "stage", "smoke", "passed", "--dist",
                        str(dist)], cwd=ROOT, env=env, check=True, capture_output=True)
        builds = []
        for _ in range(repeat):
            for old in dist.glob("*.whl"):
                old.unlink()
            builds.append(sum(timed(cmd, env) for cmd in build_cmds(dist)))
        a = next(dist.glob("release-*.tar.gz"))
        b = second_release(tmp, dist, env)
        first, same, back = [], [], []
        for i in range(repeat):
            ws_env = {**env, "NOTEBENCH_WORKSPACE_PATH": str(tmp / f"ws{i}")}
            first.append(timed([nb, "deploy", str(a), "--env", "dev"], ws_env))
            same.append(timed([nb, "deploy", str(b), "--env", "dev"], ws_env))
            back.append(timed([nb, "rollback", "--env", "dev"], ws_env))
        results = {"build": statistics.median(builds), "deploy, new lock (warm uv cache)": statistics.median(first),
                   "deploy, same lock": statistics.median(same), "rollback": statistics.median(back)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, seconds in results.items():
        target = f"(target < {TARGETS[name]:g} s)" if name in TARGETS else ""
        print(f"{name:<36} {seconds:6.2f} s  {target}")
    load = os.getloadavg()[0]
    print(f"(median of {repeat}; load average {load:.1f} on {os.cpu_count()} cores)")
    met = {name: results[name] < limit for name, limit in TARGETS.items()}
    out = RESULTS / ("quick" if args.quick else "") / "release.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seconds": results, "targets": TARGETS, "met": met,
                                                      "repeat": repeat, "load": load, "cpus": os.cpu_count()},
                                                     indent=1))
    print("targets:", ", ".join(f"{n} {'met' if ok else 'NOT met'}" for n, ok in met.items()),
          "(not judged in --quick)" if args.quick else "")
    return 0 if all(met.values()) or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
