"""`notebench watch`, `tick`, `trigger` and `events`: the trigger service's subcommands."""

from __future__ import annotations

__all__ = ["add_commands"]


def cmd_watch(args) -> int:
    """Poll the trigger sources every interval and start training runs until Ctrl-C or SIGTERM; in an environment,
    start again in its new release once a deploy or rollback changes it (a run in progress finishes first)."""
    import sys

    from notebench.release import runtime
    from notebench.triggers.service import watch

    changed = runtime.follow(args.env)
    code = watch(interval=args.interval, lineage=not args.no_lineage, env=args.env)
    if changed.is_set():
        print(f"environment {args.env}: its release changed; the trigger service starts again in it", flush=True)
        return runtime.enter(args.env, sys.argv[1:])
    return code


def _sigterm_interrupts() -> None:
    """SIGTERM acts as Ctrl-C: a run in progress is recorded as interrupted and its events are queued again."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def cmd_tick(args) -> int:
    """One pass: poll the sources once, start one training run for everything queued; print what happened."""
    from notebench.triggers.service import tick

    _sigterm_interrupts()
    result = tick(run=not args.no_run, lineage=not args.no_lineage, env=args.env)
    for line in result.lines():
        print(line)
    return result.exit_code


def cmd_trigger(args) -> int:
    """Enqueue a trigger event by hand (on demand), then run a pass unless --no-run."""
    from notebench.errors import SettingsError
    from notebench.triggers.events import enqueue
    from notebench.triggers.service import resolve_pipeline, tick
    from notebench.workspace import Workspace

    ws = Workspace()
    spec = resolve_pipeline(ws, args.env)
    if args.pipeline not in (spec.name, str(spec.file), str(spec.folder)):
        raise SettingsError(f"triggers start pipeline '{spec.name}' ({spec.file}), not '{args.pipeline}'; "
                            f"run `notebench trigger {spec.name} ...`, or set [triggers] pipeline "
                            "(NOTEBENCH_TRIGGERS_PIPELINE)", key="triggers.pipeline")
    event = enqueue(ws, args.kind, args.reason, details={"pipeline": spec.name}, env=args.env)
    print(f"enqueued: {event.line()}")
    if args.no_run:
        return 0
    _sigterm_interrupts()
    result = tick(ws, lineage=not args.no_lineage, env=args.env)
    for line in result.lines():
        print(line)
    return result.exit_code


def cmd_events(args) -> int:
    """List recent trigger events, newest last."""
    from notebench.triggers.events import EventStore
    from notebench.workspace import Workspace

    with EventStore(Workspace(), args.env) as store:
        events = store.since(0, args.limit)
    if args.status:
        events = [e for e in events if e.status == args.status]
    if args.json:
        import dataclasses
        import json

        print(json.dumps([dataclasses.asdict(e) for e in events], indent=1, default=str))
        return 0
    if not events:
        print("no trigger events yet; `notebench trigger PIPELINE --reason ...` enqueues one")
    for e in events:
        print(e.line())
    return 0


_ENV_HELP = ("an environment (notebench environments): run the pipeline version deployed in it, with its own event "
            "queue, runs and lock (default: the project's)")


def add_commands(sub) -> None:
    """Add `watch`, `tick`, `trigger` and `events` to the `notebench` subcommands."""
    w = sub.add_parser("watch", help="the trigger service: poll schedule, new data, drift, quality; start training",
                       description="Every --interval seconds: poll each enabled trigger source ([triggers] kinds), "
                                   "then start one training run for all queued events unless one is in progress. "
                                   "The first Ctrl-C/SIGTERM lets a run in progress finish; a second interrupts it "
                                   "(recorded as interrupted; its events are queued again).")
    w.add_argument("--interval", type=float, help="seconds between passes ([triggers] interval)")
    w.add_argument("--no-lineage", action="store_true", help="do not record the runs it starts in MLflow")
    w.add_argument("--env", help=_ENV_HELP)
    w.set_defaults(func=cmd_watch)

    t = sub.add_parser("tick", help="one pass of the trigger service (for cron and CI)",
                       description="Poll every enabled trigger source once; start one training run for all queued "
                                   "events unless one is in progress. Exits 1 only if the run it started failed.")
    t.add_argument("--no-run", action="store_true", help="only poll the sources and enqueue; start nothing")
    t.add_argument("--no-lineage", action="store_true", help="do not record the run it starts in MLflow")
    t.add_argument("--env", help=_ENV_HELP)
    t.set_defaults(func=cmd_tick)

    g = sub.add_parser("trigger", help="enqueue a training trigger by hand (on demand), then run a pass")
    g.add_argument("pipeline", help="the pipeline triggers start ([triggers] pipeline, e.g. training)")
    g.add_argument("--reason", required=True, help="why, recorded on the event and the run")
    g.add_argument("--kind", default="on_demand", help="event kind (default: on_demand)")
    g.add_argument("--no-run", action="store_true", help="only enqueue; the next tick or watch pass starts it")
    g.add_argument("--no-lineage", action="store_true", help="do not record the run it starts in MLflow")
    g.add_argument("--env", help=_ENV_HELP)
    g.set_defaults(func=cmd_trigger)

    e = sub.add_parser("events", help="list recent trigger events and the runs they started")
    e.add_argument("-n", "--limit", type=int, default=30, help="how many (default: 30)")
    e.add_argument("--status", choices=["queued", "started", "coalesced", "skipped"], help="only these")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.add_argument("--env", help=_ENV_HELP)
    e.set_defaults(func=cmd_events)
