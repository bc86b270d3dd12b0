"""The project template (this repository, through copier), the engine a project depends on, its lock, its git.

The template is the Notebench checkout the engine runs from (its root holds `copier.yml`), or `--template` (a
checkout's path or a git URL). A project depends on the engine's distribution alone, from one of:

- `path`: the engine's source folder, editable (relative to the project when both live under one folder);
- `wheel`: a wheel file, copied into the project's `wheels/` (built from the checkout when none is given);
- `index`: a package index (`--engine-from URL`; none: PyPI), at the running engine's version or later.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from notebench import __version__
from notebench.new.errors import NewProjectError

__all__ = ["ENGINES", "SHARED", "engine_answers", "find_uv", "git_commit", "link_shared", "lock", "render",
           "source_checkout"]

ENGINES = ("path", "wheel", "index")
# what every project shares with the template, copied as it is (copier.yml's allow-list, less the .jinja files)
SHARED = ("Makefile", ".gitignore", "ci", ".github", "dashboards", "notebooks/pipelines")


def source_checkout() -> Path | None:
    """The Notebench checkout this engine runs from (the folder holding copier.yml and engine/), or None."""
    engine = Path(__file__).resolve().parents[2]  # engine/notebench/new/template.py -> engine/
    root = engine.parent
    if (engine / "pyproject.toml").is_file() and (root / "copier.yml").is_file():
        return root
    return None


def find_uv() -> str | None:
    """The uv executable: on PATH, beside this Python, or in the checkout's .tools/."""
    checkout = source_checkout()
    for candidate in (shutil.which("uv"), Path(sys.executable).parent / "uv",
                      checkout / ".tools" / "bin" / "uv" if checkout else None):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def _run(cmd: list[str], cwd: Path, what: str, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if proc.returncode:
        said = (proc.stderr.strip() or proc.stdout.strip())[-1500:]
        raise NewProjectError(f"{what} failed ({' '.join(map(str, cmd[:3]))} exited {proc.returncode}):\n{said}")
    return proc.stdout


def engine_answers(engine: str | None, engine_from: str | None, dest: Path, staging: Path) -> dict:
    """The template's engine answers (engine, engine_from, engine_version); a wheel is put into staging/wheels."""
    checkout = source_checkout()
    engine = engine or ("path" if checkout else "index")
    if engine not in ENGINES:
        raise NewProjectError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "index":
        return {"engine": "index", "engine_from": engine_from or "", "engine_version": f">={__version__}"}
    if engine == "path":
        folder = Path(engine_from).expanduser().resolve() if engine_from else checkout / "engine" if checkout else None
        if folder is None or not (folder / "pyproject.toml").is_file():
            raise NewProjectError(f"--engine path: {folder or 'no engine source folder'} holds no pyproject.toml; pass "
                                  "--engine-from ENGINE_FOLDER (the engine/ folder of a Notebench checkout)")
        shared = os.path.commonpath([folder, dest]) != os.path.sep
        return {"engine": "path", "engine_from": os.path.relpath(folder, dest) if shared else str(folder),
                "engine_version": ""}
    (staging / "wheels").mkdir(parents=True, exist_ok=True)
    if engine_from:
        wheel = Path(engine_from).expanduser().resolve()
        if not wheel.is_file() or wheel.suffix != ".whl":
            raise NewProjectError(f"--engine-from {engine_from}: not a wheel file (.whl)")
        shutil.copy2(wheel, staging / "wheels" / wheel.name)
    else:
        uv = find_uv()
        if checkout is None or uv is None:
            raise NewProjectError("--engine wheel: pass --engine-from WHEEL (no checkout and uv here to build one)")
        _run([uv, "build", "--wheel", "--out-dir", str(staging / "wheels"), str(checkout / "engine")], checkout,
             "building the engine's wheel")
        wheel = next((staging / "wheels").glob("notebench-*.whl"))
    return {"engine": "wheel", "engine_from": f"wheels/{wheel.name}", "engine_version": ""}


def render(template: str | None, staging: Path, answers: dict, dest: Path | None = None) -> str:
    """Render the template into `staging` (to become `dest`) with `answers`; return the template's source.

    A project inside the template's own folder (an example of the repository) records the template as a relative
    path, so that `copier update` works in any clone of it."""
    import copier

    source = template or (str(source_checkout()) if source_checkout() else None)
    if source is None:
        raise NewProjectError("no project template: this engine is not installed from a Notebench checkout; pass "
                              "--template (a checkout's folder or its git URL)")
    if "://" not in source and not source.startswith(("gh:", "gl:", "git@")):
        source = str(Path(source).expanduser().resolve())
        if not (Path(source) / "copier.yml").is_file():
            raise NewProjectError(f"--template {source}: no copier.yml there; name a Notebench checkout")
    src, cwd = source, Path.cwd()
    if dest is not None and inside(dest, source):
        src, cwd = os.path.relpath(source, dest), staging  # staging is a sibling of dest: the same depth
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), contextlib.chdir(cwd):
        warnings.simplefilter("ignore")  # "dirty template changes included", "no git tags found"
        try:
            copier.run_copy(src, str(staging), data=answers, defaults=True, quiet=True, unsafe=False,
                            overwrite=True)
        except Exception as exc:  # copier's own errors: a bad answer, an unreachable template
            raise NewProjectError(f"copier could not render the template {source}: {type(exc).__name__}: {exc}") \
                from exc
    return source


def link_shared(staging: Path, source: Path, dest: Path) -> None:
    """In a project inside the template's own folder, the shared files as links to the template's (no second copy).

    Such a project (an example of the repository) is part of the template's repository: it takes the template's
    changes with it, and keeps no copier answers file (copier would read it as the template's own)."""
    for name in SHARED:
        if name == ".gitignore":  # git reads no .gitignore through a link: a few lines of this project's own
            (staging / name).write_text("# a project inside the template's repository, whose .gitignore covers the "
                                        "rest: its runtime state and builds\n/.notebench/\n/.venv/\n/.tools/\n"
                                        "/dist/\n/build/\n")
            continue
        made = staging / name
        if made.is_dir() and not made.is_symlink():
            shutil.rmtree(made)
        elif made.exists() or made.is_symlink():
            made.unlink()
        made.parent.mkdir(parents=True, exist_ok=True)
        made.symlink_to(os.path.relpath(source / name, (dest / name).parent))
    (staging / ".copier-answers.yml").unlink(missing_ok=True)


def inside(dest: Path, source: str) -> bool:
    """True when the project is made inside the template's own folder."""
    return Path(source).is_dir() and dest.is_relative_to(Path(source).resolve())


def lock(project: Path, seed: Path | None = None) -> None:
    """`uv lock` in the project (what `make install` installs from), offline from uv's cache when it can.

    `seed` (the template's own uv.lock) is copied in first: uv keeps the versions it pins, so a new project installs
    what the engine was tested with."""
    uv = find_uv()
    if uv is None:
        raise NewProjectError("uv is needed to lock the project's dependencies (`pip install uv`), or pass --no-lock "
                              "and run `uv lock` in the project before `make install`")
    if seed is not None and seed.is_file():
        shutil.copyfile(seed, project / "uv.lock")
    env = {"UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": ""}
    offline = subprocess.run([uv, "lock", "--quiet", "--offline"], cwd=project, capture_output=True, text=True,
                             check=False, env={**os.environ, **env})
    if offline.returncode:
        _run([uv, "lock", "--quiet"], project, "locking the project's dependencies (uv lock)", env=env)


def git_commit(project: Path, message: str) -> str:
    """`git init` and a first commit (when git knows who you are); return what was done, for the summary."""
    git = shutil.which("git")
    if git is None:
        return "git not found: the project is not a git repository (copier update needs one)"
    inside = subprocess.run([git, "rev-parse", "--show-toplevel"], cwd=project.parent, capture_output=True,
                            text=True, check=False)
    if inside.returncode == 0:
        return f"part of the git repository {inside.stdout.strip()} (not made a repository of its own)"
    _run([git, "init", "-q"], project, "git init")
    _run([git, "add", "-A"], project, "git add")
    who = subprocess.run([git, "var", "GIT_COMMITTER_IDENT"], cwd=project, capture_output=True, text=True, check=False)
    if who.returncode:
        return "git repository initialized; commit it (git commit -m 'notebench new') before copier update"
    _run([git, "commit", "-q", "-m", message], project, "git commit")
    return "git repository initialized with a first commit"
