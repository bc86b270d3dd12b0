"""The trigger service: trigger events in a durable queue, and passes that turn them into one training run at a time.

    enqueue(workspace, kind, reason, *, details=None, source=None) -> Event | None
    read_events(workspace=None, limit=None) -> DataFrame     id, time, kind, reason, source, status, run_id, ...
    tick(workspace=None) -> TickResult                        poll the sources once, start one run for the queue
    watch(workspace=None, interval=None)                      passes until Ctrl-C or SIGTERM
    register_kind(name, source, *, cooldown=False)            add a trigger kind

Importing this package is cheap (the `notebench` parser imports its commands): each name loads its module on
first use; pandas, croniter and the runner load only when a function needs them.
"""

from __future__ import annotations

__all__ = ["KINDS", "Event", "EventStore", "Found", "Poll", "SourceUnavailable", "TickResult", "enqueue",
           "read_events", "register_kind", "resolve_pipeline", "tick", "watch"]

_LAZY = {"Event": "events", "EventStore": "events", "enqueue": "events", "read_events": "events",
         "KINDS": "kinds", "Found": "kinds", "Poll": "kinds", "SourceUnavailable": "kinds", "register_kind": "kinds",
         "TickResult": "service", "resolve_pipeline": "service", "tick": "service", "watch": "service"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
