"""Which code runs: the version of the engine and of the project (the use case's distribution).

Both versions come from git through setuptools-scm (`[tool.setuptools_scm]` in each pyproject.toml): a wheel built
from commit `1a2b3c4`, 12 commits after the last tag, is `0.1.dev12+g1a2b3c4`; built from a tree with uncommitted
changes it carries the date too, `0.1.dev12+g1a2b3c4.d20261207`. An installed wheel (a release's venv) reports
the version it was built with. An editable install (a development checkout) would report the version of the commit
it was installed at, so here the version is computed again from the checkout, as a build of it would get it, once
per process and only when asked (setuptools-scm and git cost ~0.3 s).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["describe", "distribution_version", "engine_version", "is_dirty", "project_distribution"]

UNKNOWN = "0+unknown"
_DIRTY = re.compile(r"[+.]d\d{8}$")  # setuptools-scm's mark of uncommitted changes (node-and-date)


def _editable_source(dist: importlib.metadata.Distribution) -> Path | None:
    """The source folder of an editable install (PEP 610 direct_url.json), else None."""
    try:
        info = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    if not info.get("dir_info", {}).get("editable"):
        return None
    url = urlparse(info.get("url", ""))
    return Path(unquote(url.path)) if url.scheme == "file" else None


def _scm_version(pyproject: Path, dist_name: str) -> str | None:
    """What setuptools-scm makes of the checkout that `pyproject` configures; None when it cannot say."""
    try:
        from setuptools_scm import Configuration, _get_version
    except ImportError:  # not a development environment: the installed metadata is all there is
        return None
    try:
        config = _configuration(pyproject, dist_name, Configuration)
        return _get_version(config, force_write_version_files=False)
    except Exception:  # no [tool.setuptools_scm], not a git checkout, git missing: fall back to the metadata
        return None


def _configuration(pyproject: Path, dist_name: str, configuration):
    """setuptools-scm's configuration of `pyproject`, read as a build reads it (its SETUPTOOLS_SCM_* variables)."""
    try:  # setuptools-scm >= 10 (vcs-versioning) wants the environment attached
        from vcs_versioning._environment import VcsEnvironment
    except ImportError:
        return configuration.from_file(pyproject, dist_name=dist_name)
    return VcsEnvironment.from_env("SETUPTOOLS_SCM", dist_name=dist_name).build_config(name=pyproject,
                                                                                     dist_name=dist_name)


@functools.cache
def distribution_version(name: str) -> str:
    """The version of the installed distribution `name`; for an editable install, that of its checkout now."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN
    source = _editable_source(dist)
    if source is not None and (source / "pyproject.toml").is_file():
        return _scm_version(source / "pyproject.toml", name) or dist.version
    return dist.version


def engine_version() -> str:
    """The engine's version (`notebench.__version__`)."""
    return distribution_version("notebench")


@functools.cache
def project_distribution(module: str) -> str | None:
    """The name of the installed distribution that provides the top-level package of `module`, if any."""
    top = module.split(".")[0]
    names = importlib.metadata.packages_distributions().get(top, [])
    return names[0] if names else None


def is_dirty(version: str) -> bool:
    """Whether a version was computed from (or built out of) a tree with uncommitted changes."""
    return bool(_DIRTY.search(version))


def describe(use_case_module: str | None = None) -> list[str]:
    """Lines for `notebench --version`: the engine, the project that provides the use case, dirty or not."""
    def line(name: str, version: str, what: str) -> str:
        dirty = ", built from uncommitted changes" if is_dirty(version) else ""
        return f"{name} {version} ({what}{dirty})"

    lines = [line("notebench", engine_version(), "the engine")]
    dist = project_distribution(use_case_module) if use_case_module else None
    if dist and dist != "notebench":
        lines.append(line(dist, distribution_version(dist), f"the project: {use_case_module}"))
    return lines
