"""The trigger event store: every trigger event, durable in SQLite (WAL) inside the workspace, and what became of it.

```
<workspace>/triggers/events.db    events (id, time, kind, reason, source, details, status, run_id, ...), state
```
An event is `queued` until a pass of the trigger service decides: the first queued event that starts a run is
`started` (with the run id), the others of the same pass are `coalesced` into it (same run id), and events that
may not start training are `skipped` with the reason in `note` (a kind not enabled, or drift in its cooldown).
Writes run in `BEGIN IMMEDIATE` transactions, so concurrent writers queue behind each other and never
interleave; a source's `key` makes an event unique per kind, so a condition seen twice is recorded once.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from notebench.errors import NotebenchError
from notebench.workspace import Workspace

__all__ = ["STATUSES", "Event", "EventStore", "TriggerInputError", "enqueue", "read_events"]

STATUSES = ("queued", "started", "coalesced", "skipped")
COLUMNS = ("id", "time", "kind", "reason", "source", "status", "run_id", "coalesced_into", "details", "note",
           "key", "updated")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,               -- when it was enqueued (epoch seconds, UTC)
    kind TEXT NOT NULL,               -- schedule, new_data, drift, quality, on_demand, or a registered kind
    reason TEXT NOT NULL,             -- why, for people
    source TEXT,                      -- who or what enqueued it (user@host, the source's name)
    details TEXT NOT NULL DEFAULT '{}',  -- JSON: what the source saw
    status TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'started', 'coalesced', 'skipped')),
    run_id TEXT,                      -- the pipeline run it started or was coalesced into
    coalesced_into INTEGER REFERENCES events(id),
    note TEXT,                        -- why it was skipped, requeued, ...
    key TEXT,                         -- unique per kind when set: the condition it stands for
    updated REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_kind_key ON events(kind, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_status ON events(status);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


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
    def from_row(cls, row: sqlite3.Row) -> Event:
        data = dict(row)
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
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class EventStore:
    """The SQLite file of one workspace's trigger events (one per environment); one connection per instance, used
    by one thread."""

    def __init__(self, workspace=None, env: str | None = None):
        self.ws = Workspace.of(workspace)
        self.path = self.ws.path("triggers", f"events@{env}.db" if env else "events.db")
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives a power cut
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time; rolled back on any exception."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # writing --------------------------------------------------------------------------------------------
    def add(self, kind: str, reason: str, *, details: dict | None = None, source: str | None = None,
            key: str | None = None, now: float | None = None) -> Event | None:
        """Record a queued event; None when an event of this kind with this `key` already exists."""
        with self.transaction() as db:  # `updated` is taken under the write lock: commit order is `updated` order
            stamp = time.time()
            cur = db.execute("INSERT OR IGNORE INTO events (time, kind, reason, source, details, key, updated) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", (stamp if now is None else now, kind, reason, source,
                                                              json.dumps(details or {}, default=str), key, stamp))
            if not cur.rowcount:
                return None
            return self.get(cur.lastrowid)

    def settle(self, ids: list[int], status: str, *, run_id: str | None = None, into: int | None = None,
               note: str | None = None) -> int:
        """Move the still-queued events `ids` to `status`; return how many moved."""
        with self.transaction() as db:
            return _settle(db, ids, status, run_id, into, note)

    def start(self, ids: list[int], run_id: str) -> int:
        """In one transaction: the first of `ids` started `run_id`, the others are coalesced into it."""
        with self.transaction() as db:
            return (_settle(db, ids[:1], "started", run_id, None, None)
                    + _settle(db, ids[1:], "coalesced", run_id, ids[0], None))

    def requeue(self, run_id: str, note: str) -> int:
        """Put the events of `run_id` back in the queue (its run was interrupted); return how many."""
        with self.transaction() as db:
            cur = db.execute("UPDATE events SET status = 'queued', run_id = NULL, coalesced_into = NULL, note = ?, "
                             "updated = ? WHERE run_id = ? AND status IN ('started', 'coalesced')",
                             (note, time.time(), run_id))
            return cur.rowcount

    # reading --------------------------------------------------------------------------------------------
    def get(self, event_id: int) -> Event:
        return Event.from_row(self.db.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone())

    def queued(self) -> list[Event]:
        """Every queued event, oldest first."""
        return [Event.from_row(r) for r in self.db.execute("SELECT * FROM events WHERE status = 'queued' ORDER BY id")]

    def since(self, after_id: int = 0, limit: int | None = None) -> list[Event]:
        """Events with id above `after_id`, oldest first (the newest `limit` when given)."""
        sql = "SELECT * FROM events WHERE id > ? ORDER BY id DESC" + (" LIMIT ?" if limit else "")
        rows = self.db.execute(sql, (after_id, limit) if limit else (after_id,)).fetchall()
        return [Event.from_row(r) for r in reversed(rows)]

    def changed_since(self, when: float) -> list[Event]:
        """Events updated after `when`, oldest first."""
        return [Event.from_row(r) for r in self.db.execute("SELECT * FROM events WHERE updated > ? ORDER BY id",
                                                            (when,))]

    def started_runs(self, limit: int = 20) -> list[str]:
        """Run ids of the most recent runs that events started."""
        rows = self.db.execute("SELECT DISTINCT run_id FROM events WHERE status = 'started' ORDER BY id DESC LIMIT ?",
                               (limit,))
        return [r[0] for r in rows]

    def last_of_kind(self, kind: str) -> Event | None:
        row = self.db.execute("SELECT * FROM events WHERE kind = ? ORDER BY id DESC LIMIT 1", (kind,)).fetchone()
        return Event.from_row(row) if row else None

    # small durable state of the sources -----------------------------------------------------------------
    def state(self, name: str, default=None):
        row = self.db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_state(self, name: str, value) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO state (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = "
                       "excluded.value", (name, json.dumps(value, default=str)))


def _settle(db, ids, status, run_id, into, note) -> int:
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    cur = db.execute(f"UPDATE events SET status = ?, run_id = ?, coalesced_into = ?, note = ?, updated = ? "
                     f"WHERE status = 'queued' AND id IN ({marks})", (status, run_id, into, note, time.time(), *ids))
    return cur.rowcount


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
