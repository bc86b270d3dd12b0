"""`serve(...)`: the prediction service under uvicorn, bound to 127.0.0.1 unless told otherwise.

One process by default. `workers=N` (`notebench serve --workers N`) runs N replicas of the service behind one
listening socket (uvicorn's supervisor hands connections to whichever replica accepts first, and replaces a replica
that dies): each loads the model, watches the alias and hot-swaps on its own, so a promotion reaches every replica
within `[serving] watch_interval` without a failed request (`POST /reload` reaches the one replica that answers it;
the others follow at their next check). Their metrics go through prometheus_client's multiprocess mode: a folder of
per-process files (`PROMETHEUS_MULTIPROC_DIR`, a fresh temporary one unless set) that any replica's `/metrics`
merges, so a scrape sees the whole service. Each replica writes its own prediction log segments (their names carry
its pid) and feedback; compaction takes a lock (see `notebench.serving.predlog`).

Native thread pools are limited before numpy, scikit-learn or MLflow are imported (their OpenMP and BLAS runtimes
read the environment once, when they load): on a small machine one prediction spread over every core waits for the
slowest thread, and concurrent requests are better served by micro-batching than by threads inside one call.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict

from notebench.serving.config import ServingConfig

__all__ = ["serve", "worker_app"]

_CONFIG_ENV = "NOTEBENCH_REPLICA_CONFIG"  # the ServingConfig a replica builds its app from (JSON; no section name)

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_native_threads(threads: int) -> None:
    """Set OpenMP/BLAS thread counts for this process unless the environment sets them already."""
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))


def serve(workspace=None, *, host: str | None = None, port: int | None = None, log_level: str = "info",
          access_log: bool = False, workers: int | None = None, **options) -> None:
    """Run the service for `workspace` (a `Workspace` or `Settings`; default: the settings file's) until SIGINT or
    SIGTERM; stopping answers the requests in flight, predicts what is queued and flushes the prediction log.

    `workers`: replicas of the service (processes; default 1). `options` override `[serving]` settings (see
    `ServingConfig`): `model_uri`, `model_name`, `alias`, `watch_interval`, `shadow`, `log_predictions`,
    `flush_interval`, `threads`, `token`, ..."""
    from notebench.workspace import Workspace

    workspace = Workspace.of(workspace)
    config = ServingConfig.from_settings(workspace.settings).with_overrides(host=host, port=port, **options)
    limit_native_threads(config.threads)
    run = {"host": config.host, "port": config.port, "log_level": log_level, "access_log": access_log,
           "lifespan": "on", "timeout_graceful_shutdown": 30, "server_header": False}
    if (workers or 1) > 1:
        return _serve_replicas(workspace, config, workers, run)

    import uvicorn

    from notebench.serving.app import create_app

    app = create_app(workspace, config=config)
    uvicorn.run(app, **run)


def _serve_replicas(workspace, config: ServingConfig, workers: int, run: dict) -> None:
    """`workers` replicas under uvicorn's supervisor, sharing a multiprocess metrics folder; the folder is removed
    at the end if it was made here."""
    import uvicorn

    from notebench.serving.metrics import operator_folder

    folder = operator_folder()  # not Feast's own, inherited from a process that imported Feast: ours would mix in
    made = folder is None
    folder = folder or tempfile.mkdtemp(prefix="notebench-metrics-")
    for stale in os.listdir(folder):  # values of an earlier service would be summed into this one's
        if stale.endswith(".db"):
            os.unlink(os.path.join(folder, stale))
    # what each replica (a fresh interpreter) needs to build the same service: set before it starts
    os.environ.update({"PROMETHEUS_MULTIPROC_DIR": folder, _CONFIG_ENV: json.dumps(asdict(config)),
                       "NOTEBENCH_SETTINGS": str(workspace.settings.file),
                       "NOTEBENCH_WORKSPACE_PATH": str(workspace.root)})
    try:
        uvicorn.run("notebench.serving.server:worker_app", factory=True, workers=workers, **run)
    finally:
        if made:
            shutil.rmtree(folder, ignore_errors=True)


def worker_app():
    """The app of one replica (uvicorn's factory, in each worker process): the service `serve` configured."""
    from notebench.serving.app import create_app
    from notebench.serving.metrics import forget_dead_processes
    from notebench.workspace import Workspace

    config = ServingConfig(**json.loads(os.environ[_CONFIG_ENV]))
    limit_native_threads(config.threads)
    forget_dead_processes()  # a replica that died (kill -9) left its live gauges behind
    return create_app(Workspace(), config=config)
