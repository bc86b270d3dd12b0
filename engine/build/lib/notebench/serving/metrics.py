"""Prometheus metrics, hand-written: counters, gauges read at scrape time, histograms, and the text format.

Enough of the exposition format (version 0.0.4) for Prometheus, Grafana Agent or VictoriaMetrics to scrape
`/metrics`, without a client library: `# HELP` and `# TYPE` lines, escaped label values, cumulative `_bucket`
series with `le="+Inf"`, `_sum` and `_count`. Updates take a lock, so the batching and log threads may update
them too.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable

__all__ = ["LATENCY_BUCKETS", "Counter", "Gauge", "Histogram", "Registry"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, doc: str, labels: Iterable[str] = ()):
        self.name, self.doc, self.labelnames = name, doc, tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name, doc, labels=()):
        super().__init__(name, doc, labels)
        self.values: dict[tuple, float] = {}

    def inc(self, *labels, amount: float = 1.0) -> None:
        with self._lock:
            self.values[labels] = self.values.get(labels, 0.0) + amount

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self.values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read at scrape time from `read()`: a number, or {label values: number}."""

    kind = "gauge"

    def __init__(self, name, doc, read: Callable[[], float | dict | None], labels=()):
        super().__init__(name, doc, labels)
        self.read = read

    def lines(self) -> list[str]:
        value = self.read()
        if value is None:
            return []
        items = value.items() if isinstance(value, dict) else [((), value)]
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, per label set."""

    kind = "histogram"

    def __init__(self, name, doc, labels=(), buckets=LATENCY_BUCKETS):
        super().__init__(name, doc, labels)
        self.buckets = tuple(sorted(buckets))
        self.values: dict[tuple, list] = {}  # labels -> [counts per bucket (+Inf last), sum]

    def observe(self, value: float, *labels) -> None:
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            entry = self.values.get(labels)
            if entry is None:
                entry = self.values[labels] = [[0] * (len(self.buckets) + 1), 0.0]
            entry[0][i] += 1
            entry[1] += value

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(v[0]), v[1])) for k, v in self.values.items())
        out = []
        for labels, (counts, total) in items:
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                le = 'le="' + _number(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {running}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, labels)} {_number(total)}")
            out.append(f"{self.name}_count{_labels(self.labelnames, labels)} {running}")
        return out


class Registry:
    """The metrics of one service, rendered in registration order."""

    def __init__(self):
        self.metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self.metrics.append(metric)
        return metric

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        return self.add(Counter(name, doc, labels))

    def gauge(self, name: str, doc: str, read, labels: Iterable[str] = ()) -> Gauge:
        return self.add(Gauge(name, doc, read, labels))

    def histogram(self, name: str, doc: str, labels: Iterable[str] = (), buckets=LATENCY_BUCKETS) -> Histogram:
        return self.add(Histogram(name, doc, labels, buckets))

    def render(self) -> str:
        out = []
        for metric in self.metrics:
            lines = metric.lines()
            if lines or metric.kind != "gauge":
                out += metric.header() + lines
        return "\n".join(out) + "\n"
