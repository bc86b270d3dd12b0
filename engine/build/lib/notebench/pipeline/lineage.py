"""Lineage in MLflow, written by a sidecar process so that the runner never waits for `import mlflow`.

The runner starts `python -m notebench.pipeline.lineage` at the beginning of a run and sends it one JSON line per event
(pipeline started, step started, step ended, pipeline ended). The sidecar imports MLflow while the first steps
start, creates a parent run per pipeline run and a child run per step, logs tags, parameters, metrics, the
executed notebooks (ipynb and HTML) and pointers to every product. It publishes each MLflow run id as a file in
the run's folder (`publish_id`), where a step notebook that logs into its own child run finds it; the runner
never waits for one, and the sidecar runs at a lower CPU priority: on a small machine the kernels and the
runner come first, and lineage catches up when a core is free. At the end of a run the runner does not wait
(unless asked to): the sidecar finishes its last writes on its own and then writes `lineage.json` in the run's
folder, which is how `notebench show` and tests know the record is complete. If the runner dies, the sidecar
sees its input close and ends the pipeline run as FAILED, saying so.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["LineageClient", "await_id", "now_ms", "publish_id", "published_id"]


_NICENESS = 10  # the sidecar's CPU priority below the runner's and the kernels'


def now_ms() -> int:
    return int(time.time() * 1000)


def _id_file(run_dir: Path, key: str) -> Path:
    return run_dir / "mlflow_ids" / key.replace(":", "-")


def publish_id(run_dir: Path, key: str, run_id: str) -> None:
    """Make an MLflow run id readable by a step's kernel without asking the runner."""
    path = _id_file(run_dir, key)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(run_id)
    os.replace(tmp, path)


def published_id(run_dir: Path, key: str) -> str | None:
    """The MLflow run id of `key` if the sidecar has published it, without waiting."""
    try:
        return _id_file(Path(run_dir), key).read_text().strip() or None
    except OSError:
        return None


def await_id(run_dir: Path, key: str, timeout: float = 120) -> str | None:
    """The MLflow run id of `key` once the sidecar has created it (None after `timeout` seconds)."""
    deadline = time.time() + timeout
    while (run_id := published_id(run_dir, key)) is None and time.time() < deadline:
        time.sleep(0.05)
    return run_id


class LineageClient:
    """The runner's end: send events, then wait for (or detach from) the sidecar."""

    def __init__(self, run_dir: Path, setup: dict):
        log = open(run_dir / "lineage.log", "ab")
        self._proc = subprocess.Popen([sys.executable, "-m", "notebench.pipeline.lineage"], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        self._lock = threading.Lock()
        self.send({"op": "setup", **setup})

    def send(self, event: dict) -> None:
        """Queue an event; never blocks on MLflow."""
        with self._lock:
            self._proc.stdin.write((json.dumps(event, default=str) + "\n").encode())
            self._proc.stdin.flush()

    def close(self, wait: bool = True, timeout: float = 300) -> int | None:
        """End the conversation; wait for the sidecar to finish writing unless `wait` is False."""
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        if not wait:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


# ---------------------------------------------------------------------------------------------------------
# the sidecar


class _Recorder:
    def __init__(self):
        self.client = None
        self.ids: dict[str, str] = {}
        self.setup: dict = {}
        self.ended = False
        self.failed: set[str] = set()  # keys whose run could not be created

    def failed_start(self, key: str) -> bool:
        return key in self.failed

    _client_lock = threading.Lock()

    def _client(self):
        with self._client_lock:
            return self._make_client()

    def _make_client(self):
        if self.client is None:
            import mlflow
            from mlflow import MlflowClient

            mlflow.set_tracking_uri(self.setup["tracking_uri"])
            self.client = MlflowClient(self.setup["tracking_uri"], self.setup.get("registry_uri"))
        return self.client

    def _experiment(self) -> str:
        client = self._client()
        found = client.get_experiment_by_name(self.setup["experiment"])
        if found:
            return found.experiment_id
        return client.create_experiment(self.setup["experiment"], artifact_location=self.setup["artifact_location"])

    def op_setup(self, e):
        self.setup = e

    def op_start(self, e):
        client = self._client()
        tags = {k: str(v) for k, v in (e.get("tags") or {}).items()}
        if e["key"] != "pipeline":
            tags["mlflow.parentRunId"] = self.ids["pipeline"]
        run = client.create_run(self._experiment(), start_time=e.get("start_ms"), tags=tags, run_name=e.get("name"))
        self.ids[e["key"]] = run.info.run_id
        publish_id(Path(self.setup["run_dir"]), e["key"], run.info.run_id)
        for name, value in (e.get("params") or {}).items():
            client.log_param(run.info.run_id, name, json.dumps(value, default=str)[:6000]
                             if not isinstance(value, str) else value[:6000])

    def op_end(self, e):
        client = self._client()
        run_id = self.ids[e["key"]]
        for name, value in (e.get("tags") or {}).items():
            client.set_tag(run_id, name, str(value)[:5000])
        for name, value in (e.get("metrics") or {}).items():
            try:
                client.log_metric(run_id, name, float(value))
            except (TypeError, ValueError):
                continue
        if e.get("products"):
            client.log_dict(run_id, e["products"], "products.json")
        for notebook in e.get("notebooks") or []:
            path = Path(notebook)
            if path.is_file():
                client.log_artifact(run_id, str(path), "notebook")
                html = _to_html(path)
                if html:
                    client.log_artifact(run_id, str(html), "notebook")
        for artifact in e.get("artifacts") or []:
            if Path(artifact).exists():
                client.log_artifact(run_id, artifact, "products")
        client.set_terminated(run_id, e.get("status", "FINISHED"), end_time=e.get("end_ms"))
        if e["key"] == "pipeline":
            self.ended = True
            record = Path(self.setup["run_dir"]) / "lineage.json"
            record.write_text(json.dumps({"mlflow_runs": self.ids, "status": e.get("status")}, indent=1))

    def finish(self):
        """Input closed: end the pipeline run if the runner did not (it died)."""
        if not self.ended and "pipeline" in self.ids:
            self.op_end({"key": "pipeline", "status": "FAILED", "end_ms": now_ms(),
                         "tags": {"notebench.error": "the runner stopped before the run ended"}})


@functools.cache
def _html_exporter():
    """One exporter per sidecar: building one loads and compiles its templates (a few hundred ms)."""
    from nbconvert import HTMLExporter

    return HTMLExporter()


def _to_html(notebook: Path) -> Path | None:
    """Render an executed notebook to HTML beside it (the lineage's human-readable copy)."""
    try:
        import nbformat

        body, _ = _html_exporter().from_notebook_node(nbformat.read(notebook, as_version=4))
        out = notebook.with_suffix(".html")
        out.write_text(body, encoding="utf-8")
        return out
    except Exception as exc:  # a rendering problem must not lose the rest of the lineage
        print(f"could not render {notebook} to HTML: {exc}", file=sys.stderr)
        return None


def _work(rec: _Recorder, queue, created: threading.Condition) -> None:
    """Apply events from `queue` until None; an end waits until its run was created by the other worker."""
    while (event := queue.get()) is not None:
        if event["op"] == "end":
            with created:
                created.wait_for(lambda: event["key"] in rec.ids or rec.failed_start(event["key"]), timeout=600)
        try:
            getattr(rec, f"op_{event['op']}")(event)
        except Exception as exc:
            print(f"lineage: {event.get('op')} {event.get('key', '')} failed: {exc!r}", file=sys.stderr)
            if event.get("op") == "start":
                rec.failed.add(event["key"])
        if event["op"] == "start":
            with created:
                created.notify_all()


def main() -> int:
    """Two workers: one creates runs (and publishes their ids) at once, one writes the slower ends."""
    import queue as queues

    with contextlib.suppress(OSError):
        os.nice(_NICENESS)

    from notebench.imports import defer_iri_grammar

    defer_iri_grammar()  # nbconvert's jsonschema would build IRI parsers: 2.75 s (see notebench.imports)
    rec = _Recorder()
    fast, slow = queues.Queue(), queues.Queue()
    created = threading.Condition()
    workers = [threading.Thread(target=_work, args=(rec, q, created)) for q in (fast, slow)]
    for w in workers:
        w.start()
    for line in sys.stdin:
        event = json.loads(line)
        (slow if event["op"] == "end" else fast).put(event)
    fast.put(None)
    workers[0].join()
    slow.put(None)
    workers[1].join()
    rec.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
