"""The trigger service: one pass (`tick`) polls every enabled source, then starts one training run for all
queued events; `watch` repeats passes until Ctrl-C or SIGTERM.

A pass reads as its steps: resolve the pipeline → requeue events of runs that died → poll the sources →
take the trigger lock (one pass starts runs at a time) → skip what may not start training (kinds not
enabled; drift and quality in their cooldown, unless another event starts a run anyway) → start one run whose
`trigger` names every queued event → record its run id on them (the first `started`, the rest `coalesced`).
A run in progress keeps the events queued for a later pass. A run interrupted by a signal is recorded as
`interrupted` and its events are queued again: no trigger is ever lost.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from notebench.errors import NotebenchError, PipelineBusy, SettingsError
from notebench.pipeline.progress import TerminalProgress
from notebench.triggers.events import Event, EventStore
from notebench.triggers.kinds import KINDS, Found, Poll, SourceUnavailable
from notebench.workspace import Workspace

__all__ = ["TickResult", "resolve_pipeline", "tick", "watch"]


def resolve_pipeline(ws, env: str | None = None):
    """The pipeline triggers start, from `[triggers] pipeline` (a name or a path): the one place that chooses it.
    With `env`, the version of it deployed in that environment (its runs, products and lock are the environment's)."""
    from dataclasses import replace

    from notebench.pipeline.runner import resolve

    spec, _ = resolve(str(ws.settings.value("triggers", "pipeline")), ws, env)
    return replace(spec, env=env)


@dataclass
class TickResult:
    """What one pass did."""

    pipeline: str
    enqueued: list[Event] = field(default_factory=list)  # events the sources found in this pass
    skipped: list[Event] = field(default_factory=list)  # events that may not start training (why: their note)
    requeued: list[str] = field(default_factory=list)  # runs that died; their events were queued again
    joined: list[Event] = field(default_factory=list)  # events recorded on the run this pass started
    run_id: str | None = None
    run_state: str | None = None  # succeeded, failed, interrupted
    waiting: str | None = None  # why queued events did not start a run in this pass
    notes: list[str] = field(default_factory=list)  # sources that could not be polled, and why
    error: str | None = None  # the run failed, or the pipeline could not start
    queued: int = 0  # events still queued after the pass

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (a busy pipeline is not a failure: the events wait), else 1."""
        return 1 if self.error else 0

    def lines(self) -> list[str]:
        """What happened, for people."""
        out = [f"note: {n}" for n in self.notes]
        out += [f"requeued: events of run {r} (it died before finishing)" for r in self.requeued]
        out += [f"enqueued: {e.line()}" for e in self.enqueued]
        out += [f"skipped:  {e.line()}" for e in self.skipped]
        if self.run_id:
            kinds = ", ".join(f"{k}×{n}" for k, n in Counter(e.kind for e in self.joined).items())
            out.append(f"run {self.run_id} of {self.pipeline}: {self.run_state} — {len(self.joined)} event(s) "
                       f"({kinds}): " + " ".join(f"#{e.id}" for e in self.joined))
        if self.error:
            out.append(f"error: {self.error}")
        if self.waiting:
            out.append(f"waiting: {self.waiting}")
        if not self.run_id and not self.waiting and self.queued:
            out.append(f"{self.queued} event(s) queued; a pass that may run (tick, watch) will start them")
        elif len(out) == len(self.notes):
            out.append(f"nothing to do for {self.pipeline}: no queued events")
        return out


def describe(events: list[Event], limit: int = 480) -> str:
    """The run's `trigger`: its kinds with counts, its event ids, and their distinct reasons."""
    kinds = "+".join(f"{k}×{n}" if n > 1 else k for k, n in Counter(e.kind for e in events).items())
    ids = f"#{events[0].id}" + (f"..#{events[-1].id}" if len(events) > 1 else "")
    text = f"{kinds} (events {ids}): " + "; ".join(dict.fromkeys(e.reason for e in events))
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------
# one pass


def tick(workspace=None, *, run: bool = True, lineage: bool = True, now: float | None = None, progress=None,
         may_start=None, env: str | None = None) -> TickResult:
    """Poll every enabled source once; then, unless a run is in progress, start one run for all queued events.

    `run=False` only polls; `lineage=False` does not record the run in MLflow; `now` is the pass's time (epoch
    seconds); `progress(store, ids)` makes the run's `_Recorder`; `may_start()` returning False keeps the queue;
    `env`: the environment whose deployed pipeline runs (its own event queue, runs and lock).
    """
    ws = Workspace.of(workspace)
    enabled = _enabled_kinds(ws)
    spec = resolve_pipeline(ws, env)
    result = TickResult(spec.name)
    with EventStore(ws, env) as store:
        result.requeued = _requeue_dead_runs(ws, spec, store)
        result.enqueued = poll(Poll(ws, store, spec, time.time() if now is None else now), enabled, result.notes)
        if run:
            _start(ws, spec, store, enabled, result, progress, may_start, lineage)
        result.queued = len(store.queued())
    return result


def _enabled_kinds(ws) -> list[str]:
    kinds = ws.settings.value("triggers", "kinds")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SettingsError(f"[triggers] kinds names unknown kind(s) {', '.join(unknown)}", key="triggers.kinds",
                            expected="a comma-separated subset of " + ", ".join(KINDS))
    return kinds


def poll(p: Poll, enabled: list[str], notes: list[str]) -> list[Event]:
    """Ask each enabled kind's source what it sees; enqueue what was not recorded before."""
    out, unavailable = [], {}
    for name in enabled:
        kind = KINDS[name]
        if kind.source is None:
            continue
        try:
            found: list[Found] = list(kind.source(p))
        except SourceUnavailable as exc:
            unavailable.setdefault(str(exc), []).append(name)
            continue
        for f in found:
            event = p.store.add(name, f.reason, details=f.details, source=f"source:{name}", key=f.key)
            if event:
                out.append(event)
    notes += [f"{', '.join(kinds)}: {why}" for why, kinds in unavailable.items()]
    return out


def _requeue_dead_runs(ws, spec, store: EventStore) -> list[str]:
    """Queue again the events of recent runs whose process died before it finished them."""
    from notebench.pipeline.store import PipelineStore

    runs = PipelineStore(ws.root, spec.name, env=spec.env)
    out = []
    for run_id in store.started_runs():
        record = runs.record(run_id)
        if record is not None and record.get("state") in ("killed", "interrupted"):
            if store.requeue(run_id, f"run {run_id} did not finish; queued again"):
                out.append(run_id)
    return out


def _trigger_lock(ws, spec):
    """Held by the pass that chooses events and starts their run, so two passes (on any machine sharing the state
    database) never start two runs: one lock per pipeline state (`<pipeline>` or `<pipeline>@<env>`)."""
    from notebench.pipeline.store import store_name
    from notebench.state.store import open_state

    return open_state(ws).lock(f"triggers:{store_name(spec.name, spec.env)}")


def _start(ws, spec, store: EventStore, enabled: list[str], result: TickResult, progress, may_start,
           lineage: bool) -> None:
    lock = _trigger_lock(ws, spec)
    if not lock.acquire(wait=0):
        if store.queued():
            result.waiting = "another pass (tick or watch) is starting or running a training run; events stay queued"
        return
    try:
        queued = _skip_disabled(store, store.queued(), enabled, result)
        if not queued:
            return
        busy = _run_in_progress(ws, spec)
        if busy:
            result.waiting = f"run {busy} of {spec.name} is in progress; {len(queued)} event(s) stay queued"
            return
        queued = _skip_cooling(ws, spec, store, queued, result)
        if not queued:
            return
        if may_start and not may_start():
            result.waiting = f"stopping: {len(queued)} event(s) stay queued for the next pass"
            return
        _run(ws, spec, store, queued, result, progress, lineage)
    finally:
        lock.release()


def _skip_disabled(store: EventStore, queued: list[Event], enabled: list[str], result: TickResult) -> list[Event]:
    for kind in {e.kind for e in queued} - set(enabled):
        ids = [e.id for e in queued if e.kind == kind]
        store.settle(ids, "skipped", note=f"disabled: '{kind}' is not in [triggers] kinds")
        result.skipped += [store.get(i) for i in ids]
    return [e for e in queued if e.kind in enabled]


def _run_in_progress(ws, spec) -> str | None:
    from notebench.pipeline.store import PipelineStore

    runs = PipelineStore(ws.root, spec.name, env=spec.env).runs()
    return runs[0]["run_id"] if runs and runs[0].get("state") == "running" else None


def _skip_cooling(ws, spec, store: EventStore, queued: list[Event], result: TickResult) -> list[Event]:
    """Skip cooldown kinds (drift, quality) within the cooldown, unless another event starts a run anyway."""
    if any(not KINDS[e.kind].cooldown for e in queued):
        return queued
    until = cooldown_until(ws, spec)
    if until is None or until <= time.time():
        return queued
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))
    ids = [e.id for e in queued]
    store.settle(ids, "skipped", note=f"cooldown: the last run of {spec.name} was less than "
                                      f"{ws.settings.value('triggers', 'cooldown')} s ago; drift and quality may "
                                      f"start training again after {when}")
    result.skipped += [store.get(i) for i in ids]
    return []


def cooldown_until(ws, spec) -> float | None:
    """When drift and quality may start training again: `[triggers] cooldown` after the last run ended."""
    from notebench.pipeline.store import PipelineStore

    runs = PipelineStore(ws.root, spec.name, env=spec.env).runs()
    if not runs:
        return None
    last = runs[0]
    return (last.get("ended") or last.get("started") or 0) + ws.settings.value("triggers", "cooldown")


class _Recorder(TerminalProgress):
    """The run's progress: records its run id on the events the moment the run exists, then shows the steps."""

    def __init__(self, store: EventStore, ids: list[int], stream=None):
        super().__init__(stream)
        self.store, self.ids, self.run_id = store, ids, None

    def start(self, spec, run_id, steps):
        self.run_id = run_id
        self.store.start(self.ids, run_id)
        super().start(spec, run_id, steps)


def _run(ws, spec, store: EventStore, queued: list[Event], result: TickResult, progress, lineage: bool) -> None:
    """Start one run for `queued`; record its id on them; an interrupted run is recorded and its events requeued."""
    from notebench.pipeline.runner import RunOptions, run_pipeline

    ids = [e.id for e in queued]
    recorder = progress(store, ids) if progress else _Recorder(store, ids)
    options = RunOptions(trigger=describe(queued), lineage=lineage, env=spec.env)
    try:
        record = run_pipeline(spec.name if spec.env else spec.file, options, progress=recorder, workspace=ws)
        result.run_state = record["state"]
    except PipelineBusy as exc:
        result.waiting = f"{exc}; {len(queued)} event(s) stay queued"
    except (KeyboardInterrupt, SystemExit):
        result.run_state = "interrupted"
        _record_interrupted(ws, spec, store, recorder.run_id)
        raise
    except Exception as exc:  # a failed step, a bad spec, or a bug: a started run failed (final, not retried)
        what = str(exc) if isinstance(exc, NotebenchError) else f"{type(exc).__name__}: {exc}"
        result.run_state = "failed" if recorder.run_id else None
        result.error = what if recorder.run_id else f"the run could not start: {what}"
    finally:
        result.run_id = recorder.run_id
        if recorder.run_id:
            result.joined = [store.get(e.id) for e in queued]


def _record_interrupted(ws, spec, store: EventStore, run_id: str | None) -> None:
    """Mark the interrupted run (this process's, if its id was not known yet) `interrupted`; requeue its events."""
    from notebench.pipeline.store import PipelineStore

    for record in PipelineStore(ws.root, spec.name, env=spec.env).runs()[:5]:
        if record["run_id"] == run_id or (run_id is None and record.get("pid") == os.getpid()
                                          and record.get("state") == "running"):
            if record.get("state") == "running":  # the runner records it itself once its steps began
                record.update(state="interrupted", ended=time.time(),
                              error="interrupted by a signal; its trigger events were queued again")
                record.save()
            store.requeue(record["run_id"], f"run {record['run_id']} was interrupted; queued again")


# ---------------------------------------------------------------------------------------------------------
# watch: passes until a signal


class _Stopper:
    """SIGINT/SIGTERM: the first stops after the current pass (a run in progress finishes), a second interrupts."""

    def __init__(self, say):
        self.say, self.stopping, self.in_run = say, threading.Event(), False
        self._previous = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def may_start(self) -> bool:
        """Asked just before a run starts: False once stopping; else from here on a signal meets a run."""
        self.in_run = not self.stopping.is_set()
        return self.in_run

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stopping.is_set() and self.in_run:
            self._say(f"{name} again: interrupting the run: steps running now finish, no other step starts; the run "
                     "is recorded as interrupted and its events are queued again")
            raise KeyboardInterrupt
        self.stopping.set()
        self._say(f"{name}: finishing the run in progress, then stopping (send it again to interrupt the run)"
                  if self.in_run else f"{name}: stopping; queued events stay queued")

    def _say(self, text: str) -> None:
        try:
            self.say(text)
        except RuntimeError:  # the signal landed while the main thread was writing to the same stream
            pass


def watch(workspace=None, interval: float | None = None, *, lineage: bool = True, out=None,
          passes: int | None = None, env: str | None = None) -> int:
    """Run passes every `interval` seconds (`[triggers] interval`) until SIGINT/SIGTERM; print events and runs."""
    ws = Workspace.of(workspace)
    say = out or (lambda text: print(time.strftime("%H:%M:%S"), text, flush=True))
    interval = interval or ws.settings.value("triggers", "interval")
    spec = resolve_pipeline(ws, env)
    stopper = _Stopper(say)
    stopper.install()
    where = f" in environment {env}" if env else ""
    say(f"watching for triggers of {spec.name}{where} ({spec.file}) every {interval:g} s; kinds: "
        f"{', '.join(_enabled_kinds(ws))}; Ctrl-C or SIGTERM stops")
    seen, done = {"said": []}, 0
    printer = _EventPrinter(ws, say, min(interval, 1.0), env)
    try:
        while not stopper.stopping.is_set() and (passes is None or done < passes):
            _watch_pass(ws, lineage, say, stopper, seen, env)
            done += 1
            if passes is None or done < passes:
                stopper.stopping.wait(interval)
    finally:
        printer.stop()
        stopper.restore()
    say("stopped")
    return 0


class _EventPrinter(threading.Thread):
    """Prints every event as it is enqueued or settled, also while a run keeps the passes busy."""

    def __init__(self, ws, say, every: float, env: str | None = None):
        super().__init__(name="notebench-events", daemon=True)
        self.ws, self.say, self.every, self.env = ws, say, every, env
        self.done, self.mark = threading.Event(), time.time()
        self.start()

    def run(self) -> None:
        with EventStore(self.ws, self.env) as store:
            while not self.done.wait(self.every):
                self._print(store)
            self._print(store)

    def _print(self, store: EventStore) -> None:
        for e in store.changed_since(self.mark):
            self.say(e.line())
            self.mark = max(self.mark, e.updated)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


def _watch_pass(ws, lineage: bool, say, stopper: _Stopper, seen: dict, env: str | None = None) -> None:
    """One pass of `watch`: tick, then print changed events, the run, and notes or waits not said just before."""
    try:
        result = tick(ws, lineage=lineage, progress=_watch_recorder(say), may_start=stopper.may_start, env=env)
    except NotebenchError as exc:  # e.g. the pipeline's spec is being edited: say so, try again next pass
        say(f"error: {exc}")
        return
    finally:
        stopper.in_run = False
    if result.run_id:
        say(f"run {result.run_id} {result.run_state}" + (f": {result.error}" if result.error else ""))
    said = [f"note: {n}" for n in result.notes] + [x for x in (result.error, result.waiting) if x and not result.run_id]
    for line in said:
        if line not in seen["said"]:
            say(line)
    seen["said"] = said


def _watch_recorder(say):
    """A progress factory whose recorder also says when the run starts and for which events."""
    def make(store, ids):
        class WatchRecorder(_Recorder):
            def start(self, spec, run_id, steps):
                super().start(spec, run_id, steps)
                say(f"run {run_id} of {spec.name} started for event(s) {', '.join(f'#{i}' for i in ids)}")

        return WatchRecorder(store, ids, stream=sys.stderr)

    return make
