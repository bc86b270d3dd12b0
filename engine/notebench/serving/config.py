"""The prediction service's configuration: `[serving]` settings with defaults, and explicit overrides.

The defaults below match the settings schema's, so a `ServingConfig()` built without settings behaves as the
shipped settings.ini; `create_app(...)` and `serve(...)` keyword arguments override the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

__all__ = ["ServingConfig"]


@dataclass(frozen=True)
class ServingConfig:
    """Everything the service needs to know besides the workspace."""

    model_name: str = "notebench-model"  # registered model to serve ([registry] model_name)
    alias: str = "champion"  # its alias that names the version to serve
    model_uri: str | None = None  # serve this model instead (models:/name/version, runs:/..., a path); not watched
    host: str = "127.0.0.1"  # address to bind
    port: int = 8080
    watch_interval: float = 10.0  # seconds between checks of the alias; 0: only POST /reload checks
    shadow: str = ""  # an alias (e.g. challenger) that also predicts every request, logged, never returned
    log_predictions: bool = True  # write every prediction to <workspace>/predictions/
    flush_interval: float = 1.0  # seconds between prediction log flushes (the most a kill -9 loses)
    flush_rows: int = 10_000  # flush earlier when this many rows are buffered
    max_buffered_rows: int = 1_000_000  # beyond this (a stuck disk), log rows are dropped and counted
    max_body_bytes: int = 8 * 1024 * 1024  # larger request bodies get 413
    max_batch_rows: int = 256  # rows the micro-batcher puts in one model call (a larger request goes alone)
    large_workers: int = 2  # threads predicting requests of max_batch_rows rows or more side by side (0: queued)
    threads: int = 1  # OpenMP/BLAS threads for predictions
    token: str = field(default="", repr=False)  # bearer token required by /feedback and /reload; empty: none

    @classmethod
    def from_settings(cls, settings, **overrides) -> ServingConfig:
        """`[serving]` (and `[registry] model_name`) of `settings`, then `overrides` that are not None."""
        values = {}
        serving = settings.values.get("serving", {})
        for f in fields(cls):
            if f.name in serving:
                values[f.name] = serving[f.name].value
        registry = settings.values.get("registry", {})
        if "model_name" in registry:
            values["model_name"] = registry["model_name"].value
        config = cls(**values)
        return config.with_overrides(**overrides)

    def with_overrides(self, **overrides) -> ServingConfig:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown serving options {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})
