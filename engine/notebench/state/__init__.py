"""The engine's own state, behind one URI: the trigger queue, monitoring results and watermark, pipeline run
records, leases, locks and the champion history, on SQLAlchemy (`[state] uri`: SQLite in the workspace by
default, PostgreSQL for a team); and the other stores' URIs (MLflow, Optuna, Feast) shown without credentials.

    open_state(workspace=None) -> State        the workspace's state database, opened and migrated
    state.write() / state.read()               transactions
    state.lock(name).held(wait=10)             the one inter-process lock: flock locally, advisory on PostgreSQL
    state.lease(name) -> Lease; state.alive(name)   "still alive" as a lease renewed by a heartbeat
    mask_uri(uri)                              a URI as it may be shown: credentials replaced by ***
    study_storage(workspace=None)              Optuna's storage on `[training] study_storage`, with heartbeats
    check_tracking(workspace=None)             the MLflow tracking server answers, or a clear error within seconds

Importing this package is cheap; SQLAlchemy loads with the first name that needs it.
"""

from __future__ import annotations

__all__ = ["Lease", "LeaseHeld", "Lock", "LockBusy", "State", "StateError", "StateUnavailable", "TrackingUnavailable",
           "check_tracking", "mask_uri", "open_state", "study_storage"]

_LAZY = {"State": "store", "StateError": "store", "StateUnavailable": "store", "LockBusy": "store",
         "open_state": "store", "Lock": "locks", "Lease": "leases", "LeaseHeld": "leases", "mask_uri": "uri",
         "study_storage": "studies", "check_tracking": "services", "TrackingUnavailable": "services"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
