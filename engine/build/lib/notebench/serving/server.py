"""`serve(...)`: the prediction service under uvicorn, one worker, bound to 127.0.0.1 unless told otherwise.

Native thread pools are limited before numpy, scikit-learn or MLflow are imported (their OpenMP and BLAS runtimes
read the environment once, when they load): on a small machine one prediction spread over every core waits for the
slowest thread, and concurrent requests are better served by micro-batching than by threads inside one call.
"""

from __future__ import annotations

import os

from notebench.serving.config import ServingConfig

__all__ = ["serve"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_native_threads(threads: int) -> None:
    """Set OpenMP/BLAS thread counts for this process unless the environment sets them already."""
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))


def serve(workspace=None, *, host: str | None = None, port: int | None = None, log_level: str = "info",
          access_log: bool = False, **options) -> None:
    """Run the service for `workspace` (a `Workspace` or `Settings`; default: the settings file's) until SIGINT or
    SIGTERM; stopping answers the requests in flight, predicts what is queued and flushes the prediction log.

    `options` override `[serving]` settings (see `ServingConfig`): `model_uri`, `model_name`, `alias`,
    `watch_interval`, `shadow`, `log_predictions`, `flush_interval`, `threads`, `token`, ..."""
    from notebench.workspace import Workspace

    workspace = Workspace.of(workspace)
    config = ServingConfig.from_settings(workspace.settings).with_overrides(host=host, port=port, **options)
    limit_native_threads(config.threads)

    import uvicorn

    from notebench.serving.app import create_app

    app = create_app(workspace, config=config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, access_log=access_log,
                lifespan="on", timeout_graceful_shutdown=30, server_header=False)
