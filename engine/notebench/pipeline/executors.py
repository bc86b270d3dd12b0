"""Executors run step jobs; the runner hands them plain data and waits through their own interface.

A `StepJob` is everything a worker needs to run one step notebook (the notebook, the executed notebook's path,
the parameters, the kernel, its working directory and environment, the timeout, where the products go), as plain
data: it pickles, it fits in JSON, it can travel to another process or machine. The worker runs it with
`run_job` (papermill in a warm kernel, or a plain one) and answers a `JobResult`; the runner keeps everything else
(the plan, the cache, retries, commits, the run record, lineage), so every executor behaves the same.

An executor is found by name: those registered in this process (`register_executor`), then the entry-point
group `notebench.executors` of every installed distribution, so a third party adds one in its own package:

    [project.entry-points."notebench.executors"]
    mine = "my_package.executor:MyExecutor"

The local executor runs jobs on a thread pool in the runner's process (each step's real work happens in its own
kernel process, so threads only wait), with kernels forked from a warm kernel server. The Dask executor
(`notebench.pipeline.dask_executor`) sends them to Dask workers.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Hashable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from notebench.errors import NotebenchError

__all__ = ["ENTRY_POINTS", "EXECUTORS", "Executor", "JobResult", "LocalExecutor", "StepJob", "available_executors",
           "get_executor", "kernel_imports", "read_claim", "register_executor", "run_job"]

ENTRY_POINTS = "notebench.executors"  # the entry-point group third-party executors register in

# MLflow's HTTP client loads every `mlflow.request_header_provider` plugin on a process's first request to a tracking
# server; Feast registers one, so that request imports Feast: 4.3 s in each step's kernel here (team mode)
MLFLOW_HTTP_IMPORTS = "mlflow.tracking.request_header.registry"


def kernel_imports(settings) -> list[str]:
    """What a warm kernel server imports once for every step: `[pipeline] warm_imports`, plus MLflow's HTTP
    client's plugins when `[tracking] uri` is a server."""
    from notebench.workspace import Workspace

    imports = list(settings.value("pipeline", "warm_imports"))
    if Workspace(settings).tracking_server and MLFLOW_HTTP_IMPORTS not in imports:
        imports.append(MLFLOW_HTTP_IMPORTS)
    return imports


@dataclass(frozen=True)
class StepJob:
    """One step to execute, as plain data (picklable, JSON-able): what any executor is handed."""

    pipeline: str  # the pipeline's name
    step: str  # the step's name
    run_id: str  # the pipeline run it belongs to
    attempt: int  # 1 for the first try, 2.. for the runner's retries
    notebook: str  # the step notebook, a path the worker can read
    output: str  # where the executed notebook is written (kept whether the step succeeds or fails)
    parameters: dict  # papermill parameters, already resolved (step, pipeline and user overrides, injected paths)
    staging: str  # a folder the worker empties, then the step writes its products into
    products: dict[str, str]  # product name -> path inside `staging` the step must write
    cwd: str  # the kernel's working directory (the notebook's folder)
    claim: str  # a file the worker writes when the job starts: where it runs (worker, host, pid) and since when
    env: dict[str, str] = field(default_factory=dict)  # added to the kernel's environment
    timeout: int = 1800  # seconds a cell may run (papermill's execution_timeout)
    kernel_name: str = "notebench"  # the kernelspec a plain kernel starts from
    warm_imports: list[str] = field(default_factory=list)  # modules a warm kernel server imports once

    @property
    def key(self) -> str:
        """A name unique within the run: pipeline, run, step, attempt."""
        return f"notebench-{self.pipeline}-{self.run_id}-{self.step}-{self.attempt}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StepJob:
        return cls(**data)


@dataclass
class JobResult:
    """What became of a job: done, or why not (`kind`), and where it ran."""

    ok: bool
    kind: str = "done"  # done | error (a cell raised) | timeout | dead_kernel | no_products | lost | crashed
    error: str = ""  # one line for the run record and the console
    cell: int | None = None  # the execution count of the cell that failed
    worker: str = "local"  # where it ran: "local", or the Dask worker's address
    kernel: str = ""  # how its kernel was made: "warm" or "plain (<why>)"
    seconds: float = 0.0  # wall time on the worker
    missing: list[str] = field(default_factory=list)  # declared products the step did not write

    @classmethod
    def from_dict(cls, data: dict) -> JobResult:
        return cls(**data)


Handle = Hashable  # what `submit` returns: an executor's own token for a job


class Executor(ABC):
    """What the runner needs of an executor: start, submit jobs, wait for some to finish, shut down."""

    name = ""  # the name it is registered under

    def __init__(self, settings):
        self.settings = settings  # the run's effective settings (notebench.settings.Settings)

    def start(self) -> Executor:
        """Get ready to run jobs (warm kernels, a cluster connection); called only when some step will run."""
        return self

    @abstractmethod
    def submit(self, job: StepJob) -> Handle:
        """Start `job`; return a handle for `wait`."""

    @abstractmethod
    def wait(self, handles: Collection[Handle], timeout: float | None = None) -> dict[Handle, JobResult]:
        """The results of the jobs of `handles` that finished, waiting until one did (at most `timeout` seconds:
        then possibly none)."""

    def env(self) -> dict[str, str]:
        """Variables every step kernel of this executor gets (a Dask scheduler's address, say)."""
        return {}

    def describe(self) -> str:
        """One line for the run's progress: where steps run."""
        return self.name

    def shutdown(self) -> None:  # noqa: B027 - an executor without resources needs no shutdown
        """Release workers and connections once the run ended."""


# -- running one job: papermill in a kernel, products checked -------------------------------------------------------


_IMPORTS = threading.Lock()  # papermill and jupyter_client imported by two threads at once can deadlock importlib


def import_papermill() -> None:
    """Import papermill ahead of the first step (it takes seconds)."""
    from notebench.imports import defer_iri_grammar

    defer_iri_grammar()  # nbformat's jsonschema would build IRI parsers: 2.75 s (see notebench.imports)
    with _IMPORTS:
        import jupyter_client.kernelspec  # noqa: F401
        import papermill  # noqa: F401


def run_job(job: StepJob, pool, worker: str = "local") -> JobResult:
    """Execute `job` through papermill with a kernel from `pool` (a KernelPool); never raises for a step's fault."""
    started = time.time()
    _claim(job, worker, started)
    staging = Path(job.staging)
    shutil.rmtree(staging, ignore_errors=True)  # a retried job starts from an empty folder
    staging.mkdir(parents=True)
    import_papermill()
    from notebench.pipeline.kernels import JOB_VARIABLE

    result = _execute(job, pool.papermill_kwargs(cwd=job.cwd, env={**job.env, JOB_VARIABLE: job.key}))
    result.worker, result.seconds = worker, time.time() - started
    result.kernel = "warm" if pool.mode == "fork" else f"plain ({pool.mode.removeprefix('fallback: ')})"
    if result.ok:
        result.missing = [p for p, path in job.products.items() if not Path(path).exists()]
        if result.missing:
            result.ok, result.kind = False, "no_products"
            result.error = (f"did not write its declared product(s) {', '.join(result.missing)} "
                            f"(to {', '.join(job.products[p] for p in result.missing)})")
    return result


def _claim(job: StepJob, worker: str, started: float) -> None:
    """Say where the job runs, in its claim file (read by the runner and by people: which process to look at)."""
    from notebench.pipeline.store import atomic_write_json

    Path(job.claim).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(job.claim), {"worker": worker, "host": socket.gethostname(), "pid": os.getpid(),
                                        "attempt": job.attempt, "started": started})


def read_claim(job: StepJob) -> dict | None:
    """The job's claim if a worker has started it."""
    import json

    try:
        return json.loads(Path(job.claim).read_text())
    except (OSError, ValueError):
        return None


def _execute(job: StepJob, kernel_kwargs: dict) -> JobResult:
    """papermill.execute_notebook, its errors turned into a JobResult with the cell and the error."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    try:
        papermill.execute_notebook(job.notebook, job.output, parameters=job.parameters, progress_bar=False,
                                   execution_timeout=job.timeout, **kernel_kwargs)
    except papermill.PapermillExecutionError as exc:
        what = exc.evalue if exc.ename == "StepStopped" else f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
        return JobResult(False, "error", what, cell=exc.exec_count)
    except CellTimeoutError:
        return JobResult(False, "timeout", f"timed out after {job.timeout} s")
    except DeadKernelError as exc:
        return JobResult(False, "dead_kernel", f"its kernel died: {exc}")
    return JobResult(True)


# -- the local executor ----------------------------------------------------------------------------------------------


class LocalExecutor(Executor):
    """Jobs on a thread pool in this process, kernels forked from one warm server (plain kernels if it cannot)."""

    name = "local"

    def __init__(self, settings):
        super().__init__(settings)
        self.parallelism = settings.value("pipeline", "parallelism")  # steps running at once
        self._threads = None
        self.pool = None

    def start(self) -> LocalExecutor:
        from notebench.pipeline.kernels import KernelPool
        from notebench.workspace import Workspace

        if self._threads is None:
            # steps side by side each get an equal share of the cores for OpenMP and BLAS (read when the server
            # imports them), unless the user set a number
            threads = str(max(1, (os.cpu_count() or 1) // self.parallelism))
            env = {k: threads for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                   if k not in os.environ}
            root = Workspace(self.settings).root
            self.pool = KernelPool(kernel_imports(self.settings), state_dir=root / "kernels",
                                   server_env=env).start()
            threading.Thread(target=import_papermill, daemon=True).start()
            self._threads = ThreadPoolExecutor(max_workers=self.parallelism, thread_name_prefix="notebench-step")
        return self

    def submit(self, job: StepJob):
        self.start()
        return self._threads.submit(self._run, job)

    def _run(self, job: StepJob) -> JobResult:
        try:
            return run_job(job, self.pool)
        except Exception as exc:  # a fault of ours, not the step's: reported as the step's failure, never lost
            return JobResult(False, "crashed", f"{type(exc).__name__}: {exc}")

    def wait(self, handles, timeout=None):
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return {future: future.result() for future in done}

    def describe(self) -> str:
        return f"local ({self.parallelism} at once on {socket.gethostname()})"

    def shutdown(self) -> None:
        if self._threads:
            self._threads.shutdown(wait=True)
        if self.pool:
            self.pool.close()


# -- the registry: this process's, then installed distributions' entry points --------------------------------------


EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(name: str, cls: type[Executor]) -> None:
    """Make an executor class available as `name` in this process (`[pipeline] executor`, `--executor`)."""
    EXECUTORS[name] = cls


def _entry_points() -> dict:
    """The installed executors' entry points by name."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}


def available_executors() -> list[str]:
    """Every executor name: registered here, or by an installed distribution."""
    return sorted({*EXECUTORS, *_entry_points()})


def get_executor(name: str, settings) -> Executor:
    """An executor instance by name, with the run's settings."""
    if name not in EXECUTORS:
        found = _entry_points().get(name)
        if found is None:
            raise NotebenchError(f"unknown executor '{name}' ([pipeline] executor or --executor); available: "
                                 f"{', '.join(available_executors())}. A package adds one through the entry-point "
                                 f"group '{ENTRY_POINTS}'")
        try:
            cls = found.load()
        except Exception as exc:
            raise NotebenchError(f"executor '{name}' ({found.value}, entry point of group {ENTRY_POINTS}) could not "
                                 f"be loaded: {type(exc).__name__}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Executor)):
            raise NotebenchError(f"executor '{name}' ({found.value}) is not a notebench.pipeline.executors.Executor")
        register_executor(name, cls)
    return EXECUTORS[name](settings)


register_executor("local", LocalExecutor)
