"""The prediction service: a FastAPI app serving the registry's champion, its prediction log and their readers.

    create_app(workspace=None, *, config=None, **options) -> FastAPI     the app (model loaded in its lifespan)
    serve(workspace=None, *, host=None, port=None, **options)           run it under uvicorn
    read_predictions(workspace=None, since=None, until=None, columns=None) -> DataFrame
    read_feedback(workspace=None, since=None, until=None) -> DataFrame

Importing this package is cheap and loads no numpy: `serve` limits native thread pools before anything that
reads those limits is imported, and the other names load their modules on first use.
"""

from __future__ import annotations

from notebench.serving.config import ServingConfig
from notebench.serving.server import serve

__all__ = ["ServingConfig", "create_app", "read_feedback", "read_predictions", "serve"]

_LAZY = {"create_app": "app", "read_predictions": "predlog", "read_feedback": "predlog"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
