"""Executors run ready steps; they plug in through a registry, so a Dask executor needs no runner change.

An executor takes callables and returns `concurrent.futures.Future`-like objects (`done()`, `result()`); the
runner waits on them with `wait_any`. The local executor runs steps on threads: each step's real work happens
in its own kernel process, so threads only wait.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "get_executor", "register_executor", "wait_any"]


class Executor(ABC):
    """What the runner needs of an executor: `submit` a step, `shutdown` when the run ends."""

    def __init__(self, parallelism: int):
        self.parallelism = parallelism  # steps running at once

    @abstractmethod
    def submit(self, fn: Callable, *args) -> Future:
        """Start `fn(*args)`; return a future of its result."""

    def shutdown(self) -> None:  # noqa: B027 - an executor without resources needs no shutdown
        """Release the executor's workers once every submitted step finished."""


class LocalExecutor(Executor):
    """Steps on a thread pool in this process; their kernels are separate processes."""

    def __init__(self, parallelism: int):
        super().__init__(parallelism)
        self._pool = ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="notebench-step")

    def submit(self, fn: Callable, *args) -> Future:
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(name: str, cls: type[Executor]) -> None:
    """Make an executor class available as `name` (e.g. `notebench run --executor name`)."""
    EXECUTORS[name] = cls


def get_executor(name: str, parallelism: int) -> Executor:
    """An executor instance by registered name."""
    if name not in EXECUTORS:
        from notebench.errors import NotebenchError

        raise NotebenchError(f"unknown executor '{name}'; registered: {', '.join(EXECUTORS)}")
    return EXECUTORS[name](parallelism)


def wait_any(futures) -> set:
    """The futures of `futures` that are done, waiting for at least one."""
    done, _ = wait(futures, return_when=FIRST_COMPLETED)
    return done


register_executor("local", LocalExecutor)
