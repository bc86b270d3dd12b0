"""Optuna's study storage on `[training] study_storage`: SQLite in the workspace by default, PostgreSQL for a team.

Trials heartbeat into the storage every `[training] study_heartbeat` seconds; a trial whose process died (a
worker killed mid-trial) stops beating and, after twice that, the next trial of the study marks it FAIL, instead
of leaving it RUNNING forever. The storage prints as its URL with the credentials masked, so logging it (an MLflow
tag, a product) never writes a password down.
"""

from __future__ import annotations

import warnings

import optuna
import sqlalchemy as sa

from notebench.state.services import TrackingUnavailable
from notebench.state.uri import mask_uri, scheme, sqlalchemy_url

__all__ = ["StudyStorage", "study_storage", "study_storage_uri"]


class StudyStorage(optuna.storages.RDBStorage):
    """Optuna's `RDBStorage`, shown as its masked URL."""

    def __str__(self) -> str:
        return mask_uri(self.url)

    def __repr__(self) -> str:
        return f"StudyStorage({mask_uri(self.url)!r})"


def study_storage_uri(ws) -> str:
    """`[training] study_storage`, or SQLite in the workspace when it is empty."""
    return ws.settings.value("training", "study_storage") or f"sqlite:///{ws.ensure() / 'optuna.db'}"


def study_storage(workspace=None) -> StudyStorage:
    """The workspace's Optuna storage, with heartbeats; a clear error naming the URI when it cannot be reached."""
    from notebench.workspace import Workspace

    ws = Workspace.of(workspace)
    uri, beat = study_storage_uri(ws), ws.settings.value("training", "study_heartbeat")
    timeout = max(1, int(ws.settings.value("state", "connect_timeout")))
    engine = ({"connect_args": {"timeout": 60}} if scheme(uri) == "sqlite" else
              {"pool_pre_ping": True, "connect_args": {"connect_timeout": timeout}})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
            return StudyStorage(sqlalchemy_url(uri), engine_kwargs=engine, heartbeat_interval=beat or None,
                                grace_period=2 * beat if beat else None)
    except (sa.exc.DBAPIError, OSError) as exc:
        inner = getattr(exc, "orig", None) or exc
        raise TrackingUnavailable(uri, (str(inner).strip().splitlines() or [type(inner).__name__])[0],
                                  what="Optuna study storage", setting="[training] study_storage") from None
