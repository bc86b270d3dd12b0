"""Where a pipeline keeps its state in the workspace: products and their manifests, run records, the lock.

```
<workspace>/pipelines/<pipeline>/
  products/<step>/            the step's current products and _manifest.json (its fingerprint, product digests)
  products/.staging/<...>/    a running step writes here; moved into place only when the step succeeded
  runs/<run id>/run.json      one record per run: steps, states, times, reasons, notebooks
  runs/<run id>/<step>.ipynb  the executed notebook (kept whether the step succeeded or failed), and .html
  lock                        held by the run in progress
<workspace>/pipelines/<pipeline>@<env>/   the same for the pipeline's runs in a deployment environment
```
A step's products become valid in one `rename`: a killed step leaves only a staging folder, never a product
that a later run would take as valid.
"""

from __future__ import annotations

import fcntl
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
        self.pipeline, self.env = pipeline, env  # env: a deployment environment, whose runs keep their own state
        self.root = workspace_root / "pipelines" / store_name(pipeline, env)
        self.products_root = self.root / "products"
        self.runs_root = self.root / "runs"
        self._lock_file = None

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

    def runs(self) -> list[RunRecord]:
        """Every recorded run, newest first."""
        out = []
        for path in sorted(self.runs_root.glob("*/run.json"), reverse=True):
            try:
                out.append(RunRecord.load(path))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    # lock ----------------------------------------------------------------------------------------------
    def lock(self, wait: bool = False) -> None:
        """Hold this pipeline's lock for this process, or raise `PipelineBusy` naming the holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / "lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise PipelineBusy(f"pipeline '{self.root.name}' is already running in this workspace ({holder}); "
                               "wait for it, or pass --wait to queue behind it") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file:
            self._lock_file.close()
            self._lock_file = None


class RunRecord(dict):
    """run.json: a dict with the run's fields, saved atomically after every change."""

    path: Path

    @classmethod
    def create(cls, path: Path, **fields) -> RunRecord:
        rec = cls(fields)
        rec.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        rec.save()
        return rec

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        rec = cls(json.loads(path.read_text()))
        rec.path = path
        if rec.get("state") == "running" and not _alive(rec.get("pid")):
            rec["state"] = "killed"  # its runner died without finishing the record
        return rec

    def save(self) -> None:
        atomic_write_json(self.path, dict(self))


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
