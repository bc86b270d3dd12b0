"""Six step-like notebooks (pandas, scikit-learn, MLflow): plain papermill kernels vs warm kernels from a KernelPool.

(a) a plain loop of `papermill.execute_notebook`, one fresh kernel each; (b) the same six through a `KernelPool`,
one after another; (c) through a `KernelPool` from two threads. Each pool is started inside its timing, so its
server's imports are counted. Target: (b) and (c) within a quarter of (a). `--quick`: two notebooks that import
pandas only (the pool too), no file-cache warm-up run, the target reported but not judged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import papermill
from nbformat.v4 import new_code_cell, new_notebook
from notebench.pipeline.kernels import KernelPool

RESULTS = Path(__file__).parent / "results"
IMPORTS = ["pandas", "numpy", "sklearn", "mlflow"]  # what the server imports once, by default
CELLS = [
    "import mlflow\nimport pandas as pd\nfrom sklearn.linear_model import LogisticRegression",
    "df = pd.DataFrame({'x': range(200), 'y': [i % 3 == 0 for i in range(200)]})\n"
    "model = LogisticRegression().fit(df[['x']], df['y'])\nprint(round(model.score(df[['x']], df['y']), 3))",
]
QUICK_IMPORTS, QUICK_CELLS = ["pandas"], ["import pandas as pd", "print(len(pd.DataFrame({'x': range(200)})))"]


def write_notebooks(folder: Path, count: int, cells: list[str]) -> list[Path]:
    """`count` identical step notebooks in `folder`."""
    nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})
    paths = [folder / f"step{i}.ipynb" for i in range(count)]
    for path in paths:
        nbformat.write(nb, path)
    return paths


def execute(notebook: Path, kwargs: dict) -> float:
    """Seconds papermill takes to execute `notebook` with `kwargs`."""
    start = time.perf_counter()
    papermill.execute_notebook(notebook, notebook.with_suffix(".out.ipynb"), progress_bar=False, **kwargs)
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU used so far by this process and every descendant it (or they) waited for: kernels, the server."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                      resource.RUSAGE_CHILDREN)))


def plain(notebooks: list[Path], kernel_name: str) -> dict:
    """(a): one fresh kernel per notebook, in a loop."""
    start, cpu = time.perf_counter(), cpu_seconds()
    times = [execute(nb, {"kernel_name": kernel_name}) for nb in notebooks]
    return {"wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu, "per_notebook_s": times}


def pooled(notebooks: list[Path], threads: int, imports: list[str]) -> dict:
    """(b) and (c): a KernelPool of `imports`, started inside the timing; notebooks run from `threads` threads."""
    start, cpu = time.perf_counter(), cpu_seconds()
    with KernelPool(imports) as pool:
        mode = pool.mode  # waits for the server's imports
        ready = time.perf_counter() - start
        with ThreadPoolExecutor(threads) as executor:
            times = list(executor.map(lambda nb: execute(nb, pool.papermill_kwargs()), notebooks))
        wall = time.perf_counter() - start
    return {"wall_s": wall, "cpu_s": cpu_seconds() - cpu, "server_ready_s": ready, "per_notebook_s": times,
            "mode": mode, "threads": threads}


def show(name: str, result: dict) -> None:
    """Print one variant's figures."""
    per = result["per_notebook_s"]
    ready = f"   server ready {result['server_ready_s']:.2f} s" if "server_ready_s" in result else ""
    print(f"{name:<16} wall {result['wall_s']:6.2f} s   cpu {result['cpu_s']:6.2f} s{ready}   "
          f"per notebook median {statistics.median(per):.2f} s [{', '.join(f'{t:.2f}' for t in per)}]")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--notebooks", type=int, default=6, help="how many step notebooks (default 6)")
    p.add_argument("--kernel", default="notebench", help="kernelspec for the plain loop (default notebench)")
    p.add_argument("--imports", nargs="+", default=IMPORTS, help=f"the pool's warm imports (default {IMPORTS})")
    p.add_argument("--quick", action="store_true", help="two light notebooks, no warm-up run, target not judged")
    args = p.parse_args()
    cells = CELLS
    if args.quick:
        args.notebooks, args.imports, cells = 2, QUICK_IMPORTS, QUICK_CELLS
    logging.disable(logging.WARNING)  # papermill's and the kernels' chatter
    load = os.getloadavg()[0]  # other work on the machine inflates wall times, not CPU times
    with tempfile.TemporaryDirectory(prefix="warm-kernels-") as tmp:
        notebooks = write_notebooks(Path(tmp), args.notebooks, cells)
        if not args.quick:
            execute(notebooks[0], {"kernel_name": args.kernel})  # warm the file cache for every variant alike
        results = {"plain_loop": plain(notebooks, args.kernel), "pool_sequential": pooled(notebooks, 1, args.imports),
                   "pool_2_threads": pooled(notebooks, 2, args.imports)}
    target = results["plain_loop"]["wall_s"] / 4
    for name, result in results.items():
        show(name, result)
    met = all(results[k]["wall_s"] <= target for k in ("pool_sequential", "pool_2_threads"))
    print(f"target (a quarter of the plain loop, {target:.2f} s): {'met' if met else 'MISSED'}"
          f"{' (not judged in --quick)' if args.quick else ''}; "
          f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} CPUs")
    results.update(target_s=target, met=met, notebooks=args.notebooks, imports=args.imports, load_average=load,
                   load_average_after=os.getloadavg()[0],
                   cpus=os.cpu_count(), python=sys.version.split()[0])
    out = RESULTS / ("quick" if args.quick else "") / "warm_kernels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0 if met or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
