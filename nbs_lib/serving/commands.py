"""`notebench serve`: the prediction service's subcommand, registered with the `notebench` parser."""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `notebench serve` (and `python -m nbs_lib.serving`); unset ones take `[serving]` settings."""
    parser.add_argument("--host", help="address to bind ([serving] host, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port ([serving] port, default 8080)")
    parser.add_argument("--model-uri", help="serve this model (models:/NAME/VERSION, runs:/..., a path); not watched")
    parser.add_argument("--model-name", help="registered model ([registry] model_name)")
    parser.add_argument("--alias", help="alias to serve and watch ([serving] alias, default champion)")
    parser.add_argument("--watch-interval", type=float, help="seconds between alias checks; 0: only POST /reload")
    parser.add_argument("--shadow", help="alias that also predicts every request, logged, never returned")
    parser.add_argument("--flush-interval", type=float, help="seconds between prediction log flushes")
    parser.add_argument("--no-log", dest="log_predictions", action="store_false", default=None,
                        help="do not log predictions")
    parser.add_argument("--threads", type=int, help="OpenMP/BLAS threads per prediction ([serving] threads, 1)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default: info)")
    parser.add_argument("--access-log", action="store_true", help="log every request line")


def cmd_serve(args) -> int:
    """Serve the registry's champion until Ctrl-C or SIGTERM."""
    from .server import serve

    options = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    serve(**options)
    return 0


def add_commands(sub) -> None:
    """Add `serve` to the `notebench` subcommands."""
    s = sub.add_parser("serve", help="serve the registry's champion over HTTP, hot-swapping and logging predictions",
                       description="The prediction service: MLflow's /invocations formats, /predict by entity id, "
                                   "/feedback, /health, /ready, /metrics, /model; OpenAPI docs at /docs.")
    add_serve_arguments(s)
    s.set_defaults(func=cmd_serve)
