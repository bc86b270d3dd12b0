"""The trigger event store: every trigger event, durable in the state database (`[state] uri`), and what became of it.

```
trigger_events   id, queue, time, kind, reason, source, details, status, run_id, coalesced_into, note, key, updated
trigger_state    the sources' small durable state (the last schedule fired, batches seen), per queue
```
One queue per pipeline state: '' for the project's own runs, the environment's name for its deployed pipeline.
An event is `queued` until a pass of the trigger service decides: the first queued event that starts a run is
`started` (with the run id), the others of the same pass are `coalesced` into it (same run id), and events that
may not start training are `skipped` with the reason in `note` (a kind not enabled, or drift in its cooldown).
Writes are transactions of the state database taken one after another (SQLite's `BEGIN IMMEDIATE`, a transaction
lock on PostgreSQL), so concurrent writers queue behind each other and never interleave, and `updated` grows in
commit order; a source's `key` makes an event unique per kind, so a condition seen twice is recorded once.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa

from notebench.errors import NotebenchError
from notebench.state import schema
from notebench.state.store import holder_name, open_state
from notebench.workspace import Workspace

__all__ = ["STATUSES", "Event", "EventStore", "TriggerInputError", "enqueue", "read_events"]

STATUSES = ("queued", "started", "coalesced", "skipped")
COLUMNS = ("id", "time", "kind", "reason", "source", "status", "run_id", "coalesced_into", "details", "note",
           "key", "updated")
EVENTS, STATE = schema.trigger_events, schema.trigger_state


class TriggerInputError(NotebenchError):
    """A trigger event asked for with bad input (no reason); nothing was recorded."""

    exit_code = 2


@dataclass
class Event:
    """One trigger event as stored."""

    id: int
    time: float  # epoch seconds when it was enqueued
    kind: str
    reason: str
    source: str | None = None
    status: str = "queued"
    run_id: str | None = None  # the run it started or was coalesced into
    coalesced_into: int | None = None  # the event whose run it joined
    details: dict = field(default_factory=dict)
    note: str | None = None  # why it was skipped or queued again
    key: str | None = None  # the condition it stands for, unique per kind
    updated: float | None = None

    @classmethod
    def from_row(cls, row) -> Event:
        data = {c: row._mapping[c] for c in COLUMNS}
        data["details"] = json.loads(data["details"] or "{}")
        return cls(**data)

    def line(self) -> str:
        """One readable line: `#12 drift queued 12:00:03 — reason`."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        tail = f" → run {self.run_id}" if self.run_id else ""
        tail += f" (into #{self.coalesced_into})" if self.coalesced_into else ""
        tail += f" [{self.note}]" if self.note else ""
        return f"#{self.id:<4} {when}  {self.kind:<9} {self.status:<9} {self.reason}{tail}"


def who() -> str:
    """user@host, for events a person enqueued."""
    return holder_name().split(" pid ")[0]


class EventStore:
    """The trigger events of one workspace's queue (one per environment) in its state database."""

    def __init__(self, workspace=None, env: str | None = None):
        self.ws = Workspace.of(workspace)
        self.queue = env or ""  # '' for the project's own pipeline, else the environment's name
        self.db = open_state(self.ws)  # the state database

    def close(self) -> None:
        pass  # connections go back to the state's pool after each transaction

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self):
        """One write transaction of the queue, taken after the previous one committed; rolled back on any error."""
        with self.db.write(serial="trigger_events") as conn:
            yield conn

    def _mine(self):
        return EVENTS.c.queue == self.queue

    # writing --------------------------------------------------------------------------------------------
    def add(self, kind: str, reason: str, *, details: dict | None = None, source: str | None = None,
            key: str | None = None, now: float | None = None) -> Event | None:
        """Record a queued event; None when an event of this kind with this `key` already exists."""
        with self.transaction() as db:  # `updated` is taken under the write lock: commit order is `updated` order
            stamp = time.time()
            new_id = self.db.insert_ignore(db, EVENTS, {
                "queue": self.queue, "time": stamp if now is None else now, "kind": kind, "reason": reason,
                "source": source, "details": json.dumps(details or {}, default=str), "key": key, "status": "queued",
                "updated": stamp}, returning="id")
            return None if new_id is None else self._get(db, new_id)

    def settle(self, ids: list[int], status: str, *, run_id: str | None = None, into: int | None = None,
               note: str | None = None) -> int:
        """Move the still-queued events `ids` to `status`; return how many moved."""
        with self.transaction() as db:
            return self._settle(db, ids, status, run_id, into, note)

    def start(self, ids: list[int], run_id: str) -> int:
        """In one transaction: the first of `ids` started `run_id`, the others are coalesced into it."""
        with self.transaction() as db:
            return (self._settle(db, ids[:1], "started", run_id, None, None)
                    + self._settle(db, ids[1:], "coalesced", run_id, ids[0], None))

    def requeue(self, run_id: str, note: str) -> int:
        """Put the events of `run_id` back in the queue (its run was interrupted); return how many."""
        with self.transaction() as db:
            return db.execute(EVENTS.update().where(self._mine(), EVENTS.c.run_id == run_id,
                                                    EVENTS.c.status.in_(("started", "coalesced")))
                              .values(status="queued", run_id=None, coalesced_into=None, note=note,
                                      updated=time.time())).rowcount

    def _settle(self, db, ids, status, run_id, into, note) -> int:
        if not ids:
            return 0
        return db.execute(EVENTS.update().where(self._mine(), EVENTS.c.status == "queued", EVENTS.c.id.in_(ids))
                          .values(status=status, run_id=run_id, coalesced_into=into, note=note,
                                  updated=time.time())).rowcount

    # reading --------------------------------------------------------------------------------------------
    def _select(self, *where, order=EVENTS.c.id, limit: int | None = None) -> list[Event]:
        query = sa.select(EVENTS).where(self._mine(), *where).order_by(order)
        with self.db.read() as db:
            return [Event.from_row(r) for r in db.execute(query.limit(limit) if limit else query)]

    def _get(self, db, event_id: int) -> Event:
        return Event.from_row(db.execute(sa.select(EVENTS).where(self._mine(), EVENTS.c.id == event_id)).one())

    def get(self, event_id: int) -> Event:
        with self.db.read() as db:
            return self._get(db, event_id)

    def queued(self) -> list[Event]:
        """Every queued event, oldest first."""
        return self._select(EVENTS.c.status == "queued")

    def since(self, after_id: int = 0, limit: int | None = None) -> list[Event]:
        """Events with id above `after_id`, oldest first (the newest `limit` when given)."""
        return list(reversed(self._select(EVENTS.c.id > after_id, order=EVENTS.c.id.desc(), limit=limit)))

    def changed_since(self, when: float) -> list[Event]:
        """Events updated after `when`, oldest first."""
        return self._select(EVENTS.c.updated > when)

    def started_runs(self, limit: int = 20) -> list[str]:
        """Run ids of the most recent runs that events started."""
        return [e.run_id for e in self._select(EVENTS.c.status == "started", order=EVENTS.c.id.desc(), limit=limit)]

    def last_of_kind(self, kind: str) -> Event | None:
        found = self._select(EVENTS.c.kind == kind, order=EVENTS.c.id.desc(), limit=1)
        return found[0] if found else None

    # small durable state of the sources -----------------------------------------------------------------
    def state(self, name: str, default=None):
        with self.db.read() as db:
            value = db.execute(sa.select(STATE.c.value).where(STATE.c.queue == self.queue, STATE.c.name == name)
                               ).scalar_one_or_none()
        return json.loads(value) if value is not None else default

    def set_state(self, name: str, value) -> None:
        with self.transaction() as db:
            self.db.upsert(db, STATE, {"queue": self.queue, "name": name, "value": json.dumps(value, default=str)},
                              ["queue", "name"])


def enqueue(workspace, kind: str, reason: str, *, details: dict | None = None, source: str | None = None,
            key: str | None = None, env: str | None = None):
    """Record a trigger event (queued) for the project's pipeline or that of `env`; return it, or None when its
    `key` was already recorded for `kind`."""
    from notebench.triggers.kinds import check_kind

    check_kind(kind)
    if not reason or not reason.strip():
        raise TriggerInputError(f"a {kind} trigger needs a reason (e.g. --reason \"new holdout data from finance\")")
    with EventStore(workspace, env) as store:
        return store.add(kind, reason.strip(), details=details, source=source or who(), key=key)


def read_events(workspace=None, limit: int | None = None, env: str | None = None):
    """The newest `limit` events (all when None) as a DataFrame, newest first; `time` as UTC timestamps."""
    import pandas as pd

    with EventStore(workspace, env) as store:
        events = store.since(0, limit)
    frame = pd.DataFrame([{c: getattr(e, c) for c in COLUMNS} for e in reversed(events)], columns=list(COLUMNS))
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    frame["updated"] = pd.to_datetime(frame["updated"], unit="s", utc=True)
    frame["coalesced_into"] = frame["coalesced_into"].astype("Int64")
    frame["id"] = frame["id"].astype("int64")
    return frame
