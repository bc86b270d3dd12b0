"""Progress of a pipeline run: a live view in the terminal, an updating table in a notebook."""

from __future__ import annotations

import sys
import threading
import time

__all__ = ["NotebookProgress", "Progress", "TerminalProgress", "summary_rows"]

SYMBOLS = {"pending": "·", "queued": "…", "running": "▶", "retrying": "↻", "done": "✓", "cached": "≡",
           "failed": "✗"}


def summary_rows(record) -> list[tuple[str, str, str, str]]:
    """(step, state, duration, note) for each step of a run record."""
    rows = []
    for name, s in record["steps"].items():
        state = s.get("state", "pending")
        duration = f"{s['duration']:.1f} s" if s.get("duration") is not None else ""
        if state == "cached":
            note = f"cached from {s.get('cached_from') or 'an earlier run'}"
        elif state == "failed":
            note = s.get("error", "")
        else:
            note = "; ".join(s.get("reasons", []))
        rows.append((name, state, duration, note))
    return rows


class Progress:
    """Receives the run's events; the default does nothing."""

    def start(self, spec, run_id: str, steps: list[str]) -> None: ...
    def update(self, step: str, state: dict) -> None: ...
    def end(self, record) -> None: ...


class TerminalProgress(Progress):
    """One line per change of a step's state, then a summary table."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._t0 = time.time()

    def _say(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream, flush=True)

    def start(self, spec, run_id, steps):
        self._t0 = time.time()
        self._say(f"pipeline {spec.name} · run {run_id} · {len(steps)} step(s)")

    def update(self, step, state):
        s = state.get("state")
        if s in {"pending", "queued"}:
            return
        extra = ""
        if s == "running":
            extra = "  (" + "; ".join(state.get("reasons", [])) + ")"
        elif s in {"done", "failed"}:
            extra = f"  {state.get('duration', 0):.1f} s"
        elif s == "cached":
            extra = "  cached"
        if s == "failed":
            extra += f"  {state.get('error', '')}"
        if state.get("worker", "local") != "local" and s in {"running", "done", "failed"}:  # a step on another worker
            extra += f"  on {state['worker']}" + (f" ({state['kernel']} kernel)" if state.get("kernel") else "")
        self._say(f"[{time.time() - self._t0:6.1f}s] {SYMBOLS.get(s, '?')} {step:<16} {s}{extra}")

    def end(self, record):
        rows = summary_rows(record)
        width = max(len(r[0]) for r in rows) if rows else 4
        self._say("")
        for name, state, duration, note in rows:
            self._say(f"  {SYMBOLS.get(state, '?')} {name:<{width}}  {state:<8} {duration:>8}  {note}")
        total = (record.get("ended") or time.time()) - record["started"]
        self._say(f"\n{record['state']} in {total:.1f} s · run {record['run_id']}")


class NotebookProgress(Progress):
    """An HTML table in the notebook, updated in place as steps change state."""

    def __init__(self):
        from IPython.display import HTML, display

        self._html, self._handle = HTML, display(HTML("<i>starting…</i>"), display_id=True)
        self._record = None
        self._states: dict = {}

    def _render(self) -> None:
        rows = "".join(
            f"<tr><td>{SYMBOLS.get(s.get('state', 'pending'), '?')}</td><td>{n}</td><td>{s.get('state', '')}</td>"
            f"<td>{s['duration']:.1f} s</td></tr>" if s.get("duration") is not None else
            f"<tr><td>{SYMBOLS.get(s.get('state', 'pending'), '?')}</td><td>{n}</td><td>{s.get('state', '')}</td>"
            "<td></td></tr>" for n, s in self._states.items())
        self._handle.update(self._html(f"<table><tr><th></th><th>step</th><th>state</th><th>time</th></tr>{rows}"
                                       "</table>"))

    def start(self, spec, run_id, steps):
        self._states = {s: {"state": "pending"} for s in steps}
        self._render()

    def update(self, step, state):
        self._states[step] = dict(state)
        self._render()

    def end(self, record):
        self._states = dict(record["steps"])
        self._render()
