"""Running inside an environment: the CLI re-executes itself in the release's venv, with the release's settings.

`notebench run P --env E`, `serve --env E`, `monitor --env E`, `watch`/`tick`/`trigger`/`events --env E`, and any
command after a global `notebench --env E`, do not run on the host's code: the host's `notebench` finds E's current
release and replaces itself (`execve`) with the release venv's own `notebench`, in an environment that says where
it runs:

| variable | value |
|---|---|
| NOTEBENCH_ENVIRONMENT | E |
| NOTEBENCH_ENVIRONMENT_HOME | <workspace>/environments/E (its state is in workspace/ there) |
| NOTEBENCH_RELEASE | the release's hash |
| NOTEBENCH_SETTINGS | the release's settings.ini, read for E (its [environments.E] overrides, its workspace) |
| VIRTUAL_ENV, PATH | the release's venv first |
| JUPYTER_PATH | the venv's share/jupyter, then its layer's: its `notebench` kernelspec and nbconvert templates |

PYTHONPATH and PYTHONHOME are dropped (the release imports only what its venv holds), and so are
NOTEBENCH_WORKSPACE_PATH (the environment's workspace is its own) and NOTEBENCH_SETTINGS; other
NOTEBENCH_<SECTION>_<KEY> variables still override the release's settings, as they do everywhere. Everything the
command starts (step kernels, the lineage sidecar, the prediction service, the monitoring pass) inherits all of it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from notebench.errors import DeployRefused

__all__ = ["enter", "follow", "inside", "superseded", "this_release", "variables"]

DROPPED = ("PYTHONPATH", "PYTHONHOME", "NOTEBENCH_WORKSPACE_PATH", "NOTEBENCH_SETTINGS", "JUPYTER_PATH",
           "CONDA_PREFIX")


def _home() -> Path | None:
    home = os.environ.get("NOTEBENCH_ENVIRONMENT_HOME")
    return Path(home) if home else None


def inside(env: str) -> bool:
    """Whether this process runs in environment `env`'s release venv."""
    home, release = _home(), os.environ.get("NOTEBENCH_RELEASE")
    if os.environ.get("NOTEBENCH_ENVIRONMENT") != env or home is None or not release:
        return False
    return Path(sys.prefix).resolve() == (home / "venvs" / release).resolve()


def this_release():
    """The release this process was started for (not `current`: a deploy meanwhile changes nothing here)."""
    from notebench.release.environments import Release

    env, home, release = os.environ["NOTEBENCH_ENVIRONMENT"], _home(), os.environ["NOTEBENCH_RELEASE"]
    path = home / "releases" / release
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise DeployRefused(f"release {release[:12]} is missing from {path} ({exc})", env=env) from exc
    return Release(env, release, path, manifest)


def variables(target, release) -> dict[str, str]:
    """The process environment of everything that runs in `target` (an Environment) on `release`."""
    from notebench.release import venvs

    venv = release.venv
    layer = target.base / venvs.LAYERS / (venvs.venv_mark(venv) or {}).get("layer", "")
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env.update({"NOTEBENCH_ENVIRONMENT": target.name, "NOTEBENCH_ENVIRONMENT_HOME": str(target.root),
                "NOTEBENCH_RELEASE": release.hash, "NOTEBENCH_SETTINGS": str(release.settings_file),
                "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                "JUPYTER_PATH": os.pathsep.join([str(venv / "share" / "jupyter"), str(layer / "share" / "jupyter")])})
    return env


def enter(env: str, argv: list[str]) -> int:
    """Replace this process with `notebench ARGV` in environment `env`'s current release venv (never returns);
    `DeployRefused` when nothing is deployed there or its venv is missing."""
    from notebench.release import venvs
    from notebench.release.environments import environment
    from notebench.workspace import Workspace

    home = _home()
    if home is not None and os.environ.get("NOTEBENCH_ENVIRONMENT") == env:  # from inside: the host's workspace
        ws = Workspace.of(home.parent.parent)
    else:
        ws = Workspace()
    target = environment(ws, env)
    release = target.current()
    if release is None:
        raise DeployRefused(f"nothing is deployed yet; deploy a release with `notebench deploy RELEASE --env {env}`",
                            env=env)
    if venvs.venv_mark(release.venv) is None:
        raise DeployRefused(f"release {release.hash[:12]} has no finished venv at {release.venv}: deploy its release "
                            "file again", env=env)
    program = release.venv / "bin" / "notebench"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(program, [str(program), *argv], variables(target, release))
    return 0  # not reached


def superseded(env: str) -> bool:
    """Whether this process runs a release of `env` that is no longer its current one (a deploy or rollback since)."""
    if not inside(env):
        return False
    try:
        return Path(os.readlink(_home() / "current")).name != os.environ["NOTEBENCH_RELEASE"]
    except OSError:
        return False


def follow(env: str | None, every: float = 2.0) -> threading.Event:
    """For a long-running service of `env` (the trigger service): once a deploy or rollback makes another release
    current, send this process SIGTERM (which lets a run in progress finish) and set the returned event, so that the
    caller re-executes itself in the new release (`enter`). Without an environment, nothing is watched."""
    changed = threading.Event()
    if not env or not inside(env):
        return changed

    def watch() -> None:
        while not changed.wait(every):
            if superseded(env):
                changed.set()
                os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="notebench-release-follower", daemon=True).start()
    return changed
