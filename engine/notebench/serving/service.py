"""The running service: the model holder, the micro-batcher, the prediction log, the alias watcher, the metrics.

Routes call this object and never touch threads or files themselves. It is built by `create_app` and started
and stopped by the app's lifespan: `start` loads the model (serving starts without one, not ready, when the alias
is not set yet) and starts the workers; `stop` predicts what is queued and flushes the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time

import numpy as np

from notebench.errors import InvalidInputError, NoFeatureRepoError, ServingError, UnknownEntityError
from notebench.serving.batching import MicroBatcher
from notebench.serving.config import ServingConfig
from notebench.serving.metrics import BATCH_BUCKETS, ServiceMetrics, forget_process, multiprocess_dir
from notebench.serving.models import LoadedModel, ModelHolder, ModelSource
from notebench.serving.predlog import PredictionLog, log_root
from notebench.serving.schema import Batch

__all__ = ["Service"]

log = logging.getLogger(__name__)


def _entity_type_problems(types: dict[str, str], entity_ids: list) -> list[str]:
    """One line per entity id whose value cannot be of its entity column's type (`types`: column -> int64 | string);
    an id of several columns is a dict by column or a tuple in their order."""
    columns, problems = list(types), []
    for one in entity_ids:
        parts = one if isinstance(one, dict) else dict(zip(columns, one, strict=False)) \
            if isinstance(one, list | tuple) else {columns[0]: one} if len(columns) == 1 else {}
        for column, value in parts.items():
            kind = types.get(column)
            ok = isinstance(value, str) if kind == "string" else \
                isinstance(value, int) and not isinstance(value, bool) if kind == "int64" else True
            if not ok:
                want = "a string" if kind == "string" else "an integer"
                problems.append(f"entity id {value!r}: {column} is {want} entity column, got {type(value).__name__}")
    return problems


class Service:
    """Everything behind the routes, for one workspace and configuration."""

    def __init__(self, workspace, config: ServingConfig):
        self.workspace, self.config = workspace, config
        source = ModelSource(config.model_name, config.alias, config.model_uri)
        self.holder = ModelHolder(source, tracking_uri=workspace.tracking_uri, registry_uri=workspace.registry_uri,
                                  shadow_alias=config.shadow or None)
        self.predlog = PredictionLog(log_root(workspace), flush_interval=config.flush_interval,
                                     flush_rows=config.flush_rows, max_buffered_rows=config.max_buffered_rows
                                     ) if config.log_predictions else None
        self.batcher = MicroBatcher(max_rows=config.max_batch_rows, threads=config.threads,
                                    large_workers=config.large_workers, on_batch=self._on_batch,
                                    shadow=self._shadow if config.shadow else None)
        self.started_at = time.time()
        self._check_lock: asyncio.Lock | None = None
        self._watcher: asyncio.Task | None = None
        self._repo = None
        self._use_case = None
        self._repo_task: asyncio.Task | None = None
        self.metrics = ServiceMetrics()
        self._define_metrics()

    # ---------------------------------------------------------------------------------------------------------
    # lifecycle

    async def start(self) -> None:
        self._check_lock = asyncio.Lock()
        self.batcher.start()
        if self.predlog is not None:
            self.predlog.start()
        result = await self.check()
        if result["error"]:
            log.warning("serving no model yet: %s", result["error"])
        gc.collect()
        gc.freeze()  # see `check`
        if self.holder.source.watched and self.config.watch_interval > 0:
            self._watcher = asyncio.create_task(self._watch(), name="notebench-alias-watcher")
        if (self.workspace.root / "feature_repo" / "feature_store.yaml").is_file():
            self._repo_task = asyncio.create_task(asyncio.to_thread(self._feature_repo))  # Feast imports in ~7 s

    async def stop(self) -> None:
        for task in (self._watcher, self._repo_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await asyncio.to_thread(self.batcher.stop)
        if self.predlog is not None:
            await asyncio.to_thread(self.predlog.close)
        forget_process(os.getpid())  # a replica's live gauges leave with it (multiprocess mode; else nothing)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.watch_interval)
            try:
                result = await self.check()
            except Exception:  # the watcher must keep watching
                log.exception("alias check failed")
                continue
            if result["changed"]:
                log.warning("now serving %s version %s (was %s)", self.config.model_name, result["version"],
                            result["previous_version"])

    async def check(self) -> dict:
        """Resolve the alias now and swap to the version it names if that is new (one check at a time)."""
        async with self._check_lock:
            result = await asyncio.to_thread(self.holder.check)
        if result["error"]:
            self.load_failures.inc()
        if multiprocess_dir() is not None:  # another process may answer the scrape: see notebench.serving.metrics
            self.metrics.refresh()
        if result.pop("loaded"):
            # MLflow, pandas and a model make ~400k long-lived objects: a full collection that walks them pauses
            # every request for 100s of ms. Frozen, they are never walked again (refcounting still frees them).
            gc.freeze()
        return result

    @property
    def model(self) -> LoadedModel | None:
        return self.holder.current

    def readiness(self) -> list[str]:
        """Why the service is not ready (empty: ready)."""
        problems = []
        if self.holder.current is None:
            problems.append(f"no model loaded: {self.holder.last_error or 'loading'}")
        if not self.batcher.alive:
            problems.append("the prediction worker is not running")
        if self.predlog is not None and not self.predlog.alive:
            problems.append("the prediction log writer is not running")
        return problems

    # ---------------------------------------------------------------------------------------------------------
    # predicting

    async def predict(self, model: LoadedModel, batch: Batch, *, endpoint: str, request_id: str,
                      started: tuple[float, float]) -> np.ndarray:
        """`model`'s output for `batch` (micro-batched), logged; `started` is (perf_counter, unix time)."""
        try:
            output = await self.batcher.predict(model, batch, meta=(request_id, endpoint, started[1]))
        except Exception as exc:  # the model refused this input (alone: see MicroBatcher)
            raise InvalidInputError(f"the model could not score this input: {type(exc).__name__}: {exc}") from exc
        if self.predlog is not None:
            self.predlog.log(request_id=request_id, endpoint=endpoint, model=model, columns=batch.columns,
                             output=output, rows=batch.rows, started=started[1],
                             latency=time.perf_counter() - started[0])
        return output

    def _on_batch(self, model: LoadedModel, requests: int, rows: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.predicted.labels(model.version, "champion").inc(rows)

    def _shadow(self, model: LoadedModel, batch: Batch, requests: list) -> None:
        """In the worker thread, after the requests were answered: the shadow model on the same rows, logged."""
        shadow = self.holder.shadow
        if shadow is None or shadow.version == model.version:
            return
        start = time.perf_counter()
        try:
            rows = batch if shadow.schema.names == model.schema.names else shadow.schema.from_columns(batch.columns)
            output = shadow.predict(rows)
        except Exception as exc:  # a failing shadow is counted, never seen by clients
            self.shadow_errors.labels(shadow.version).inc()
            log.debug("shadow version %s failed: %s", shadow.version, exc)
            return
        seconds = time.perf_counter() - start
        self.predicted.labels(shadow.version, "shadow").inc(batch.rows)
        if self.predlog is None:
            return
        at = 0
        for (request_id, endpoint, started), n in requests:
            part = {name: values[at:at + n] for name, values in rows.columns.items()}
            self.predlog.log(request_id=request_id, endpoint=endpoint, model=shadow, columns=part,
                             output=output[at:at + n], rows=n, started=started, latency=seconds, role="shadow")
            at += n

    # ---------------------------------------------------------------------------------------------------------
    # features and feedback

    def _feature_repo(self):
        if self._repo is None:
            from notebench.features.store import FeatureRepo

            repo = FeatureRepo(self.workspace)
            repo.online([])  # imports Feast and prepares the reader
            self._repo = repo
            gc.freeze()  # Feast's modules too: see `check`
        return self._repo

    @property
    def use_case(self):
        """The workspace's use case (its entity columns and their types), loaded on first use."""
        if self._use_case is None:
            from notebench.usecase import load_use_case

            self._use_case = load_use_case(self.workspace.settings)
        return self._use_case

    async def features(self, entity_ids: list):
        """The online features of `entity_ids` (`InvalidInputError` for ids of the wrong type, `UnknownEntityError`
        naming unknown ids; `ServingError` when the online store cannot be read)."""
        folder = self.workspace.root / "feature_repo"
        if not (folder / "feature_store.yaml").is_file():
            raise NoFeatureRepoError(", ".join(self.use_case.entities), entity_ids, folder)
        wrong = _entity_type_problems(self.use_case.entity_types, entity_ids)
        if wrong:
            raise InvalidInputError(wrong)
        if self._repo_task is not None and not self._repo_task.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._repo_task)
        try:
            repo = self._repo or await asyncio.to_thread(self._feature_repo)
            return await asyncio.to_thread(repo.online, entity_ids)
        except UnknownEntityError:
            raise
        except Exception as exc:  # Feast, SQLite: the store's problem, not the request's
            raise ServingError(f"the online feature store cannot be read: {type(exc).__name__}: {exc}") from exc

    async def feedback(self, items: list[dict]) -> int:
        """Log ground truth durably; return how many items were written with it."""
        if self.predlog is None:
            raise ServingError("prediction logging is off ([serving] log_predictions), so feedback has nowhere to go")
        try:
            return await asyncio.wrap_future(self.predlog.feedback(items))
        except OSError as exc:
            raise ServingError(f"feedback could not be written: {exc}") from exc

    # ---------------------------------------------------------------------------------------------------------
    # metrics

    def _define_metrics(self) -> None:
        m = self.metrics
        self.requests = m.counter("notebench_requests_total", "HTTP requests answered",
                                  ["endpoint", "method", "status"])
        self.errors = m.counter("notebench_request_errors_total", "HTTP requests answered with a 4xx or 5xx status",
                                ["endpoint", "status"])
        self.latency = m.histogram("notebench_request_duration_seconds", "Time from request to response",
                                   ["endpoint"])
        self.predicted = m.counter("notebench_predicted_rows_total", "Rows predicted", ["model_version", "role"])
        self.batch_rows = m.histogram("notebench_batch_rows", "Rows per model call (micro-batches)",
                                      buckets=BATCH_BUCKETS)
        self.shadow_errors = m.counter("notebench_shadow_errors_total", "Shadow predictions that failed",
                                       ["model_version"])
        self.load_failures = m.counter("notebench_model_check_failures_total",
                                       "Alias checks that could not load the version it names")

        def info(model: LoadedModel | None) -> dict | None:
            return {(model.name or "", model.version, model.alias or ""): 1} if model else None

        holder = self.holder
        m.gauge("notebench_model_info", "The model version being served", lambda: info(holder.current),
                ["name", "version", "alias"])
        m.gauge("notebench_shadow_model_info", "The model version predicting in shadow", lambda: info(holder.shadow),
                ["name", "version", "alias"])
        m.gauge("notebench_model_loaded_timestamp_seconds", "When the served version was loaded (0: none is)",
                lambda: holder.current and holder.current.loaded_at, mode="livemostrecent")
        m.gauge("notebench_model_swaps", "Hot swaps since start", lambda: holder.swaps, mode="livesum")
        m.gauge("notebench_model_last_check_timestamp_seconds", "When the alias was last checked (0: not yet)",
                lambda: holder.last_check)
        m.gauge("notebench_ready", "1 when the service is ready", lambda: 0 if self.readiness() else 1, mode="livemin")
        if self.predlog is not None:
            p = self.predlog
            m.gauge("notebench_prediction_log_rows_written", "Prediction rows written to the log",
                    lambda: p.rows_written, mode="sum")
            m.gauge("notebench_prediction_log_rows_buffered", "Prediction rows waiting for the next flush",
                    lambda: p.buffered_rows, mode="livesum")
            m.gauge("notebench_prediction_log_rows_dropped", "Prediction rows dropped (buffer full)",
                    lambda: p.rows_dropped, mode="sum")
            m.gauge("notebench_prediction_log_segments_written", "Segments written", lambda: p.segments_written,
                    mode="sum")
            m.gauge("notebench_prediction_log_write_errors", "Failed segment writes", lambda: p.write_errors,
                    mode="sum")
            m.gauge("notebench_feedback_written", "Feedback items written", lambda: p.feedback_written, mode="sum")
