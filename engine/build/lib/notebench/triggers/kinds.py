"""Trigger kinds: a registry of named sources, each polled once per pass of the trigger service.

A source is a function `source(poll) -> iterable of Found`; `poll` gives it the workspace, the event store, the
pipeline and the time of the pass. A `Found` with a `key` is recorded once per kind and key, so a condition
that holds across many passes (a due time, a set of unconsumed batches, a monitoring alert) is one event.
`register_kind(name, source, cooldown=...)` adds a kind; `cooldown=True` kinds (drift, quality) may not start
training within `[triggers] cooldown` seconds of the last run. A kind without a source is only enqueued by
hand (`notebench trigger`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from notebench.errors import NotebenchError, SettingsError

__all__ = ["KINDS", "Found", "Kind", "Poll", "SourceUnavailable", "check_kind", "register_kind"]


class SourceUnavailable(NotebenchError):
    """A trigger source cannot be polled in this workspace or build; the pass notes why and goes on."""


@dataclass
class Found:
    """What a source saw: one event to enqueue."""

    reason: str  # for people
    details: dict = field(default_factory=dict)  # what was seen, as JSON-able values
    key: str | None = None  # the condition it stands for; the same key is never enqueued twice for a kind


@dataclass
class Kind:
    """A registered trigger kind."""

    name: str
    source: Callable[[Poll], Iterable[Found]] | None  # None: enqueued by hand only
    cooldown: bool = False  # True: may not start training within [triggers] cooldown of the last run


KINDS: dict[str, Kind] = {}


def register_kind(name: str, source: Callable | None = None, *, cooldown: bool = False) -> None:
    """Make `name` a trigger kind, polled through `source` when `[triggers] kinds` enables it."""
    KINDS[name] = Kind(name, source, cooldown)


def check_kind(name: str) -> Kind:
    """The registered kind `name`, or an error (exit 2) listing the known ones."""
    if name not in KINDS:
        raise SettingsError(f"unknown trigger kind '{name}'; known kinds: {', '.join(KINDS)}", key="triggers.kinds",
                            expected="one of " + ", ".join(KINDS))
    return KINDS[name]


@dataclass
class Poll:
    """What a source may look at during one pass."""

    ws: object  # the Workspace
    store: object  # the EventStore
    spec: object  # the PipelineSpec triggers start
    now: float  # epoch seconds of this pass
    cache: dict = field(default_factory=dict)  # shared by the sources of one pass (the monitoring report)

    @property
    def settings(self) -> dict:
        return self.ws.settings["triggers"]

    def monitor_report(self):
        """The monitoring job's report for this pass, computed once for drift and quality alike."""
        if "monitor" not in self.cache:
            self.cache["monitor"] = _run_monitor(self.ws)
        outcome = self.cache["monitor"]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _run_monitor(ws):
    """`notebench.monitoring.monitor.monitor(ws)`, or the exception that explains why it cannot run."""
    try:
        from notebench.monitoring.monitor import monitor
    except ImportError as exc:
        return SourceUnavailable(f"notebench.monitoring.monitor is not in this build ({exc}); drift and quality "
                                 "are not polled")
    try:
        return monitor(ws)
    except NotebenchError as exc:
        return SourceUnavailable(f"monitoring could not run: {exc}")
    except Exception as exc:  # a bug in monitoring must not stop the other triggers; the note names it
        return SourceUnavailable(f"monitoring failed: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------------------
# schedule: a cron expression, fired once per due time


def _cron(expr: str):
    from croniter import croniter

    if not croniter.is_valid(expr):
        expected = "five fields, e.g. '0 3 * * *' (03:00 every day), in the machine's local time"
        raise SettingsError(f"[triggers] schedule = {expr!r} is not a cron expression; expected {expected}",
                            key="triggers.schedule", expected=expected)
    return croniter


def schedule_source(poll: Poll, max_events: int = 100) -> list[Found]:
    """One event per due time of `[triggers] schedule` since the last fire (the first pass only starts the clock)."""
    expr = (poll.settings["schedule"] or "").strip()
    if not expr:
        return []
    croniter = _cron(expr)
    clock = poll.store.state("schedule")
    if not clock or clock.get("cron") != expr:  # a new schedule counts from now: no backlog from before it existed
        poll.store.set_state("schedule", {"cron": expr, "since": poll.now})
        return []
    last = poll.store.last_of_kind("schedule")
    since = clock["since"]
    if last and last.details.get("cron") == expr:
        since = max(since, last.details.get("due_ts", since))
    it = croniter(expr, datetime.fromtimestamp(since).astimezone())
    due = []
    while (t := it.get_next(float)) <= poll.now:
        due.append(t)
    missed = max(0, len(due) - max_events)
    return [Found(f"scheduled ({expr}) at {_iso(t)}", {"cron": expr, "due": _iso(t), "due_ts": t,
                                                        "older_due_times_not_recorded": missed},
                  key=f"{expr}@{_iso(t)}") for t in due[missed:]]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------
# new_data: landing batches that no run of the pipeline has consumed yet


def consumed_ledger(ws, spec) -> dict | None:
    """The pipeline's ledger of consumed landing batches (the product named `ledger`), None if none yet."""
    from notebench.data.landing import read_ledger
    from notebench.pipeline.store import PipelineStore

    store = PipelineStore(ws.root, spec.name, env=spec.env)
    for step in spec.steps.values():
        if "ledger" in step.products:
            return read_ledger(store.product_dir(step.name) / step.products["ledger"]) or {"batches": {}}
    raise SourceUnavailable(f"pipeline '{spec.name}' ({spec.file}) has no step with a product named 'ledger', so "
                            "new_data cannot tell which landing batches were consumed")


def new_data_source(poll: Poll) -> list[Found]:
    """One event per distinct set of landing batches that no run consumed yet."""
    from notebench.data.landing import dataset_digest, scan

    taken = consumed_ledger(poll.ws, poll.spec)["batches"]
    batches = scan(poll.ws.landing)
    new = [n for n in batches if n not in taken]
    if not new:
        return []
    shown = ", ".join(new[:3]) + (f" and {len(new) - 3} more" if len(new) > 3 else "")
    return [Found(f"{len(new)} new landing batch(es): {shown}", {"batches": new[:200], "count": len(new)},
                  key=dataset_digest(batches, new))]


# ---------------------------------------------------------------------------------------------------------
# drift and quality: the monitoring job's alerts


def alert_source(kind: str) -> Callable[[Poll], list[Found]]:
    """A source that turns the monitoring report's alerts of `kind` into events, once per alert."""
    def source(poll: Poll) -> list[Found]:
        return [_alert_found(a) for a in getattr(poll.monitor_report(), "alerts", []) if a.kind == kind]

    source.__doc__ = f"Monitoring alerts of kind '{kind}'."
    return source


def _alert_found(alert) -> Found:
    """An alert as an event: its reason, where it was seen, and a key naming its model version, window and check."""
    seen = {"model_name": getattr(alert, "model_name", ""), "model_version": str(alert.model_version),
            "window_id": getattr(alert, "window_id", ""), "window_end": str(alert.window_end),
            "check": getattr(alert, "check", "")}
    window = seen["window_id"] or seen["window_end"]
    key = f"{seen['model_name']}:{seen['model_version']}|{window}|{seen['check']}|{alert.reason}"
    return Found(alert.reason, {**seen, **(alert.details or {})}, key=key)


register_kind("schedule", schedule_source)
register_kind("new_data", new_data_source)
register_kind("drift", alert_source("drift"), cooldown=True)
register_kind("quality", alert_source("quality"), cooldown=True)
register_kind("on_demand", None)
