"""Leases: "this is still alive" as a row renewed by a heartbeat, never a process id.

A lease is a row of the `leases` table: its name, its holder, a token only the holder knows, and when it expires
by the database's clock. The holder's heartbeat thread pushes `expires` forward every third of the lease's time to
live; a holder that dies (kill -9, a lost machine, a frozen VM) stops renewing it, and once it expires everyone
sees it dead, from any machine, without asking an operating system about a pid that may belong to another
process by now, or to another host. A lease taken over after it expired is lost to its old holder: its heartbeat
notices (`lost`) instead of renewing someone else's lease.
"""

from __future__ import annotations

import logging
import threading
import uuid

import sqlalchemy as sa

from notebench.state import schema
from notebench.state.store import State, StateError, holder_name

__all__ = ["Lease", "LeaseHeld"]

log = logging.getLogger(__name__)


class LeaseHeld(StateError):
    """The lease is held, and renewed, by someone else."""

    exit_code = 3

    def __init__(self, name: str, holder: str):
        self.name, self.holder = name, holder
        super().__init__(f"lease '{name}' is held by {holder}")


class Lease:
    """One lease: `acquire()` starts its heartbeat, `release()` stops it and deletes the row."""

    def __init__(self, state: State, name: str, ttl: float, holder: str | None = None):
        self.state, self.name, self.ttl = state, name, float(ttl)  # ttl: seconds it lives without a heartbeat
        self.holder = holder or holder_name()
        self.token = uuid.uuid4().hex
        self.lost = False  # set when the heartbeat found the lease taken over (it had expired)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Lease:
        """Take the lease (a free or expired one; `LeaseHeld` when alive elsewhere) and start the heartbeat."""
        t, now = schema.leases, self.state.now_sql()
        with self.state.write() as conn:
            row = conn.execute(sa.select(t.c.holder, t.c.token, (t.c.expires > sa.text(now)).label("alive"))
                               .where(t.c.name == self.name)).first()
            if row is not None and row.alive and row.token != self.token:
                raise LeaseHeld(self.name, row.holder)
            clock = self.state.now(conn)
            self.state.upsert(conn, t, {"name": self.name, "holder": self.holder, "token": self.token,
                                        "acquired": clock, "expires": clock + self.ttl}, ["name"])
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.name}", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> bool:
        """Push the expiry forward; False (and `lost`) when the lease is no longer ours."""
        t = schema.leases
        with self.state.write() as conn:
            done = conn.execute(t.update().where(t.c.name == self.name, t.c.token == self.token)
                                .values(expires=sa.text(f"{self.state.now_sql()} + {self.ttl!r}"))).rowcount
        self.lost = not done
        return bool(done)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease (if still ours)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.ttl)
        t = schema.leases
        with self.state.write() as conn:
            conn.execute(t.delete().where(t.c.name == self.name, t.c.token == self.token))

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self.renew():
                    log.warning("lease %s expired and was taken over; its heartbeat stops", self.name)
                    return
            except sa.exc.DBAPIError as exc:  # a blip of the database: try again at the next beat
                log.warning("lease %s: heartbeat failed (%s); trying again", self.name, type(exc).__name__)
