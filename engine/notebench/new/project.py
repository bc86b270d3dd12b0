"""`notebench new DIR --data PATH`: a project made from a folder of the user's Parquet or CSV.

The steps, in order; everything that can refuse the input runs before anything is written:

1. find and read the files, and check they agree (`sources`);
2. tell the columns' roles, asking in one message for what the data cannot say (`infer`);
3. normalize the rows, cut them into batches, choose the split and the sample (`landing`);
4. in a staging folder beside DIR: render the template with copier, write the data and the use-case notebooks, export
   them with nbdev, lock the dependencies;
5. move the staging folder to DIR in one rename, land the training batches in its workspace, and make it a git
   repository.

A refusal at any step leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from notebench.new.errors import NeedAnswers, NewProjectError
from notebench.new.infer import Options, Roles, infer_roles, safe_names
from notebench.new.landing import Landing, land, write_batches
from notebench.new.notebooks import write_notebooks
from notebench.new.schema import categories
from notebench.new.sources import Files, find_files, read_all
from notebench.new.template import engine_answers, git_commit, inside, link_shared, lock, render

__all__ = ["Project", "create_project", "project_name"]


@dataclass
class Project:
    """What `notebench new` knows about the project it makes."""

    name: str
    package: str
    description: str
    files: Files
    roles: Roles
    landing: Landing
    renamed: dict[str, str] = field(default_factory=dict)  # the user's column name -> the project's


def project_name(dest: Path, given: str | None = None) -> str:
    """A project name of lowercase letters, digits and underscores (from `given`, else DIR's name)."""
    if given is not None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", given):
            raise NewProjectError(f"--name {given!r}: use lowercase letters, digits and underscores, starting with a "
                                  "letter (it names the Python package <name>_lib)")
        return given
    name = re.sub(r"[^0-9a-z]+", "_", dest.name.lower()).strip("_") or "project"
    return name if name[0].isalpha() else f"p_{name}"


def _check_dest(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise NewProjectError(f"{dest} exists and is not a folder: choose a new folder for the project")
    if dest.is_dir() and any(dest.iterdir()):
        raise NewProjectError(f"{dest} exists and is not empty: choose a new folder for the project (nothing was "
                              "written)")


def _renamed_options(options: Options, renamed: dict[str, str]) -> Options:
    """The options with the user's column names mapped to the project's."""
    def name(col):
        return renamed.get(col, col) if col is not None else None
    return replace(options, target=name(options.target), timestamp=name(options.timestamp),
                   entities=tuple(name(c) for c in options.entities))


def plan(data: Path, options: Options, labels: str | None = None, label_data: Path | None = None,
         name: str = "project") -> Project:
    """Steps 1-3: the project the data calls for, or NewProjectError / NeedAnswers; writes nothing."""
    files = find_files(data, labels, label_data)
    features = read_all(files.features)
    label_frame = read_all(files.labels) if files.labels else None
    renamed = safe_names([*features.columns, *(label_frame.columns if label_frame is not None else [])])
    features = features.rename(columns=renamed)
    label_frame = label_frame.rename(columns=renamed) if label_frame is not None else None
    roles = infer_roles(files.data, features, label_frame, _renamed_options(options, renamed))
    landing = land(features, label_frame, roles)
    description = f"predicts {roles.target} ({roles.task}) of each {' and '.join(roles.entities)} at {roles.timestamp}"
    return Project(name=name, package=f"{name}_lib", description=description, files=files, roles=roles,
                   landing=landing, renamed=renamed)


def _tool(name: str) -> str:
    """A console script of this Python's environment (nbdev-export, ...)."""
    found = Path(sys.executable).parent / name
    return str(found) if found.is_file() else (shutil.which(name) or name)


def _export(staging: Path) -> None:
    """Export the written notebooks into the package (they are written clean: nbdev-clean would change nothing)."""
    for tool in ("nbdev-export",):
        proc = subprocess.run([_tool(tool)], cwd=staging, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise NewProjectError(f"{tool} failed on the generated notebooks:\n{(proc.stderr or proc.stdout)[-1500:]}")


def _answers(project: Project, engine: dict) -> dict:
    return {"project_name": project.name, "package": project.package, "description": project.description,
            "task": project.roles.task, "holdout_days": project.landing.holdout_days,
            "monitoring_window": project.landing.window, "min_labels": project.landing.min_labels, **engine}


def _place(staging: Path, dest: Path) -> None:
    """Move the finished project to DIR in one rename (DIR may exist, empty)."""
    if dest.is_dir():
        dest.rmdir()
    os.replace(staging, dest)


def create_project(dest: Path, data: Path, options: Options | None = None, *, labels: str | None = None,
                   label_data: Path | None = None, name: str | None = None, engine: str | None = None,
                   engine_from: str | None = None, template: str | None = None, with_lock: bool = True,
                   with_git: bool = True, say: Callable[[str], None] = print) -> Project:
    """Make the project at `dest` from the files at `data`; see the module's docstring."""
    started = time.monotonic()
    dest = Path(dest).expanduser().resolve()
    _check_dest(dest)
    try:
        project = plan(data, options or Options(), labels, label_data, project_name(dest, name))
    except NeedAnswers as exc:
        given = " ".join([f"--labels {labels}" if labels else "", f"--label-data {label_data}" if label_data else "",
                          *(f"--{k} {v}" for k, v in (("name", name), ("engine", engine)) if v)]).strip()
        raise exc.asking(f"notebench new {dest} --data {Path(data).expanduser().resolve()} {given}".strip()) from None
    _say_plan(project, say)
    made_parent = not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f"{dest.name}.notebench-new-"))  # beside DIR: same depth
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # a folder as mkdir makes it, not mkdtemp's private one
    try:
        engine_spec = engine_answers(engine, engine_from, dest, staging)
        source = render(template, staging, _answers(project, engine_spec), dest)
        if inside(dest, source):
            link_shared(staging, Path(source), dest)
        land_, roles = project.landing, project.roles
        write_batches(land_, roles, staging / "data" / "batches")
        write_batches(land_, roles, staging / "data" / "sample", rows=land_.sample)
        write_notebooks(project, staging / "notebooks")
        _export(staging)
        if with_lock:
            lock(staging, seed=Path(source) / "uv.lock" if Path(source).is_dir() else None)
        _place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made_parent and not any(dest.parent.iterdir()):
            dest.parent.rmdir()
        raise
    for name in land_.names[:land_.n_train]:  # the training batches, landed in the project's workspace
        for stream in ("features", "labels"):
            if (dest / "data" / "batches" / stream / f"{name}.parquet").is_file():
                (dest / ".notebench" / "landing" / stream).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(dest / "data" / "batches" / stream / f"{name}.parquet",
                                dest / ".notebench" / "landing" / stream / f"{name}.parquet")
    git = git_commit(dest, f"notebench new --data {project.files.data}") if with_git else "no git repository"
    _say_written(project, dest, source, engine_spec, with_lock, git, time.monotonic() - started, say)
    return project


# ---------------------------------------------------------------------------------------------------------
# the summary


def _say_plan(project: Project, say) -> None:
    files, roles, land_ = project.files, project.roles, project.landing
    frame = land_.features
    say(f"Read {len(files.features)} data file(s){f' and {len(files.labels)} label file(s)' if files.labels else ''} "
        f"from {files.data}: {len(frame):,} rows, {frame[roles.timestamp].min().date()} to "
        f"{frame[roles.timestamp].max().date()}")
    for note in land_.notes:
        say(f"  note: {note}")
    if project.renamed:
        say("  renamed: " + ", ".join(f"{a!r} -> {b}" for a, b in project.renamed.items()))
    say("The use case")
    how = roles.how
    say(f"  {'timestamp':<12} {roles.timestamp} ({how['timestamp']})")
    say(f"  {'entity':<12} {', '.join(roles.entities)} ({how['entities']})")
    positive = next((k for k, v in (land_.codes or {}).items() if v == 1), None)
    codes = f"; positive class {positive!r}" if positive is not None else ""
    say(f"  {'target':<12} {roles.target} ({how['target']}), task {roles.task} ({how['task']}){codes}")
    say(f"  {'labels':<12} {'separate label files' if land_.layout == 'separate' else 'in the data files'}")
    say(f"  {'numeric':<12} {', '.join(roles.numeric) or 'none'}")
    cats = [f"{c} ({len(categories(frame[c]))} values)" for c in roles.categorical]
    say(f"  {'categorical':<12} {', '.join(cats) or 'none'}")
    for col, why in roles.left_out.items():
        say(f"  {'left out':<12} {col}: {why}")
    say(f"Batches: {len(land_.names)} {land_.period}s; the first {land_.n_train} train the first model (holdout "
        f"{land_.holdout_days} day{'s' * (land_.holdout_days != 1)}), the last {len(land_.replay)} are replayed by "
        "`make demo`")


def _say_written(project: Project, dest: Path, source: str, engine: dict, locked: bool, git: str, seconds: float,
                 say) -> None:
    land_ = project.landing
    where = {"path": f"the engine's folder {engine['engine_from']}", "wheel": engine["engine_from"],
             "index": f"{engine['engine_from'] or 'PyPI'}, notebench{engine['engine_version']}"}[engine["engine"]]
    say(f"Wrote {dest} (template {source})")
    say(f"  pyproject.toml (engine from {where}), settings.ini, Makefile, ci/, .github/, dashboards/, "
        "notebooks/pipelines/, tests/")
    say(f"  notebooks/01_data.ipynb, 02_model.ipynb, 03_use_case.ipynb, exported into {project.package}/")
    say(f"  data/batches/ ({len(land_.names)} batches), data/sample/ ({len(land_.sample):,} rows of the training "
        f"batches), the {land_.n_train} training batches landed in .notebench/landing/")
    say(f"  {'uv.lock' if locked else 'no uv.lock (--no-lock): run `uv lock` before `make install`'}; {git}")
    say(f"Done in {seconds:.1f} s. Next:")
    say(f"  cd {dest}")
    say(f"  make demo   train on the first {land_.n_train} batches, serve, replay the last {len(land_.replay)} as "
        "traffic and feedback, monitor, retrain")
    say("  make test   what CI runs: lessons, tests, a smoke run of every pipeline, the build")
