"""Content fingerprints of steps: what a step's result depends on, and which part of it changed.

A step's fingerprint is made of its notebook's code cells, the engine's and the use case's modules the notebook
imports (and those they import in turn; the use-case contract's module always counts), its parameters, the
effective values of the settings it reads (environment overrides included; values of keys that may hold
credentials only as a digest), and the content of its upstream products. Outputs, metadata and markdown do not
count, so re-running or re-documenting a notebook does not invalidate its cache.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from notebench.pipeline.notebooks import code_digest, notebook_imports
from notebench.pipeline.notebooks import parse_python as _parse

__all__ = ["Fingerprint", "file_digest", "is_secret", "module_digests", "path_digest", "setting_values"]

SECRET_WORDS = ("uri", "token", "password", "secret", "credential")  # a key named so may hold credentials
HIDDEN = "(value hidden: it may hold credentials)"


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, remembered while its size and modification time stay the same."""
    stat = os.stat(path)
    return _digest(str(path), stat.st_size, stat.st_mtime_ns, chunk)


@functools.lru_cache(maxsize=65536)
def _digest(path: str, size: int, mtime_ns: int, chunk: int) -> str:
    """sha256 of a file's bytes; `size` and `mtime_ns` make a changed file a new cache entry."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def path_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's relative file names and contents."""
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(item.relative_to(path)).encode() + b"\0" + file_digest(item).encode())
    return h.hexdigest()


def _module_file(name: str, lib_root: Path) -> Path | None:
    """The source file of module `name` (e.g. `notebench.step`) under the package folder `lib_root`."""
    rel = Path(*name.split(".")[1:])
    for candidate in (lib_root / rel.with_suffix(".py") if rel.parts else None, lib_root / rel / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _module_imports(file: Path, name: str, package: str) -> set[str]:
    """Modules of `package` that a module file imports, relative imports resolved."""
    tree = _parse(file.read_text(encoding="utf-8"))
    base = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - node.level + 1]
                mod = ".".join(parent + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == package:
                found.add(mod)
                found |= {f"{mod}.{a.name}" for a in node.names}
    return found


def module_digests(modules: set[str], roots: list[Path]) -> dict[str, str]:
    """sha256 of every module in `modules` and of the modules of the packages at `roots` they import, transitively."""
    by_package = {root.name: root for root in roots}
    todo, out = sorted(modules), {}
    while todo:
        name = todo.pop()
        root = by_package.get(name.split(".")[0])
        file = _module_file(name, root) if root else None
        if name in out or file is None:
            continue
        out[name] = file_digest(file)
        for package in by_package:
            todo.extend(sorted(_module_imports(file, name, package) - set(out)))
    return dict(sorted(out.items()))


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def is_secret(name: str) -> bool:
    """Whether setting `name` ("section.key") may hold credentials (tracking.uri, registry.uri, serving.token)."""
    key = name.rsplit(".", 1)[-1]
    return any(word in key for word in SECRET_WORDS)


def setting_values(settings, names) -> dict:
    """{"section.key": effective value} of `settings` for `names`; a secret's value only as "sha256:<16 hex>"."""
    out = {}
    for name in sorted(set(names)):
        section, key = name.split(".", 1)
        value = settings.value(section, key)
        if is_secret(name):
            value = "sha256:" + hashlib.sha256(_canonical(value).encode()).hexdigest()[:16]
        out[name] = json.loads(_canonical(value))
    return out


@dataclass
class Fingerprint:
    """What a step's products depend on, part by part."""

    code: str  # digest of the notebook's code cells
    modules: dict[str, str] = field(default_factory=dict)  # package module -> digest
    parameters: dict = field(default_factory=dict)  # the user parameters, as given
    upstream: dict[str, str] = field(default_factory=dict)  # upstream product -> content digest
    settings: dict = field(default_factory=dict)  # "section.key" -> effective value (see `setting_values`)

    @classmethod
    def of(cls, nb: dict, roots: list[Path], parameters: dict, upstream: dict[str, str],
           seeds: set[str] = frozenset(), settings: dict | None = None) -> Fingerprint:
        """The fingerprint of a notebook run with `parameters` and `settings` on upstream products of the given
        digests.

        `roots` are the package folders whose modules count (the engine's and the use case's); `seeds` are modules
        the step depends on without importing them by name (the use-case contract's module); `settings` are the
        values `setting_values` gives for the settings the step reads."""
        imported = set().union(*(notebook_imports(nb, root.name) for root in roots))
        modules = module_digests(imported | set(seeds), roots)
        return cls(code_digest(nb), modules, json.loads(_canonical(parameters)), dict(sorted(upstream.items())),
                   json.loads(_canonical(dict(sorted((settings or {}).items())))))

    @property
    def digest(self) -> str:
        return hashlib.sha256(_canonical(asdict(self)).encode()).hexdigest()

    def to_dict(self) -> dict:
        return {**asdict(self), "digest": self.digest}

    def changes(self, old: dict | None) -> list[str]:
        """Why a step with this fingerprint differs from the one recorded as `old` (empty: unchanged)."""
        if not old:
            return ["never ran"]
        reasons = []
        if old.get("code") != self.code:
            reasons.append("notebook code changed")
        for mod in sorted(set(old.get("modules", {})) | set(self.modules)):
            if old.get("modules", {}).get(mod) != self.modules.get(mod):
                reasons.append(f"module {mod} changed")
        for key in sorted(set(old.get("parameters", {})) | set(self.parameters)):
            before, after = old.get("parameters", {}).get(key, "<unset>"), self.parameters.get(key, "<unset>")
            if before != after:
                reasons.append(f"parameter {key} changed: {before!r} -> {after!r}")
        reasons += _setting_changes(old.get("settings", {}), self.settings)
        inputs = {"added": [], "changed": [], "removed": []}
        for prod in sorted(set(old.get("upstream", {})) | set(self.upstream)):
            before, after = old.get("upstream", {}).get(prod), self.upstream.get(prod)
            if before == after:
                continue
            if not prod.startswith("input:"):
                reasons.append(f"upstream product {prod} changed")
            else:
                inputs["added" if before is None else "removed" if after is None else "changed"].append(prod[6:])
        for change, files in inputs.items():
            if files:
                more = f" and {len(files) - 2} more" if len(files) > 2 else ""
                reasons.append(f"input {change}: {', '.join(files[:2])}{more}")
        return reasons


def _setting_changes(old: dict, new: dict) -> list[str]:
    """Reasons naming each setting whose value changed, that is now read, or no longer read (secrets hidden)."""
    reasons = []
    for name in sorted(set(old) | set(new)):
        before, after = (_shown(name, part.get(name)) for part in (old, new))
        if name not in old:
            reasons.append(f"setting {name} now read: {after}")
        elif name not in new:
            reasons.append(f"setting {name} no longer read (was {before})")
        elif old[name] != new[name]:
            reasons.append(f"setting {name} changed {HIDDEN}" if is_secret(name)
                           else f"setting {name} changed: {before} -> {after}")
    return reasons


def _shown(name: str, value) -> str:
    """A setting's value as `--explain` shows it: repr, or a notice for a secret."""
    return HIDDEN if is_secret(name) else repr(value)
