"""Prometheus metrics of the prediction service, kept and rendered by prometheus_client.

`ServiceMetrics` holds one service's metrics in a `CollectorRegistry` of its own (two services in one process, as in
tests, never share values): counters and histograms that requests and the batching thread update, and gauges set
from the service's state (`ServiceMetrics.gauge(..., read)`) before every scrape. `/metrics` renders them in the
format the scraper asks for: Prometheus text 0.0.4 by default, OpenMetrics when its Accept header says so.

Several worker processes: when `PROMETHEUS_MULTIPROC_DIR` names a folder before prometheus_client is imported,
prometheus_client keeps every value in memory-mapped files there, one per process, and `exposed()` returns a
fresh registry whose `MultiProcessCollector` merges them at scrape time: counters and histograms are summed, and
each gauge merges as its `mode` says (the version served: any live process; readiness: the least ready; log
counts: summed). A process's gauges are then as fresh as its last `refresh()`, so a multi-worker server refreshes
them periodically too (`Service` does at every alias check).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder

__all__ = ["BATCH_BUCKETS", "CONTENT_TYPE", "LATENCY_BUCKETS", "ServiceMetrics", "forget_dead_processes",
           "forget_process", "multiprocess_dir", "operator_folder"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what a scraper that does not ask for OpenMetrics gets

# `<name>_created` series double the output and are not in the multiprocess mode's; the service process owns this
disable_created_metrics()


def _feast_folder(folder: str | None) -> bool:
    """Whether `folder` is the private one Feast makes for its own metrics when it is imported (`feast.metrics`
    sets PROMETHEUS_MULTIPROC_DIR to a fresh `feast_metrics_*` temporary folder unless it is set already, and child
    processes inherit it), rather than one an operator chose for a multi-worker service."""
    if not folder:
        return False
    feast_metrics = sys.modules.get("feast.metrics")
    if feast_metrics is not None and folder == getattr(feast_metrics, "_prometheus_mp_dir", None):
        return True
    return os.path.basename(os.path.normpath(folder)).startswith("feast_metrics_")


def _configured_folder() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


def operator_folder() -> str | None:
    """The multiprocess folder an operator set for the service (PROMETHEUS_MULTIPROC_DIR), None when unset or when it
    is only Feast's private one (set by an import of Feast in this process or in the one that started it)."""
    folder = _configured_folder()
    return None if _feast_folder(folder) else folder


def keep_values_in_memory() -> None:
    """Undo the multiprocess mode Feast switched on by importing first: prometheus_client then keeps this process's
    values in Feast's folder, keyed by metric name only, so every service of the process (and every process
    started from it) would add up one another's counts. Metrics made from now on keep their values in memory; an
    operator's own PROMETHEUS_MULTIPROC_DIR is left alone."""
    from prometheus_client import values

    if values.ValueClass is not values.MutexValue and _feast_folder(_configured_folder()):
        values.ValueClass = values.MutexValue


def multiprocess_dir() -> str | None:
    """The folder of prometheus_client's multiprocess mode, when this process's metric values live in it.

    prometheus_client decides where values live when it is first imported (files, if PROMETHEUS_MULTIPROC_DIR was
    set then; memory otherwise). Feast sets that variable for its own metrics when it is imported, possibly later,
    and `keep_values_in_memory` undoes it: a scrape then renders this process's registry, not Feast's folder."""
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        return None
    return _configured_folder()


def forget_process(pid: int) -> None:
    """Drop the live gauges of process `pid` from the multiprocess folder (its counters keep counting)."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, multiprocess_dir())


def forget_dead_processes() -> None:
    """Drop the live gauges of every process of the multiprocess folder that no longer runs (killed replicas)."""
    import re

    folder = multiprocess_dir()
    if folder is None:
        return
    pids = {int(m.group(1)) for name in os.listdir(folder) if (m := re.match(r"gauge_live\w+_(\d+)\.db$", name))}
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            forget_process(pid)
        except PermissionError:
            pass


class _StateGauge:
    """A gauge whose value is read from the service at refresh time: a number, {label values: number}, or None
    (unlabelled: 0; labelled: no series)."""

    def __init__(self, gauge: Gauge, read: Callable[[], float | dict | None]):
        self.gauge, self.read = gauge, read
        self.shown: set[tuple] = set()  # label values with a series now

    def refresh(self) -> None:
        value = self.read()
        if not self.gauge._labelnames:
            self.gauge.set(value or 0)
            return
        wanted = {tuple(map(str, k)): v for k, v in (value or {}).items()}
        for gone in self.shown - set(wanted):
            self.gauge.labels(*gone).set(0)  # what a multiprocess file keeps; one process just drops it
            if multiprocess_dir() is None:  # (prometheus_client warns that files cannot drop a series)
                self.gauge.remove(*gone)
        for labels, number in wanted.items():
            self.gauge.labels(*labels).set(number)
        self.shown = set(wanted)


class ServiceMetrics:
    """The metrics of one service: a registry, its metrics, and the gauges set from the service's state."""

    def __init__(self):
        keep_values_in_memory()
        self.registry = CollectorRegistry()
        self._state: list[_StateGauge] = []

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: Iterable[str] = (), buckets=LATENCY_BUCKETS) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def gauge(self, name: str, doc: str, read: Callable[[], float | dict | None], labels: Iterable[str] = (),
              mode: str = "livemax") -> Gauge:
        """A gauge set from `read()` at each refresh; `mode`: how processes merge it in multiprocess mode."""
        gauge = Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)
        self._state.append(_StateGauge(gauge, read))
        return gauge

    def refresh(self) -> None:
        """Set the state gauges from the service now."""
        for state in self._state:
            state.refresh()

    def exposed(self) -> CollectorRegistry:
        """The registry a scrape renders: this service's, or every process's merged in multiprocess mode."""
        folder = multiprocess_dir()
        if folder is None:
            return self.registry
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=folder)
        return merged

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape's body and content type, in the format `accept` (the scraper's Accept header) asks for."""
        self.refresh()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.exposed()), content_type
