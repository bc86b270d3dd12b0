"""The landing area and its ledger: which batches arrived, which were already taken, and what changed.

Batches are files under `<workspace>/landing/<stream>/` (e.g. `features/2026-01-03.parquet`). The ingest step
keeps a ledger of every batch it took with its content digest, so a batch is never taken twice or skipped, and
a batch that changes after it was taken is refused instead of silently re-read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from notebench.errors import NotebenchError
from notebench.pipeline.cache import file_digest

__all__ = ["BatchChanged", "dataset_digest", "link_batches", "read_ledger", "reconcile", "scan"]


class BatchChanged(NotebenchError):
    """A batch's content differs from what was ingested under the same name."""

    def __init__(self, names: list[str]):
        self.names = names
        super().__init__(f"{len(names)} landed batch(es) changed after they were ingested: {', '.join(names[:5])}; "
                         "landed batches are immutable — restore the original, or land the correction under a new name")


def scan(landing: Path, pattern: str = "*/*.parquet") -> dict[str, dict]:
    """Every batch under `landing` as {relative name: {digest, bytes}}, in name order."""
    return {str(p.relative_to(landing)): {"digest": file_digest(p), "bytes": p.stat().st_size}
            for p in sorted(Path(landing).glob(pattern)) if p.is_file()}


def reconcile(previous: dict | None, current: dict[str, dict], run_id: str = "") -> dict:
    """The new ledger: all batches with the run that first took them, and which are new or gone."""
    taken = (previous or {}).get("batches", {})
    changed = [n for n, b in current.items() if n in taken and taken[n]["digest"] != b["digest"]]
    if changed:
        raise BatchChanged(changed)
    new = [n for n in current if n not in taken]
    batches = {n: {**b, "run": taken.get(n, {}).get("run", run_id)} for n, b in current.items()}
    return {"batches": batches, "new": new, "removed": sorted(set(taken) - set(current)),
            "digest": dataset_digest(current, new)}


def dataset_digest(batches: dict[str, dict], names: list[str]) -> str:
    """One digest for exactly the batches `names` (their names and contents)."""
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(f"{name}\0{batches[name]['digest']}\n".encode())
    return h.hexdigest()


def link_batches(landing: Path, names, folder: Path) -> None:
    """Place the batches `names` into `folder` (hard links when possible: no copy, same bytes)."""
    for name in names:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(Path(landing) / name, target)
        except OSError:
            shutil.copy2(Path(landing) / name, target)


def read_ledger(path: Path | None) -> dict | None:
    """A ledger written by an earlier ingest, or None."""
    return json.loads(Path(path).read_text()) if path and Path(path).exists() else None
