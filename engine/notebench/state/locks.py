"""The one lock primitive: a named, exclusive, inter-process lock that dies with its holder.

| state | lock | released when the holder dies |
|---|---|---|
| SQLite (one machine) | `flock` on `<state folder>/locks/<name>.lock` | the kernel closes its file |
| PostgreSQL (a team) | a session advisory lock on a connection of its own | the server ends its session |

Either way a holder that is killed (kill -9, a machine gone) leaves no stale lock behind, so no lock file or row
ever needs cleaning by hand. Who holds a lock is recorded in the `locks` table for messages ("held by ana@box pid
12 since 10:02:03"); the record is advisory, the lock is the flock or the advisory lock.

Locks are not reentrant: the same name taken twice, even by one process, waits for itself.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager

import sqlalchemy as sa

from notebench.state import schema
from notebench.state.flock import try_flock
from notebench.state.store import LockBusy, State, advisory_key, holder_name

__all__ = ["Lock"]

POLL = 0.05  # seconds between tries, doubling up to MAX_POLL
MAX_POLL = 0.5


def _file_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._@-]+", "_", name)[:100]
    return f"{safe}-{advisory_key(name) & 0xFFFFFFFF:08x}.lock"  # the hash keeps distinct names apart


class Lock:
    """A named lock of one `State`; `acquire(wait)` / `release()`, or `with lock.held(wait):`."""

    def __init__(self, state: State, name: str, holder: str | None = None, *, record: bool = True):
        self.state, self.name = state, name  # the state database, and the lock's name (any text)
        self.holder = holder or holder_name()  # who we are, as recorded while we hold it
        self.record = record  # write the holder to the `locks` table (not before the table exists)
        self._file = None  # flock: the open lock file
        self._conn = None  # advisory lock: the connection that holds it (or tries to)
        self._held = False  # advisory lock: taken

    @property
    def locked(self) -> bool:
        return self._file is not None or self._held

    def acquire(self, wait: float | None = 0.0) -> bool:
        """Take the lock, waiting up to `wait` seconds (None: as long as it takes); False when it stayed busy."""
        deadline = None if wait is None else time.monotonic() + wait
        pause = POLL
        while not self._try():
            if deadline is not None and time.monotonic() >= deadline:
                self._close_conn()
                return False
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(pause * 2, MAX_POLL)
        if self.record:
            try:
                self._write_holder()
            except BaseException:
                self.release()
                raise
        return True

    def release(self) -> None:
        """Give the lock back (nothing when not held)."""
        if not self.locked:
            return
        if self.record:
            try:
                with self.state.write() as conn:
                    t = schema.locks
                    conn.execute(t.delete().where(t.c.name == self.name, t.c.holder == self.holder))
            except sa.exc.DBAPIError:
                pass  # the record is advisory; the lock goes below
        if self._file is not None:
            self._file.close()  # closing the file releases the flock
            self._file = None
        if self._conn is not None:
            try:
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": advisory_key(self.name)})
            except sa.exc.DBAPIError:
                pass  # a lost connection: the server has released the lock with the session
            finally:
                self._close_conn()

    @contextmanager
    def held(self, wait: float | None = 0.0):
        """Hold the lock for the block, or raise `LockBusy` naming the holder after `wait` seconds."""
        if not self.acquire(wait):
            raise LockBusy(self.name, self.current_holder())
        try:
            yield self
        finally:
            self.release()

    def current_holder(self) -> str | None:
        """Who holds the lock, as its holder recorded itself (None: not recorded)."""
        try:
            with self.state.read() as conn:
                t = schema.locks
                row = conn.execute(sa.select(t.c.holder, t.c.since).where(t.c.name == self.name)).first()
        except sa.exc.DBAPIError:
            return None
        return f"{row.holder} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(row.since))}" if row else None

    # backends --------------------------------------------------------------------------------------------
    def _try(self) -> bool:
        return self._try_flock() if self.state.dialect == "sqlite" else self._try_advisory()

    def _try_flock(self) -> bool:
        self._file = try_flock(self.state.path.parent / "locks" / _file_name(self.name))
        return self._file is not None

    def _try_advisory(self) -> bool:
        if self._conn is None:  # one connection while we try; it holds the lock once we have it
            self._conn = self.state.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._held = bool(self._conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"),
                                             {"k": advisory_key(self.name)}).scalar_one())
        return self._held

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._held = False

    def _write_holder(self) -> None:
        with self.state.write() as conn:
            self.state.upsert(conn, schema.locks, {"name": self.name, "holder": self.holder, "since": time.time()},
                              ["name"])
