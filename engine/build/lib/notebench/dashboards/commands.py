"""`notebench dashboards`: the Voila dashboards' subcommand, registered with the `notebench` parser."""

from __future__ import annotations

__all__ = ["add_commands"]


def cmd_dashboards(args) -> int:
    """Serve the dashboards until Ctrl-C or SIGTERM."""
    from notebench.dashboards.server import serve

    serve(host=args.host, port=args.port, open_browser=not args.no_browser, pool_size=args.pool_size)
    return 0


def add_commands(sub) -> None:
    """Add `dashboards` to the `notebench` subcommands."""
    d = sub.add_parser("dashboards", help="serve the Voila dashboards: overview, registry, pipelines, monitoring",
                       description="Voila on the dashboards/ folder with a landing page; kernels read this "
                                   "workspace (its MLflow stores, run records, prediction log, monitoring).")
    d.add_argument("--host", help="address to bind ([dashboards] host, default 127.0.0.1)")
    d.add_argument("--port", type=int, help="port ([dashboards] port, default 8866)")
    d.add_argument("--no-browser", action="store_true", help="do not open a browser")
    d.add_argument("--pool-size", type=int, default=1, metavar="N",
                   help="preheated kernels kept ready per dashboard (default: 1; 0: start one per page view)")
    d.set_defaults(func=cmd_dashboards)
