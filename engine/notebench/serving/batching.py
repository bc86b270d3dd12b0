"""Micro-batching: concurrent requests predicted together by one worker thread.

A tree ensemble behind a pandas pipeline costs about as much for 16 rows as for one: the cost is per call, not
per row. So requests do not call the model themselves; they queue their checked rows, and one worker thread takes
whatever is queued (up to `max_rows`), predicts it in one call per model version, and hands each request its slice.
It never waits to fill a batch: a lone request is predicted at once, and batches grow only with concurrency.

Requests carry the model they started with, so a batch that straddles a hot swap is split by version. If a
batch's call fails, its requests are retried one by one, so a request the model cannot score fails alone.

A request of `max_rows` rows or more would go alone anyway; with a thread-safe model (scikit-learn's) it skips the
queue and is predicted by one of `large_workers` threads of its own, so that large requests are predicted side by
side on every core (scikit-learn's tree and linear predictions run outside the GIL) while the worker keeps serving
small ones: one thread predicting 1,000-row requests one after another was the service's bottleneck.

The worker limits OpenMP/BLAS to `threads` in its own thread (threadpoolctl): on two cores, the default of one
OpenMP thread per core makes every single-row prediction wait for the other cores' threads.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from notebench.serving.schema import Batch

__all__ = ["MicroBatcher"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    model: object  # the LoadedModel the request started with
    batch: Batch
    future: asyncio.Future
    meta: object  # the caller's own data about the request, handed back to `shadow`


class MicroBatcher:
    """A worker thread that predicts queued requests in batches; `await predict(model, batch)` from the loop."""

    def __init__(self, *, max_rows: int = 256, threads: int = 1, large_workers: int = 2,
                 on_batch: Callable[[object, int, int, float], None] | None = None,
                 shadow: Callable[[object, Batch, list], None] | None = None):
        self.max_rows, self.threads = max_rows, threads  # rows per model call; OpenMP/BLAS threads per thread
        self.large_workers = large_workers  # threads for requests of max_rows rows or more; 0: they queue too
        self.on_batch = on_batch  # called (model, requests, rows, seconds) after each model call
        self.shadow = shadow  # called (model, batch, [(meta, rows)]) after the requests are answered
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._large: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> MicroBatcher:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="notebench-batcher", daemon=True)
        self._thread.start()
        if self.large_workers > 0:
            self._large = ThreadPoolExecutor(self.large_workers, thread_name_prefix="notebench-large",
                                             initializer=_limit_threads, initargs=(self.threads,))
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Predict what is queued, then stop the workers."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
        if self._large is not None:
            self._large.shutdown(wait=True)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def predict(self, model, batch: Batch, meta: object = None) -> np.ndarray:
        """The model's output for `batch`, predicted in the worker with whatever else is queued."""
        future = self._loop.create_future()
        job = _Job(model, batch, future, meta)
        if self._large is not None and batch.rows >= self.max_rows and getattr(model, "thread_safe", False):
            self._large.submit(self._predict, [job])
        else:
            self._queue.put(job)
        return await future

    # ---------------------------------------------------------------------------------------------------------
    # the worker thread

    def _run(self) -> None:
        _limit_threads(self.threads)
        stop = False
        while not stop:
            job = self._queue.get()
            if job is None:
                break
            jobs, rows = [job], job.batch.rows
            while rows < self.max_rows:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                rows += nxt.batch.rows
            by_model: dict[int, list[_Job]] = {}
            for j in jobs:
                by_model.setdefault(id(j.model), []).append(j)
            for group in by_model.values():
                self._predict(group)

    def _predict(self, jobs: list[_Job]) -> None:
        model = jobs[0].model
        start = time.perf_counter()
        try:
            batch = Batch.concat([j.batch for j in jobs])
            out = model.predict(batch)
        except Exception as exc:  # answered to the request(s), never fatal to the worker
            if len(jobs) > 1:
                for j in jobs:
                    self._predict([j])
                return
            self._answer([(jobs[0].future, None, exc)])
            return
        seconds = time.perf_counter() - start
        answers, at = [], 0
        for j in jobs:
            answers.append((j.future, out[at:at + j.batch.rows], None))
            at += j.batch.rows
        self._answer(answers)
        if self.on_batch is not None:
            self.on_batch(model, len(jobs), batch.rows, seconds)
        if self.shadow is not None:
            try:
                self.shadow(model, batch, [(j.meta, j.batch.rows) for j in jobs])
            except Exception:  # the shadow never affects serving
                log.exception("shadow prediction failed")

    def _answer(self, answers: list) -> None:
        """Resolve the requests' futures on the loop, in one hop."""
        try:
            self._loop.call_soon_threadsafe(_resolve, answers)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def _resolve(answers: list) -> None:
    for future, result, exc in answers:
        if future.done():  # the client went away and the request was cancelled
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


_LIMITERS = threading.local()


def _limit_threads(threads: int):
    """Limit OpenMP and BLAS pools as seen from the calling thread for as long as it lives (None when threadpoolctl
    is unavailable)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    _LIMITERS.limiter = threadpool_limits(limits=threads)  # kept by the thread: the limits hold while it does
    return _LIMITERS.limiter
