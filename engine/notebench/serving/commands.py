"""`notebench serve` and `notebench deploy-check`: the prediction service's subcommands."""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `notebench serve` (and `python -m notebench.serving`); unset ones take `[serving]` settings."""
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
    parser.add_argument("--workers", type=int, default=1, help="replicas of the service (processes on one socket, "
                        "metrics merged across them; default 1)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default: info)")
    parser.add_argument("--access-log", action="store_true", help="log every request line")


def cmd_serve(args) -> int:
    """Serve the registry's champion until Ctrl-C or SIGTERM."""
    from notebench.serving.server import serve

    options = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    serve(**options)
    return 0


def cmd_deploy_check(args) -> int:
    """Check a model version before it may serve: 0 passed, 1 failed (2: bad input, raised)."""
    from notebench.serving.deploycheck import deploy_check

    if args.version is not None and args.alias is not None:
        from notebench.errors import DeployCheckInputError

        raise DeployCheckInputError("give a VERSION or --alias, not both")
    report = deploy_check(version=args.version, alias=args.alias, requests=args.requests,
                          concurrency=args.concurrency, max_p99_ms=args.max_p99_ms, sample=args.sample,
                          out=lambda line: print(line, flush=True))
    if args.json:
        import json

        print(json.dumps(report, indent=1, default=str))
    return 0 if report["status"] == "passed" else 1


def add_commands(sub) -> None:
    """Add `serve` and `deploy-check` to the `notebench` subcommands."""
    s = sub.add_parser("serve", help="serve the registry's champion over HTTP, hot-swapping and logging predictions",
                       description="The prediction service: MLflow's /invocations formats, /predict by entity id, "
                                   "/feedback, /health, /ready, /metrics, /model, MLflow's /ping and /version; OpenAPI "
                                   "docs at /docs.")
    add_serve_arguments(s)
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("deploy-check", help="check a model version before it may serve: start it, compare its answers "
                                            "with the champion's, load-test it, record the verdict in MLflow",
                       description="Google's CD checks on a registered model version: it is started in a fresh "
                                   "process as production starts it, answers its input example and recorded requests "
                                   "in the champion's format, and survives a load test; QPS, p50/p99 and the "
                                   "verdict are recorded on the version (tags notebench.deploy_check.*). Exit 0 "
                                   "passed, 1 failed, 2 bad input. [gates] deploy_check = true makes promotion "
                                   "require a pass.")
    d.add_argument("version", nargs="?", help="model version number (default: the version --alias names)")
    d.add_argument("--alias", help="check the version this alias names (default: challenger)")
    d.add_argument("--requests", type=int, help="load-test requests ([serving] check_requests)")
    d.add_argument("--concurrency", type=int, help="load-test clients ([serving] check_concurrency)")
    d.add_argument("--max-p99-ms", type=float, help="fail above this p99 latency; 0: no limit "
                                                    "([serving] check_max_p99_ms)")
    d.add_argument("--sample", type=int, default=20, help="recorded requests to replay (default: 20)")
    d.add_argument("--json", action="store_true", help="also print the report as JSON")
    d.set_defaults(func=cmd_deploy_check)
