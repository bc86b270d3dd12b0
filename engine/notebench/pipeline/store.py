"""Where a pipeline keeps its state: products and executed notebooks on the workspace's (shared) path, run records,
the run lock and the runs' leases in the state database (`notebench.state`).

```
<workspace>/pipelines/<pipeline>/
  products/<step>/            the step's current products and _manifest.json (its fingerprint, product digests)
  products/.staging/<...>/    a running step writes here; moved into place only when the step succeeded
  runs/<run id>/<step>.ipynb  the executed notebook (kept whether the step succeeded or failed), and .html
  runs/<run id>/run.json      a copy of the run's record, for people and tools reading the folder
<workspace>/pipelines/<pipeline>@<env>/   the same for the pipeline's runs in a deployment environment
state database                pipeline_runs (the records), lock `pipeline:<pipeline>[@<env>]` (held by the run in
                              progress), lease `run:<pipeline>[@<env>]:<run id>` (renewed while the runner lives)
```
A step's products become valid in one `rename`: a killed step leaves only a staging folder, never a product
that a later run would take as valid.

Whether a run is still alive is its lease, never its process id: a record says `running` while its runner renews
the lease, and reads as `killed` once the lease expired (`[state] lease_ttl` after the runner's last heartbeat).
A run that takes the pipeline's lock knows no other runner of the pipeline lives, so it records every record
still saying `running` as `killed` right away.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from notebench.errors import PipelineBusy

__all__ = ["PipelineStore", "RunRecord", "atomic_write_json", "store_name"]

MANIFEST = "_manifest.json"


def atomic_write_json(path: Path, data) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def store_name(pipeline: str, env: str | None = None) -> str:
    """The folder of a pipeline's state: `<pipeline>`, or `<pipeline>@<env>` for its runs in an environment."""
    return f"{pipeline}@{env}" if env else pipeline


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class PipelineStore:
    """The folders of one pipeline inside the workspace."""

    def __init__(self, workspace_root: Path, pipeline: str, env: str | None = None):
        if env is None and "@" in pipeline:  # a store's folder name: `<pipeline>@<env>`
            pipeline, env = pipeline.split("@", 1)
        self.pipeline, self.env = pipeline, env  # env: a deployment environment, whose runs keep their own state
        self.workspace_root = Path(workspace_root)
        self.root = self.workspace_root / "pipelines" / store_name(pipeline, env)
        self.products_root = self.root / "products"
        self.runs_root = self.root / "runs"
        self._lock = None  # the pipeline's lock while this process holds it
        self._state = None

    @classmethod
    def of_record_path(cls, path: Path) -> PipelineStore:
        """The store of `<workspace>/pipelines/<store>/runs/<run id>/run.json`."""
        path = Path(path).resolve()
        return cls(path.parents[4], path.parents[2].name)

    # products ------------------------------------------------------------------------------------------
    def product_dir(self, step: str) -> Path:
        return self.products_root / step

    def manifest(self, step: str) -> dict | None:
        """The manifest of a step's current products, or None if it never completed."""
        try:
            return json.loads((self.product_dir(step) / MANIFEST).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def staging(self, step: str, run_id: str) -> Path:
        """A fresh folder for a running step to write its products into."""
        path = self.products_root / ".staging" / f"{step}-{run_id}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def commit(self, step: str, staging: Path, manifest: dict) -> Path:
        """Make a succeeded step's staged products current: manifest first, then one rename."""
        atomic_write_json(staging / MANIFEST, manifest)
        final = self.product_dir(step)
        trash = self.products_root / ".staging" / f"{step}-old-{uuid.uuid4().hex[:6]}"
        if final.exists():
            os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
        return final

    def clean_staging(self) -> None:
        """Remove folders that killed or failed steps left behind."""
        shutil.rmtree(self.products_root / ".staging", ignore_errors=True)

    # runs ----------------------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.runs_root / run_id

    @property
    def name(self) -> str:
        """`<pipeline>` or `<pipeline>@<env>`: this store's name in the state database."""
        return store_name(self.pipeline, self.env)

    @property
    def state(self):
        """The state database of the workspace (opened on first use)."""
        if self._state is None:
            from notebench.state.store import open_state
            from notebench.workspace import Workspace

            self._state = open_state(Workspace.of(self.workspace_root))
        return self._state

    def runs(self) -> list[RunRecord]:
        """Every recorded run, newest first (records from before the state database: from their run.json)."""
        from notebench.state.schema import pipeline_runs as t

        with self.state.read() as conn:
            rows = conn.execute(sa().select(t.c.record).where(t.c.store == self.name)).scalars().all()
        records = {r["run_id"]: r for r in (RunRecord(json.loads(text)) for text in rows)}
        for path in self.runs_root.glob("*/run.json") if self.runs_root.is_dir() else []:
            if path.parent.name not in records:
                try:
                    records[path.parent.name] = RunRecord(json.loads(path.read_text()))
                except (OSError, json.JSONDecodeError):
                    continue
        out = sorted(records.values(), key=lambda r: (r.get("started") or 0, r.get("run_id", "")), reverse=True)
        return self._bind(out)

    def record(self, run_id: str) -> RunRecord | None:
        """The record of one run, or None."""
        from notebench.state.schema import pipeline_runs as t

        with self.state.read() as conn:
            text = conn.execute(sa().select(t.c.record).where(t.c.store == self.name, t.c.run_id == run_id)
                                ).scalar_one_or_none()
        if text is None:
            path = self.run_dir(run_id) / "run.json"
            try:
                text = path.read_text()
            except OSError:
                return None
        return self._bind([RunRecord(json.loads(text))])[0]

    def lease_name(self, run_id: str) -> str:
        return f"run:{self.name}:{run_id}"

    def _bind(self, records: list[RunRecord]) -> list[RunRecord]:
        """Attach the records to this store; a `running` one whose lease expired reads as `killed`."""
        running = [r for r in records if r.get("state") == "running"]
        alive = self.state.alive_leases(f"run:{self.name}:") if running else set()
        for rec in records:
            rec.store, rec.path = self, self.run_dir(rec["run_id"]) / "run.json"
            if rec.get("state") == "running" and self.lease_name(rec["run_id"]) not in alive:
                rec["state"] = "killed"  # its runner died without finishing the record
        return records

    # lock ----------------------------------------------------------------------------------------------
    def lock(self, wait: bool = False) -> None:
        """Hold this pipeline's lock for this process, or raise `PipelineBusy` naming the holder."""
        lock = self.state.lock(f"pipeline:{self.name}")
        if not lock.acquire(wait=None if wait else 0):
            raise PipelineBusy(f"pipeline '{self.name}' is already running in this workspace "
                               f"({self.holder() or 'another process'}); wait for it, or pass --wait to queue "
                               "behind it")
        self._lock = lock
        self._settle_dead_runs()

    def holder(self) -> str | None:
        """Who holds this pipeline's lock, as recorded."""
        return self.state.lock(f"pipeline:{self.name}").current_holder()

    def unlock(self) -> None:
        if self._lock:
            self._lock.release()
            self._lock = None

    def _settle_dead_runs(self) -> None:
        """Under the lock no other runner of this pipeline lives: record every run still `running` as `killed`."""
        from notebench.state.schema import pipeline_runs as t

        with self.state.read() as conn:
            rows = conn.execute(sa().select(t.c.record).where(t.c.store == self.name, t.c.state == "running")
                                ).scalars().all()
        for rec in (RunRecord(json.loads(text)) for text in rows):
            rec.store, rec.path = self, self.run_dir(rec["run_id"]) / "run.json"
            rec.update(state="killed", ended=rec.get("ended") or time.time(),
                       error=rec.get("error") or "its runner died before finishing it (its lease lapsed)")
            rec.save()


def sa():
    """SQLAlchemy, imported when a record is first read."""
    import sqlalchemy

    return sqlalchemy


class RunRecord(dict):
    """A run's fields; `save()` writes them to the state database (and a run.json copy) after every change. While
    its state is `running`, the record that created it holds the run's lease."""

    path: Path
    store: PipelineStore

    @classmethod
    def create(cls, path: Path, **fields) -> RunRecord:
        """A new record at `<runs>/<run id>/run.json` of a pipeline's store; a `running` one takes the run's lease."""
        rec = cls(fields)
        rec.path, rec.store = path, PipelineStore.of_record_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if rec.get("state") == "running":
            rec._lease = rec.store.state.lease(rec.store.lease_name(rec["run_id"]), holder=f"run {rec['run_id']}")
        rec.save()
        return rec

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        """The record of the run whose folder holds `path` (its run.json)."""
        found = PipelineStore.of_record_path(path).record(path.parent.name)
        if found is None:
            raise FileNotFoundError(f"no record of run {path.parent.name} in the state database, nor {path}")
        return found

    def save(self) -> None:
        """Write the record (one row) and its run.json copy; a record no longer `running` lets its lease go."""
        from notebench.state.schema import pipeline_runs as t

        store = self.store
        with store.state.write() as conn:
            store.state.upsert(conn, t, {"store": store.name, "run_id": self["run_id"], "pipeline": store.pipeline,
                                         "env": store.env, "state": self.get("state", ""),
                                         "started": self.get("started"), "ended": self.get("ended"),
                                         "record": json.dumps(dict(self), default=str), "updated": time.time()},
                               ["store", "run_id"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, dict(self))
        lease = getattr(self, "_lease", None)
        if lease is not None and self.get("state") != "running":
            lease.release()
            self._lease = None
