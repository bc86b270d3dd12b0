"""The venv a release runs in, made with uv from the release's own lock and wheels.

```
<workspace>/environments/
  .layers/<lock key>/     the packages uv.lock pins (every one but the release's own), installed by `uv sync
                          --frozen` for one Python; shared, never changed once complete, by the releases with that lock
  <env>/venvs/<hash>/     the release's venv: its own interpreter and site-packages holding the release's two wheels,
                          the layer on its path (a .pth file), and the `notebench` kernelspec that runs it
```

Why a layer: the locked packages are ~220 distributions and ~1 GB. uv links them from its cache in a few seconds,
but compiling them to bytecode (without which, with PYTHONDONTWRITEBYTECODE=1, every import costs twice as much)
takes ~40 s of CPU. A release whose lock did not change (most releases change code, not dependencies) reuses the
layer, so its deploy only makes a small venv and installs two wheels; a new lock's layer is compiled in the
background after its deploy. Each layer is named by the sha256 of the lock, the project's pyproject files and the
exact Python, so a release always runs the packages its own lock names.

Every step that fails removes what it made, so a refused deploy leaves the environments as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from notebench.errors import DeployRefused
from notebench.state.flock import file_lock

__all__ = ["MARK", "build_venv", "compile_in_background", "ensure_layer", "find_python", "find_uv", "layer_key",
           "remove_unused_layers", "site_packages", "venv_mark"]

MARK = ".notebench-venv.json"  # written last: a venv or layer without it is unfinished
LAYERS = ".layers"
KERNEL = "notebench"  # the kernelspec name a release's venv carries (the runner and papermill ask for it)
_CHECK = r"""
import importlib.util, json, sys
import notebench
from notebench.settings import load_settings
settings = load_settings(sys.argv[1], env=sys.argv[2])
module = settings.value("use_case", "object").partition(":")[0]
spec = importlib.util.find_spec(module)
print(json.dumps({"notebench": notebench.__version__, "module": module, "origin": spec and spec.origin,
                  "prefix": sys.prefix}))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would point uv or Python at another environment, or contradict the
    flags given here (UV_COMPILE_BYTECODE, which the Makefile exports, against `--no-compile-bytecode`)."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX",
                                                              "UV_PROJECT_ENVIRONMENT", "UV_PYTHON",
                                                              "UV_COMPILE_BYTECODE", "UV_NO_COMPILE_BYTECODE"}}
    return {**env, "UV_PYTHON_DOWNLOADS": "never", **extra}


def _run(cmd: list[str], what: str, **env: str) -> str:
    """Run `cmd`; `DeployRefused` naming `what` with the last lines of its output if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(**env), check=False)
    if proc.returncode:
        tail = "\n    ".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise DeployRefused(f"{what} failed (exit {proc.returncode}):\n    {tail}")
    return proc.stdout


def find_uv() -> str:
    """The uv binary: the one the `uv` package installed beside the engine, else `$UV` or uv on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        raise DeployRefused("uv is needed to install a release and was not found (pip install uv, or set UV=path)")
    return found


def _own_python() -> str:
    """The interpreter this process runs on (the base one, when this is a venv's)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def find_python(version: str) -> str:
    """An installed interpreter of Python `version` (major.minor), or `DeployRefused` saying there is none."""
    if version == f"{sys.version_info.major}.{sys.version_info.minor}" and os.access(_own_python(), os.X_OK):
        return _own_python()  # the usual case, without asking uv
    proc = subprocess.run([find_uv(), "python", "find", "--system", version], capture_output=True, text=True,
                          env=_clean_env(), check=False)
    if proc.returncode or not proc.stdout.strip():
        raise DeployRefused(f"the release was built and tested on Python {version}, and this machine has no Python "
                            f"{version} (`uv python find --system {version}` found none): deploy it where that Python "
                            "is installed, or build it with this machine's Python")
    return proc.stdout.strip()


def _python_version(python: str) -> str:
    if os.path.realpath(python) == _own_python():
        return platform.python_version()
    out = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], capture_output=True,
                         text=True, check=True, env=_clean_env())
    return out.stdout.strip()


def layer_key(release: Path, python: str) -> str:
    """The layer's name: sha256 of the lock, the project's pyproject files and the exact Python version."""
    h = hashlib.sha256(_python_version(python).encode())
    for path in [release / "uv.lock", *sorted((release / "project").rglob("pyproject.toml"))]:
        h.update(path.relative_to(release).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def site_packages(venv: Path) -> Path:
    """A venv's site-packages folder."""
    found = sorted(Path(venv).glob("lib/python*/site-packages"))
    if not found:
        raise DeployRefused(f"{venv} has no lib/python*/site-packages: not a venv")
    return found[0]


def venv_mark(venv: Path) -> dict | None:
    """What a finished venv or layer records about itself, or None when it is unfinished or missing."""
    try:
        return json.loads((Path(venv) / MARK).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _layers_lock(root: Path):
    """One process at a time builds or removes layers (deploys of different environments may share one)."""
    folder = root / LAYERS
    with file_lock(folder / ".lock"):
        yield folder


def ensure_layer(root: Path, release: Path, python: str) -> tuple[Path, bool]:
    """The layer of the release's lock under `root` (<workspace>/environments), built now if missing; (path,
    whether this call built it). `DeployRefused` with uv's reason when the lock does not install."""
    key = layer_key(release, python)
    with _layers_lock(root) as folder:
        path = folder / key
        if venv_mark(path):
            return path, False
        shutil.rmtree(path, ignore_errors=True)  # an unfinished one, left by a deploy that was killed
        with tempfile.TemporaryDirectory(prefix="notebench-lock-") as scratch:
            shutil.copy2(release / "uv.lock", Path(scratch) / "uv.lock")
            for pyproject in (release / "project").rglob("pyproject.toml"):
                target = Path(scratch) / pyproject.relative_to(release / "project")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(pyproject, target)
            try:
                _run([find_uv(), "sync", "--frozen", "--no-dev", "--no-install-workspace", "--no-compile-bytecode",
                      "--python", python, "--project", scratch, "--quiet"],
                     "installing the release's uv.lock (uv sync --frozen)", UV_PROJECT_ENVIRONMENT=str(path))
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
        (path / MARK).write_text(json.dumps({"layer": key, "python": python, "created": time.time()}))
        return path, True


def build_venv(path: Path, release: Path, manifest: dict, layer: Path, python: str, env: str) -> dict:
    """Make the release's venv at `path`: the interpreter, the layer on its path, the release's wheels, its
    kernelspec; then check, inside it, the release's settings for `env` and where its code comes from."""
    try:
        _run([find_uv(), "venv", "--quiet", "--python", python, str(path)], "creating the release's venv")
        (site_packages(path) / "_notebench_layer.pth").write_text(
            f"import site; site.addsitedir({str(site_packages(layer))!r})\n")
        wheels = [str(release / w) for w in manifest["wheels"].values()]
        _run([find_uv(), "pip", "install", "--quiet", "--no-deps", "--compile-bytecode", "--python",
              str(path / "bin" / "python"), *wheels], "installing the release's wheels")
        _kernelspec(path, env, manifest)
        found = json.loads(_run([str(path / "bin" / "python"), "-I", "-c", _CHECK, str(release / "settings.ini"), env],
                                f"checking the release in its venv (its settings for '{env}', its use case)"))
        _check_found(found, path, manifest)
        mark = {"layer": layer.name, "python": python, "release": manifest.get("hash"), "created": time.time()}
        (path / MARK).write_text(json.dumps(mark))
        return mark
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def _check_found(found: dict, venv: Path, manifest: dict) -> None:
    """The venv runs the release's own engine, and imports the use case from the release's own wheel."""
    engine = manifest["versions"].get("notebench")
    if found["notebench"] != engine:
        raise DeployRefused(f"the release's venv runs notebench {found['notebench']}, not the {engine} of its wheel")
    origin = found.get("origin") or ""
    if not origin.startswith(str(site_packages(venv))):
        raise DeployRefused(f"the use case {found['module']} ([use_case] object) does not come from the release's "
                            f"wheels in its venv (found: {origin or 'nothing'})")


def _kernelspec(venv: Path, env: str, manifest: dict) -> None:
    """The venv's own `notebench` kernelspec (found first: the environment puts the venv's share/jupyter on
    JUPYTER_PATH), whose kernels run the venv's interpreter."""
    folder = venv / "share" / "jupyter" / "kernels" / KERNEL
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [str(venv / "bin" / "python"), "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f",
                     "{connection_file}"],
            "display_name": f"Python (notebench {env}: {manifest.get('name')} {manifest.get('version')})",
            "language": "python", "metadata": {"debugger": True, "notebench": {"env": env,
                                                                              "release": manifest.get("hash")}}}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))


def compile_in_background(layer: Path) -> None:
    """Compile the layer's packages to bytecode in a detached, niced process (writes `.compiled` when done)."""
    if (layer / ".compiled").exists():
        return
    python = str(layer / "bin" / "python")
    script = (f"nice -n 10 {python!r} -m compileall -q -j 0 {str(site_packages(layer))!r} >/dev/null 2>&1; "
              f"touch {str(layer / '.compiled')!r}")
    subprocess.Popen(["sh", "-c", script], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_clean_env())


def remove_unused_layers(root: Path, in_use: set[str], grace: float = 900) -> list[str]:
    """Remove the layers under `root` that no kept release's venv uses, except those built in the last `grace`
    seconds (a deploy of another environment may be making its venv on one); return their names."""
    removed = []
    if not (root / LAYERS).is_dir():
        return removed
    with _layers_lock(root) as folder:
        for path in sorted(p for p in folder.iterdir() if p.is_dir()):
            young = time.time() - (venv_mark(path) or {}).get("created", 0) < grace
            if path.name not in in_use and not young:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed

