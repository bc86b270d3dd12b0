"""The state database's tables (SQLAlchemy Core, the same on SQLite and PostgreSQL) and its migrations.

| table | holds (written by) |
|---|---|
| `trigger_events`, `trigger_state` | the trigger queue (a `queue` per environment), its sources' state (triggers) |
| `monitoring_results`, `_windows`, `_cursors`, `_state`, `_passes` | verdicts per window, the watermark (monitor) |
| `pipeline_runs` | one record per pipeline run; the executed notebooks stay on disk (pipeline.store) |
| `leases` | "this is alive": renewed by a heartbeat, expired when its holder died (state.leases) |
| `locks` | who holds each named lock; the lock itself is flock or a PostgreSQL advisory lock (state.locks) |
| `champion_history` | every champion change of a registered model, in order (registry.models) |
| `schema_version` | the migrations applied (state.store) |

Migrations are a numbered list of functions, each applied once in its own transaction and recorded in
`schema_version`, under the state's migration lock so that two processes opening a new database do not both
apply them. Why not Alembic (which MLflow already installs): a handful of Core tables migrated forward only, at
open, from any process, on two dialects, fits in this file; Alembic would add a script folder, an `env.py` and a
configuration file to find at run time, for features (autogenerate, branches, downgrades) nothing here needs.
A migration that needs more than `create_all` (a new column, a copied table) is one more function in `MIGRATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

__all__ = ["MIGRATIONS", "VERSION", "metadata"]

metadata = sa.MetaData()
Text, Float, Int, Big = sa.Text, sa.Float, sa.Integer, sa.BigInteger

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", Int, primary_key=True, autoincrement=False),
    sa.Column("applied", Float, nullable=False),  # epoch seconds
    sa.Column("description", Text, nullable=False))

# triggers ----------------------------------------------------------------------------------------------------
trigger_events = sa.Table(
    "trigger_events", metadata,
    sa.Column("id", Int, primary_key=True, autoincrement=True),
    sa.Column("queue", sa.String(200), nullable=False, server_default=""),  # '' or the environment's name
    sa.Column("time", Float, nullable=False),  # when it was enqueued (epoch seconds, UTC)
    sa.Column("kind", sa.String(100), nullable=False),
    sa.Column("reason", Text, nullable=False),
    sa.Column("source", Text),
    sa.Column("details", Text, nullable=False, server_default="{}"),  # JSON: what the source saw
    sa.Column("status", sa.String(20), nullable=False, server_default="queued"),
    sa.Column("run_id", sa.String(100)),  # the pipeline run it started or was coalesced into
    sa.Column("coalesced_into", Int),
    sa.Column("note", Text),  # why it was skipped, requeued, ...
    sa.Column("key", sa.String(500)),  # unique per queue and kind when set: the condition it stands for
    sa.Column("updated", Float, nullable=False),
    sa.CheckConstraint("status IN ('queued', 'started', 'coalesced', 'skipped')", name="trigger_events_status"),
    sa.Index("trigger_events_key", "queue", "kind", "key", unique=True),  # NULL keys never collide (SQL's NULLs)
    sa.Index("trigger_events_status_ix", "queue", "status"))

trigger_state = sa.Table(
    "trigger_state", metadata,
    sa.Column("queue", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(500), primary_key=True),
    sa.Column("value", Text, nullable=False))  # JSON

# monitoring --------------------------------------------------------------------------------------------------
monitoring_results = sa.Table(
    "monitoring_results", metadata,
    sa.Column("id", Int, primary_key=True, autoincrement=True),  # insertion order within a window
    sa.Column("window_id", sa.String(300), nullable=False, index=True),
    sa.Column("window_start", Text), sa.Column("window_end", Text),
    sa.Column("model_name", Text), sa.Column("model_version", Text), sa.Column("rows", Int),
    sa.Column("check", sa.String(50), nullable=False),
    sa.Column("feature", Text, nullable=False, server_default=""),
    sa.Column("method", Text), sa.Column("statistic", Float), sa.Column("threshold", Float),
    sa.Column("alert", Int, nullable=False),
    sa.Column("details", Text), sa.Column("pass_id", Text), sa.Column("recorded_at", Text))

monitoring_windows = sa.Table(
    "monitoring_windows", metadata,
    sa.Column("seq", Int, primary_key=True, autoincrement=True),
    sa.Column("window_id", sa.String(300), unique=True, nullable=False),
    sa.Column("model_name", Text), sa.Column("model_version", Text),
    sa.Column("window_start", Text), sa.Column("window_end", Text), sa.Column("rows", Int),
    sa.Column("first_t", Big), sa.Column("first_request", Text), sa.Column("first_row", Int),  # t: epoch us
    sa.Column("last_t", Big), sa.Column("last_request", Text), sa.Column("last_row", Int),
    sa.Column("dataset_drift", Int), sa.Column("drifted", Text),
    sa.Column("labels", Int, nullable=False, server_default="0"),
    sa.Column("quality_done", Int, nullable=False, server_default="0"),
    sa.Column("pass_id", Text))

monitoring_cursors = sa.Table(  # the watermark: the last judged row of each model version
    "monitoring_cursors", metadata,
    sa.Column("model_name", sa.String(300), primary_key=True),
    sa.Column("model_version", sa.String(100), primary_key=True),
    sa.Column("last_t", Big), sa.Column("last_request", Text), sa.Column("last_row", Int))

monitoring_state = sa.Table(
    "monitoring_state", metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", Text))

monitoring_passes = sa.Table(
    "monitoring_passes", metadata,
    sa.Column("pass_id", sa.String(100), primary_key=True),
    sa.Column("started", Text), sa.Column("finished", Text), sa.Column("rows_read", Int),
    sa.Column("windows", Int), sa.Column("scored", Int), sa.Column("alerts", Int),
    sa.Column("mlflow_run_id", Text))

# pipeline runs -----------------------------------------------------------------------------------------------
pipeline_runs = sa.Table(
    "pipeline_runs", metadata,
    sa.Column("store", sa.String(300), primary_key=True),  # `<pipeline>` or `<pipeline>@<env>`
    sa.Column("run_id", sa.String(100), primary_key=True),
    sa.Column("pipeline", sa.String(300), nullable=False),
    sa.Column("env", sa.String(200)),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("started", Float), sa.Column("ended", Float),
    sa.Column("record", Text, nullable=False),  # the whole record as JSON
    sa.Column("updated", Float, nullable=False),
    sa.Index("pipeline_runs_started", "store", "started"))

# leases and locks ---------------------------------------------------------------------------------------------
leases = sa.Table(
    "leases", metadata,
    sa.Column("name", sa.String(500), primary_key=True),
    sa.Column("holder", Text, nullable=False),  # user@host pid
    sa.Column("token", sa.String(64), nullable=False),  # the holder's secret: only it renews or releases
    sa.Column("acquired", Float, nullable=False),
    sa.Column("expires", Float, nullable=False))  # the database's clock, epoch seconds

locks = sa.Table(
    "locks", metadata,
    sa.Column("name", sa.String(500), primary_key=True),
    sa.Column("holder", Text, nullable=False),
    sa.Column("since", Float, nullable=False))

# registry -----------------------------------------------------------------------------------------------------
champion_history = sa.Table(
    "champion_history", metadata,
    sa.Column("id", Int, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(500), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),  # promote | rollback | baseline
    sa.Column("version", sa.String(100)),
    sa.Column("event", Text, nullable=False),  # the whole event as JSON
    sa.Index("champion_history_model", "model", "id"))


# migrations -----------------------------------------------------------------------------------------------------
def _v1(conn: sa.Connection) -> None:
    """Every table of the first schema. (When a later migration changes a table, freeze that table's first form here,
    so that a new database still goes through every step.)"""
    metadata.create_all(conn, tables=[t for t in metadata.sorted_tables if t is not schema_version])


MIGRATIONS: list[tuple[int, str, Callable[[sa.Connection], None]]] = [
    (1, "trigger queue, monitoring results, run records, leases, locks, champion history", _v1),
]
VERSION = MIGRATIONS[-1][0]  # the schema this code reads and writes
