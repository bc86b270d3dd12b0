"""The Dask executor: every step job runs on a Dask worker, through papermill, as the local executor runs it.

`[pipeline] executor = dask` sends each `StepJob` (plain data) to the scheduler named by `[dask] scheduler`: an
address (`tcp://host:8786`: `make team-up`'s, or one fronting dask-kubernetes or dask-jobqueue workers), or
`local`, a cluster of `[dask] workers` worker processes on this machine started for the run. On the worker,
`run_on_worker` runs the job with `run_job`, the local executor's own function: the same papermill call, the same
per-cell timeout, products checked the same way; the runner keeps the plan, the cache, retries, the atomic commits,
the run record and lineage, on the shared workspace path.

Kernels on a worker are warm where that works: each worker process keeps a `KernelPool` (a server that imported
`[pipeline] warm_imports` once and forks a kernel per step) started when the executor connects; where forking is
impossible (not Linux, the server failed) papermill starts plain `notebench` kernels, and the step's record says
which (`kernel`: "warm" or "plain (why)"). A worker's pool dies with it: its server exits when the worker process
does, and takes its kernels along.

Workers that offer the resources `step=1` and `trial=1` (as `make team-up` and the local cluster start them, with
two threads each) run one step and one tuning trial at a time each: a step's thread only waits for its kernel, so
the train step's trials can use every worker, its own included (`notebench.tuning` places each trial on a worker
with a free `trial`). Workers without them run a step per thread.

A worker killed mid-step (kill -9, a lost node): the scheduler gives the step to another worker (the run record
lists each worker a step ran on); once a step's workers died `distributed.scheduler.allowed-failures` times, the
step fails with "its worker died", the run ends failed, and the partly executed notebook stays in the run's folder.
A runner that dies (or stops) mid-step: the scheduler drops its tasks, and the worker kills the step's kernel within
a second, so no orphan keeps a worker busy; the step's products never became valid (only the runner commits).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict
from urllib.parse import urlsplit, urlunsplit

from notebench.errors import NotebenchError
from notebench.pipeline.executors import Executor, JobResult, StepJob, kernel_imports, run_job

__all__ = ["STEP", "TRIAL", "DaskExecutor", "connect", "offering", "redact", "roomy_malloc", "run_on_worker"]

log = logging.getLogger(__name__)

STEP, TRIAL = "step", "trial"  # worker resources: one step and one trial at a time per worker
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def redact(uri: str) -> str:
    """`uri` with any password replaced by ***, for messages and records."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(settings, workers: int | None = None):
    """(client, cluster or None) for `[dask] scheduler`: a local cluster started here, or the running scheduler.

    A local cluster has `workers` (default `[dask] workers`) worker processes of two threads, each offering one
    step and one trial; their OpenMP/BLAS threads share the cores (unless the environment sets a number).
    """
    import distributed

    for name in ("distributed", "distributed.worker", "distributed.nanny", "distributed.scheduler"):
        logging.getLogger(name).setLevel(logging.ERROR)  # a worker stopped at the end of a run is no news
    scheduler = settings.value("dask", "scheduler")
    timeout = settings.value("dask", "connect_timeout")
    if scheduler == "local":
        n = workers or settings.value("dask", "workers")
        threads = str(max(1, (os.cpu_count() or 1) // n))
        env = {k: os.environ.get(k, threads) for k in _THREAD_VARIABLES}
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=2, processes=True, env=env,
                                           resources={STEP: 1, TRIAL: 1}, dashboard_address=None,
                                           silence_logs=logging.ERROR)
        return distributed.Client(cluster, timeout=timeout), cluster
    if not scheduler.startswith(("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")):
        raise NotebenchError(f"[dask] scheduler = {redact(scheduler)}: expected `local` or an address such as "
                             "tcp://host:8786")
    try:
        return distributed.Client(scheduler, timeout=timeout, set_as_default=False), None
    except (OSError, TimeoutError) as exc:
        raise NotebenchError(f"the Dask scheduler {redact(scheduler)} ([dask] scheduler) could not be reached within "
                             f"{timeout:g} s: {exc}. Start it (`make team-up` starts one), or set [dask] scheduler = "
                             "local") from None


def offering(client, resource: str) -> list[str]:
    """The addresses of the workers that offer `resource`."""
    return sorted(a for a, w in client.scheduler_info()["workers"].items() if resource in (w.get("resources") or {}))


class DaskExecutor(Executor):
    """Step jobs as Dask tasks; the runner waits on their futures through `wait`."""

    name = "dask"

    def __init__(self, settings):
        super().__init__(settings)
        self.client = self.cluster = None
        self.resources: dict | None = None  # what each step task needs of a worker; None: a thread

    def start(self) -> DaskExecutor:
        if self.client is None:
            self.client, self.cluster = connect(self.settings)
            self.resources = {STEP: 1} if offering(self.client, STEP) else None
            imports = kernel_imports(self.settings)
            self.client.run(warm_up, imports, os.environ.get("PYTHONPATH", ""))  # every worker's server imports now
        return self

    def submit(self, job: StepJob):
        self.start()
        return self.client.submit(run_on_worker, job.to_dict(), key=job.key, pure=False, resources=self.resources)

    def wait(self, handles, timeout=None):
        import distributed

        try:
            with self.client.as_current():
                done, _ = distributed.wait(list(handles), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return {}
        return {future: _result(future) for future in done}

    def env(self) -> dict[str, str]:
        """The scheduler's address, so that a step's own Dask work (tuning trials) goes to the same cluster."""
        return {"NOTEBENCH_DASK_SCHEDULER": self.client.scheduler.address} if self.client else {}

    def describe(self) -> str:
        if self.client is None:
            return self.name
        workers = self.client.scheduler_info()["workers"]
        where = "a local cluster" if self.cluster else redact(self.client.scheduler.address)
        slots = "one step per worker" if self.resources else "workers without the `step` resource: one step per thread"
        return f"dask ({where}, {len(workers)} worker(s), {slots})"

    def shutdown(self) -> None:
        client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def _result(future) -> JobResult:
    """A finished future's JobResult; a lost worker or a fault on the worker as a failed one."""
    from distributed import KilledWorker

    if future.status == "finished":
        return JobResult.from_dict(future.result())
    if future.status == "cancelled":
        return JobResult(False, "lost", "the Dask scheduler cancelled it (it lost the task, or restarted)")
    exc = future.exception()
    if isinstance(exc, KilledWorker):
        return JobResult(False, "lost", f"its worker died while running it, on every worker it was given to "
                                        f"(distributed.scheduler.allowed-failures): {exc}", worker=str(exc.last_worker
                                        .address) if getattr(exc, "last_worker", None) else "dask")
    return JobResult(False, "crashed", f"{type(exc).__name__}: {exc}", worker="dask")


# -- on the worker ---------------------------------------------------------------------------------------------------


_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's own ceiling for its sliding mmap threshold on 64-bit


def roomy_malloc() -> bool:
    """Undo the cost of the malloc setting a Dask nanny gives its workers, in this process and the kernels it starts.

    The nanny sets `MALLOC_TRIM_THRESHOLD_` (so freed memory goes back to the OS), and glibc then freezes its mmap
    threshold at 128 KiB: every array above that is a fresh mmap, page-faulted in and unmapped again. A model fit
    that allocates many mid-sized arrays runs 15-25% slower for it on this machine (2.6-2.95 s vs 3.2-3.5 s for the
    fixture model on 343k rows), and two of them side by side lose the second core's gain. Pinning the mmap threshold
    at glibc's own ceiling (32 MiB) brings the speed back and keeps the trim: large arrays still return to the OS.
    Only where glibc, the nanny's setting and no operator choice of `MALLOC_MMAP_THRESHOLD_` meet; True if applied."""
    import ctypes
    import sys

    if (not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" not in os.environ
            or "MALLOC_MMAP_THRESHOLD_" in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl)
        return False
    m_mmap_threshold = -3
    if not libc.mallopt(m_mmap_threshold, _MMAP_THRESHOLD):
        return False
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(_MMAP_THRESHOLD)  # the kernels this worker starts, likewise
    return True


_POOLS: dict = {}  # (warm imports, PYTHONPATH) -> this worker process's KernelPool
_POOLS_LOCK = threading.Lock()


def _pool(imports: list[str], pythonpath: str):
    """This worker process's warm kernel pool for `imports` (started on first use, stopped when the process exits)."""
    from notebench.pipeline.kernels import KernelPool

    key = (tuple(imports), pythonpath)
    with _POOLS_LOCK:
        if key not in _POOLS:
            env = {"PYTHONPATH": pythonpath} if pythonpath else {}
            _POOLS[key] = KernelPool(imports, server_env=env).start()  # its server dies with this process
        return _POOLS[key]


def warm_up(imports: list[str], pythonpath: str) -> None:
    """Start this worker's kernel pool (its server imports in the background) and import papermill, without waiting."""
    from notebench.pipeline.executors import import_papermill

    roomy_malloc()  # before the pool's server starts: its kernels inherit it
    _pool(imports, pythonpath)
    threading.Thread(target=import_papermill, daemon=True).start()


def run_on_worker(job: dict) -> dict:
    """Run one step job on this Dask worker; the JobResult as a dict."""
    from distributed import get_worker

    from notebench.pipeline.kernels import forget_kernels

    job = StepJob.from_dict(job)
    worker = get_worker()
    done = threading.Event()
    threading.Thread(target=_kill_when_abandoned, args=(worker, job.key, done), daemon=True).start()
    try:
        result = run_job(job, _pool(job.warm_imports, job.env.get("PYTHONPATH", "")), worker=worker.address)
    except Exception as exc:  # a fault of the worker's, not the step's: reported as the step's failure
        result = JobResult(False, "crashed", f"{type(exc).__name__}: {exc}", worker=worker.address)
    finally:
        done.set()
        forget_kernels(job.key)
    return asdict(result)


_ABANDONED = {"cancelled", "released", "forgotten"}  # a task's states on a worker once no client wants its result


def _kill_when_abandoned(worker, key: str, done: threading.Event, every: float = 1.0) -> None:
    """Kill the step's kernel once nobody waits for it (its runner died, or stopped the run): the worker is free
    for the next step instead of running an orphan to its timeout."""
    from notebench.pipeline.kernels import kill_kernels

    while not done.wait(every):
        task = worker.state.tasks.get(key)
        if task is None or task.state in _ABANDONED:
            if kill_kernels(key):
                log.warning("step %s: its runner is gone; its kernel was killed", key)
            return
