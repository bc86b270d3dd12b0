"""The trigger service: trigger events in a durable queue, and passes that turn them into one training run at a time.

    enqueue(workspace, kind, reason, *, details=None, source=None) -> Event | None
    read_events(workspace=None, limit=None) -> DataFrame     id, time, kind, reason, source, status, run_id, ...
    tick(workspace=None) -> TickResult                        poll the sources once, start one run for the queue
    watch(workspace=None, interval=None)                      passes until Ctrl-C or SIGTERM
    register_kind(name, source, *, cooldown=False)            add a trigger kind

Importing this package is cheap: pandas, croniter and the runner load on first use.
"""

from __future__ import annotations

from .events import Event, EventStore, enqueue, read_events
from .kinds import KINDS, Found, Poll, SourceUnavailable, register_kind
from .service import TickResult, resolve_pipeline, tick, watch

__all__ = ["KINDS", "Event", "EventStore", "Found", "Poll", "SourceUnavailable", "TickResult", "enqueue",
           "read_events", "register_kind", "resolve_pipeline", "tick", "watch"]
