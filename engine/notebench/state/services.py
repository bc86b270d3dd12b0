"""The other stores the engine talks to, checked before anything is written: MLflow's tracking server.

`check_tracking` asks the tracking (and registry) URI once per process: an `http(s)://` server must answer its
`/health` within `[state] connect_timeout`, a database URL (MLflow on PostgreSQL directly) must accept a
connection. Otherwise MLflow's client would retry with backoff for minutes before failing half-way through a run;
here the error comes within seconds, names the URI (credentials masked), and comes before the first write.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from notebench.errors import NotebenchError
from notebench.state.uri import mask_uri, redact, scheme, sqlalchemy_url

__all__ = ["TrackingUnavailable", "check_tracking", "check_uri"]

_CHECKED: set[str] = set()  # URIs that answered in this process
_CHECKED_LOCK = threading.Lock()


class TrackingUnavailable(NotebenchError):
    """The MLflow tracking or registry store cannot be reached; nothing was written."""

    def __init__(self, uri: str, reason: str, what: str = "MLflow tracking store", setting: str = "[tracking] uri"):
        self.uri = mask_uri(uri)  # the URI, without its credentials
        super().__init__(f"cannot reach the {what} {self.uri}: {redact(reason, uri)}\n  fix: start it or correct "
                         f"{setting}; nothing was written")


def check_tracking(workspace=None, timeout: float | None = None) -> None:
    """Raise `TrackingUnavailable` unless the workspace's tracking and registry stores answer within `timeout`."""
    from notebench.workspace import Workspace

    ws = Workspace.of(workspace)
    timeout = ws.settings.value("state", "connect_timeout") if timeout is None else timeout
    check_uri(ws.tracking_uri, timeout)
    if ws.registry_uri != ws.tracking_uri:
        check_uri(ws.registry_uri, timeout, what="MLflow registry store", setting="[registry] uri")


def check_uri(uri: str, timeout: float = 5, **labels) -> None:
    """Raise `TrackingUnavailable` unless `uri` (http(s) or a database URL) answers; other URIs pass."""
    with _CHECKED_LOCK:
        if uri in _CHECKED:
            return
    kind = scheme(uri)
    if kind in ("http", "https"):
        _check_http(uri, timeout, labels)
    elif kind in ("postgresql", "postgres", "mysql", "mssql"):
        _check_database(uri, timeout, labels)
    with _CHECKED_LOCK:
        _CHECKED.add(uri)


def _check_http(uri: str, timeout: float, labels: dict) -> None:
    parts = urlsplit(uri)
    bare = urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    try:
        with urllib.request.urlopen(bare.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError as exc:  # it answered: reachable (a 401 is a credentials problem, said later)
        if exc.code < 500:
            return
        reason = f"HTTP {exc.code} from /health"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise TrackingUnavailable(uri, f"{reason} (no answer within {timeout:g} s)", **labels)


def _check_database(uri: str, timeout: float, labels: dict) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(sqlalchemy_url(uri), connect_args={"connect_timeout": max(1, int(timeout))},
                              poolclass=sa.pool.NullPool)
    try:
        with engine.connect():
            return
    except (sa.exc.DBAPIError, OSError) as exc:
        inner = getattr(exc, "orig", None) or exc
        raise TrackingUnavailable(uri, (str(inner).strip().splitlines() or [type(inner).__name__])[0],
                                  **labels) from None
    finally:
        engine.dispose()

