"""Releases of a small real project for the release tests: the engine's wheel built from this repository, the
fixture use case (tests/fixture_project, copied) built as the project's wheel, a tiny pipeline, settings, and this
repository's uv.lock with its pyproject files (the lock the project's packages come from).

The tiny pipeline's one step writes, as JSON, what the run was made of: the environment it ran in, the use case's
derived features (release 2 of a project adds one), where the use case's code and the interpreter came from, the
model name and workspace its settings gave, and the engine's version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURE_PROJECT, ROOT
from notebench.release.bundle import STAGES, build_bundle, record_stage, stage_results
from pipeline_kit import make_pipeline

BIN = Path(sys.executable).parent
UV = shutil.which("uv", path=str(BIN)) or shutil.which("uv") or "uv"

BODY = """import json, os, sys, pathlib
import fixture_lib, notebench
from notebench.settings import load_settings
settings = load_settings()
pathlib.Path(step.output('what')).write_text(json.dumps({
    'env': os.environ.get('NOTEBENCH_ENVIRONMENT'), 'derived': list(step.use_case.derived),
    'code': fixture_lib.__file__, 'prefix': sys.prefix, 'version': notebench.__version__,
    'model_name': settings.value('registry', 'model_name'), 'experiment': settings.value('tracking', 'experiment'),
    'workspace': str(step.workspace), 'n_trials': settings.value('training', 'n_trials')}))
"""

SETTINGS = """[use_case]
object = fixture_lib.use_case:USE_CASE

[pipeline]
# the tiny step needs no pandas or mlflow before it starts
warm_imports = notebench.step

[environments]
prod_min_staging_runs = 2

[environments.dev]
training.n_trials = 3
"""

DERIVED = """
# release 2: the use case derives a feature
import dataclasses as _dc
USE_CASE = _dc.replace(USE_CASE, derived=("temp_per_load",))
"""

WHEEL_PYPROJECT = """[build-system]
requires = ["setuptools>=75"]
build-backend = "setuptools.build_meta"

[project]
name = "sensors"
version = "{version}"
requires-python = ">=3.11"
dependencies = ["notebench"]

[tool.setuptools.packages.find]
include = ["fixture_lib*"]
"""

# the deploying host's settings for the tests: no background compile competing with them; two releases kept
QUIET = {"NOTEBENCH_ENVIRONMENTS_COMPILE_BYTECODE": "false", "NOTEBENCH_ENVIRONMENTS_KEEP_RELEASES": "2"}


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=ci", "-c", "user.email=ci@example.org", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def uv_build(source: Path, out: Path, *extra: str) -> Path:
    """A wheel of the project at `source` (or `--package`), built with the venv's own setuptools."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.whl"))
    subprocess.run([UV, "build", "--wheel", "--no-build-isolation", "--python", sys.executable, "--out-dir", str(out),
                    "--quiet", *extra], cwd=source, check=True, capture_output=True,
                   env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    (wheel,) = set(out.glob("*.whl")) - before
    return wheel


def engine_wheel(folder: Path) -> Path:
    """The engine's wheel, built from this repository (its version: this checkout's); setuptools' scratch folder,
    if this made it, removed again."""
    scratch = ROOT / "engine" / "build"
    existed = scratch.exists()
    try:
        return uv_build(ROOT, folder, "--package", "notebench")
    finally:
        if not existed:
            shutil.rmtree(scratch, ignore_errors=True)


def project_wheel(folder: Path, version: str, derived: bool = False) -> Path:
    """The fixture use case as the project's wheel `sensors-<version>`, with a derived feature in release 2."""
    src = folder / f"src-{version}"
    shutil.copytree(FIXTURE_PROJECT / "fixture_lib", src / "fixture_lib")
    if derived:
        with open(src / "fixture_lib" / "use_case.py", "a") as f:
            f.write(DERIVED)
    (src / "pyproject.toml").write_text(WHEEL_PYPROJECT.format(version=version))
    return uv_build(src, folder / "wheels")


def make_project(folder: Path, engine: Path, version: str = "1.0.0", derived: bool = False, body: str = BODY,
                 settings: str = SETTINGS, lock: bytes | None = None, params: str = "") -> Path:
    """A git project with one tiny pipeline named `training`, its settings, the lock and pyproject files, and
    dist/ holding the engine's wheel and the project's."""
    folder.mkdir(parents=True)
    steps = {"a": {"body": body, "params": params, "products": {"what": "w.json"}}}
    make_pipeline(folder / "notebooks" / "pipelines" / "training", steps)
    (folder / "settings.ini").write_text(settings)
    (folder / "uv.lock").write_bytes(lock if lock is not None else (ROOT / "uv.lock").read_bytes())
    (folder / "engine").mkdir()
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    shutil.copy(ROOT / "engine" / "pyproject.toml", folder / "engine" / "pyproject.toml")
    (folder / ".gitignore").write_text("dist/\nbuild/\nsrc-*/\nwheels/\n")
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", f"release {version}")
    dist = folder / "dist"
    dist.mkdir()
    shutil.copy(engine, dist / engine.name)
    wheel = project_wheel(folder, version, derived)
    shutil.copy(wheel, dist / wheel.name)
    return folder


def build(project: Path, stages=STAGES, **kwargs):
    """Record `stages` as passed on the project's source, then build its release from its dist/."""
    dist = project / "dist"
    for stage in stages:
        record_stage(dist, stage, True, project, key=kwargs.get("key", ""))
    return build_bundle(project, dist, stage_results(dist, project, key=kwargs.get("key", "")), **kwargs)


def output(workspace: Path, env: str) -> dict:
    """What the tiny step of the last run of `training` in `env` wrote."""
    path = workspace / "environments" / env / "workspace" / "pipelines" / f"training@{env}" / "products" / "a"
    return json.loads((path / "w.json").read_text())


def tree(folder: Path) -> dict[str, str]:
    """Every file and link under `folder` with its content digest (or link target), to see that nothing changed; a
    venv or layer (thousands of files linked from uv's cache) counts as its own finished-mark, and a state database
    as its rows (SQLite may checkpoint its write-ahead log into the file at any close without changing a row)."""
    import hashlib
    import sqlite3

    out = {}
    for top, dirs, files in os.walk(folder):
        here = Path(top)
        rel = here.relative_to(folder)
        if len(rel.parts) >= 2 and rel.parts[-2] in {".layers", "venvs"}:
            mark = here / ".notebench-venv.json"
            out[rel.as_posix()] = mark.read_text() if mark.exists() else "(unfinished)"
            dirs.clear()
            continue
        for name in dirs + files:
            path = here / name
            if path.is_symlink():
                out[(rel / name).as_posix()] = "-> " + os.readlink(path)
        for name in files:
            path = here / name
            if name in {"state.db-wal", "state.db-shm"} or path.is_symlink():
                continue
            if name == "state.db":
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                    out[(rel / name).as_posix()] = "\n".join(db.iterdump())
                continue
            out[(rel / name).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def host_install() -> dict[str, str]:
    """The host venv's installed distributions and the fixture use case's source: what no deploy may change."""
    import hashlib
    import importlib.metadata

    site = Path(importlib.metadata.distribution("notebench").locate_file(""))
    dists = sorted(p.name for p in site.glob("*.dist-info"))
    source = FIXTURE_PROJECT / "fixture_lib" / "use_case.py"
    return {"dists": "\n".join(dists), "use_case": hashlib.sha256(source.read_bytes()).hexdigest(),
            "notebench": str(Path(__import__("notebench").__file__).resolve())}
