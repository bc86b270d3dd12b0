"""The state database: one SQLAlchemy engine per `[state] uri`, its transactions, its clock, and its migrations.

`[state] uri` is SQLite in the workspace by default (`sqlite:///<workspace>/state.db`) and a PostgreSQL URL for a
team (`postgresql://nb@db-host/notebench`; the psycopg driver is implied). Opening the state connects once, with
`[state] connect_timeout`, so a server that cannot be reached is a `StateUnavailable` error naming the URI (masked)
before anything is written anywhere, then applies the migrations the database lacks.

Writes go through `State.write()`: one transaction, rolled back on any exception. On SQLite it begins with
`BEGIN IMMEDIATE` (one writer at a time; readers go on, WAL); on PostgreSQL `write(serial=NAME)` also takes a
transaction-level advisory lock, so that writers of one table (the trigger queue) commit in the order they began.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from notebench.errors import NotebenchError, SettingsError
from notebench.state import schema
from notebench.state.uri import mask_uri, redact, scheme, sqlalchemy_url

__all__ = ["LockBusy", "State", "StateError", "StateUnavailable", "advisory_key", "holder_name", "open_state",
           "state_uri"]

SUPPORTED = ("sqlite", "postgresql")


class StateError(NotebenchError):
    """The state database cannot do what was asked; names its URI (masked)."""


class StateUnavailable(StateError):
    """The state database cannot be reached or opened; nothing was written."""

    def __init__(self, uri: str, reason: str):
        self.uri = mask_uri(uri)  # the URI, without its credentials
        super().__init__(f"cannot reach the state database {self.uri}: {redact(reason, uri)}\n"
                         "  fix: start the server or correct [state] uri (NOTEBENCH_STATE_URI); nothing was written")


class LockBusy(StateError):
    """A named lock is held by someone else longer than the caller would wait; `holder` says who (when recorded)."""

    exit_code = 3

    def __init__(self, name: str, holder: str | None):
        self.name, self.holder = name, holder  # the lock's name, and its holder as it recorded itself
        super().__init__(f"lock '{name}' is held by {holder or 'another process'}")


def holder_name(detail: str = "") -> str:
    """`user@host pid N`, and `detail`: who holds a lock or a lease, for people."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}" + (f" {detail}" if detail else "")


def advisory_key(name: str) -> int:
    """A PostgreSQL advisory lock key (signed 64 bits) for a lock name."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def state_uri(ws) -> str:
    """`[state] uri`, or SQLite in the workspace when it is empty."""
    return ws.settings.value("state", "uri") or f"sqlite:///{ws.ensure() / 'state.db'}"


class State:
    """The state database at one URI: engine, transactions, the database's clock, named locks and leases."""

    def __init__(self, uri: str, *, connect_timeout: float = 5, lease_ttl: float = 30):
        self.uri = uri  # as configured; never shown: `shown` is
        self.shown = mask_uri(uri)  # the URI without its credentials, for messages
        self.lease_ttl = lease_ttl  # seconds a lease lives without a heartbeat
        self.dialect = scheme(uri)
        if self.dialect not in SUPPORTED:
            raise SettingsError(f"[state] uri {self.shown}: expected a sqlite:/// or postgresql:// URL",
                                key="state.uri", expected="sqlite:///PATH or postgresql://USER@HOST/DB")
        self.path = self._sqlite_path() if self.dialect == "sqlite" else None  # the SQLite file
        self.engine = self._engine(connect_timeout)
        self._lock = threading.Lock()

    # engine ----------------------------------------------------------------------------------------------
    def _sqlite_path(self) -> Path:
        database = sa.engine.make_url(self.uri).database
        if not database or database == ":memory:":
            raise SettingsError(f"[state] uri {self.shown}: SQLite state needs a file (sqlite:////abs/path/state.db)",
                                key="state.uri", expected="sqlite:///PATH")
        path = Path(database).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _engine(self, connect_timeout: float) -> sa.Engine:
        if self.dialect == "sqlite":
            engine = sa.create_engine(f"sqlite:///{self.path}",
                                      connect_args={"timeout": 60, "check_same_thread": False})
            sa.event.listen(engine, "connect", _sqlite_connect)
            sa.event.listen(engine, "begin", _sqlite_begin)
            return engine
        return sa.create_engine(sqlalchemy_url(self.uri), pool_pre_ping=True, pool_size=5, max_overflow=20,
                                connect_args={"connect_timeout": max(1, int(connect_timeout))})

    def open(self) -> State:
        """Connect once (a clear `StateUnavailable` when that fails), then migrate the schema; return self."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except (sa.exc.DBAPIError, OSError) as exc:
            raise StateUnavailable(self.uri, _reason(exc)) from None
        self.migrate()
        return self

    def dispose(self) -> None:
        self.engine.dispose()

    # transactions ----------------------------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read transaction."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, serial: str | None = None) -> Iterator[sa.Connection]:
        """A write transaction: committed at the end, rolled back on any exception. `serial` names a queue of
        writers that commit in the order they began (SQLite's writers always do)."""
        with self.engine.connect().execution_options(notebench_write=True) as conn, conn.begin():
            if serial and self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": advisory_key(f"serial:{serial}")})
            yield conn

    def now_sql(self) -> str:
        """SQL for the database's clock in epoch seconds: every lease compares against one clock."""
        if self.dialect == "sqlite":
            return "((julianday('now') - 2440587.5) * 86400.0)"
        return "CAST(extract(epoch FROM clock_timestamp()) AS double precision)"

    def now(self, conn: sa.Connection | None = None) -> float:
        """The database's clock, in epoch seconds."""
        if conn is not None:
            return float(conn.execute(sa.text(f"SELECT {self.now_sql()}")).scalar_one())
        with self.read() as c:
            return self.now(c)

    def upsert(self, conn: sa.Connection, table: sa.Table, rows: list[dict] | dict, keys: list[str]) -> None:
        """Insert `rows`, or update the existing row with the same `keys`."""
        rows = [rows] if isinstance(rows, dict) else rows
        if not rows:
            return
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(table)
        updated = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_=updated) if updated else \
            stmt.on_conflict_do_nothing(index_elements=keys)
        conn.execute(stmt, rows)

    def insert_ignore(self, conn: sa.Connection, table: sa.Table, row: dict, returning: str | None = None):
        """Insert `row` unless it breaks a unique constraint; the value of column `returning` (None: not inserted)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(table).values(**row).on_conflict_do_nothing()
        if returning:
            return conn.execute(stmt.returning(table.c[returning])).scalar_one_or_none()
        conn.execute(stmt)
        return None

    # migrations ------------------------------------------------------------------------------------------
    def version(self) -> int:
        """The newest migration applied (0: a new database)."""
        with self.read() as conn:
            if not sa.inspect(conn).has_table("schema_version"):
                return 0
            return int(conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar() or 0)

    def migrate(self) -> list[int]:
        """Apply the migrations this database lacks, under the migration lock; return their numbers."""
        if self.version() == schema.VERSION:
            return []
        from notebench.state.locks import Lock

        with Lock(self, "state:migrate", record=False).held(wait=120):
            current = self.version()
            if current > schema.VERSION:
                raise StateError(f"the state database {self.shown} has schema version {current}, newer than this "
                                 f"notebench knows ({schema.VERSION}): upgrade notebench")
            applied = []
            for number, description, step in schema.MIGRATIONS:
                if number <= current:
                    continue
                with self.write() as conn:
                    schema.schema_version.create(conn, checkfirst=True)
                    step(conn)
                    conn.execute(schema.schema_version.insert().values(version=number, applied=time.time(),
                                                                       description=description))
                applied.append(number)
            return applied

    # locks and leases ------------------------------------------------------------------------------------
    def lock(self, name: str, holder: str | None = None):
        """The named lock (flock beside a SQLite state, a PostgreSQL advisory lock otherwise): `with
        state.lock(name).held(wait=10):` or `acquire(wait)` / `release()`."""
        from notebench.state.locks import Lock

        return Lock(self, name, holder)

    def lease(self, name: str, ttl: float | None = None, holder: str | None = None):
        """Take the lease `name` and keep it alive with a heartbeat thread until `release()` (`Lease`)."""
        from notebench.state.leases import Lease

        return Lease(self, name, ttl or self.lease_ttl, holder).acquire()

    def alive(self, name: str) -> bool:
        """True while the lease `name` is held and renewed."""
        return name in self.alive_leases(name)

    def alive_leases(self, prefix: str) -> set[str]:
        """Names of the live leases that start with `prefix`."""
        t = schema.leases
        with self.read() as conn:
            rows = conn.execute(sa.select(t.c.name).where(t.c.name.startswith(prefix, autoescape=True),
                                                          t.c.expires > sa.text(self.now_sql())))
            return {r[0] for r in rows}


def _sqlite_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's begin event emits BEGIN, deferred or immediate
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers go on while one writer writes
    cur.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives a power cut
    cur.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    write = conn.get_execution_options().get("notebench_write")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _reason(exc: BaseException) -> str:
    """The first line of a driver's error, without SQLAlchemy's background link."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return text[0] if text else type(inner).__name__


# one State per URI per process -----------------------------------------------------------------------------------
_OPEN: dict[str, State] = {}
_OPEN_LOCK = threading.Lock()


def open_state(workspace=None) -> State:
    """The state of a workspace (a `Workspace`, `Settings`, folder or None: the settings'), opened and migrated."""
    from notebench.workspace import Workspace

    ws = Workspace.of(workspace)
    uri = state_uri(ws)
    with _OPEN_LOCK:
        state = _OPEN.get(uri)
        if state is None:
            settings = ws.settings
            state = State(uri, connect_timeout=settings.value("state", "connect_timeout"),
                          lease_ttl=settings.value("state", "lease_ttl")).open()
            _OPEN[uri] = state
        return state


def _after_fork() -> None:
    """A forked child must not use its parent's connections: drop them from the pools without closing them."""
    for state in list(_OPEN.values()):
        state.engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
