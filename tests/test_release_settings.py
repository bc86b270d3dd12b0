"""Settings per environment: [environments.<name>] overrides, checked whenever the file is read; what an environment
keeps apart by default (its workspace, experiment, model name); the version from git, different for every commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from notebench.errors import SettingsError
from notebench.settings import load_settings
from notebench.version import _scm_version, is_dirty

TEXT = """[tracking]
experiment = sensors
[environments]
names = dev, prod
[environments.dev]
training.n_trials = 3
serving.port = 8081
[environments.prod]
registry.model_name = sensors-model
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.ini"
    path.write_text(text)
    return path


def test_an_environment_reads_its_overrides_and_keeps_apart(tmp_path):
    path = write(tmp_path, TEXT)
    base = load_settings(path, environ={})
    assert (base.value("training", "n_trials"), base.value("serving", "port"), base.environment) == (20, 8080, None)
    home = tmp_path / "ws" / "environments" / "dev"
    dev = load_settings(path, environ={"NOTEBENCH_ENVIRONMENT_HOME": str(home),
                                       "NOTEBENCH_WORKSPACE_PATH": "/somewhere/else"}, env="dev")
    assert (dev.value("training", "n_trials"), dev.value("serving", "port"), dev.environment) == (3, 8081, "dev")
    assert dev.values["training"]["n_trials"].source == f"[environments.dev] in {path}"
    assert dev.path("workspace", "path") == home / "workspace"  # whatever the caller's workspace was
    assert (dev.value("tracking", "experiment"), dev.value("registry", "model_name")) == ("sensors-dev",
                                                                                          "notebench-model-dev")
    prod = load_settings(path, environ={"NOTEBENCH_ENVIRONMENT": "prod"})  # as a process inside prod reads them
    assert prod.value("registry", "model_name") == "sensors-model"  # set by its section: taken as written
    assert prod.value("tracking", "experiment") == "sensors-prod"
    # variables still win over an environment's section, and the suffix is not added twice (a kernel's read)
    env = {"NOTEBENCH_ENVIRONMENT": "dev", "NOTEBENCH_TRAINING_N_TRIALS": "7",
           "NOTEBENCH_TRACKING_EXPERIMENT": "sensors-dev"}
    again = load_settings(path, environ=env)
    assert (again.value("training", "n_trials"), again.value("tracking", "experiment")) == (7, "sensors-dev")


@pytest.mark.parametrize("text, words", [
    ("[environments.qa]\nserving.port = 1\n", ["[environments.qa] is not one of the environments", "dev, staging"]),
    ("[environments.dev]\nserving.prt = 1\n", ["[environments.dev] serving.prt: no such key"]),
    ("[environments.dev]\nport = 1\n", ["[environments.dev] port: no such key", "section.key = value"]),
    ("[environments.dev]\nserving.port = http\n", ["[serving] port = 'http' (from [environments.dev])",
                                                   "expected an integer"]),
    ("[environments.dev]\nworkspace.path = /tmp/x\n", ["workspace.path: this key is the same for every environment"]),
])
def test_bad_overrides_name_the_section_key_and_fix(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        load_settings(path, environ={})
    for word in words:
        assert word in str(err.value)
    with pytest.raises(SettingsError, match="not one of"):
        load_settings(write(tmp_path, ""), environ={}, env="qa")


def test_the_shipped_settings_hold_for_every_environment():
    from notebench.release.bundle import check_settings

    root = Path(__file__).resolve().parents[1]
    assert check_settings(root / "settings.ini")["environments"] == ["dev", "staging", "prod"]


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), "-c", "user.name=ci", "-c", "user.email=ci@example.org", *args],
                   check=True, capture_output=True)


def test_the_version_names_the_commit_and_says_when_the_tree_is_dirty(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\ndynamic = ["version"]\n\n'
                                             "[tool.setuptools_scm]\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    first = _scm_version(tmp_path / "pyproject.toml", "demo")
    (tmp_path / "a.txt").write_text("a")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "two")
    second = _scm_version(tmp_path / "pyproject.toml", "demo")
    assert first and second and first != second and not is_dirty(first) and not is_dirty(second)
    assert first not in ("0.1.0", "0.2.0") and "+g" in first
    (tmp_path / "a.txt").write_text("b")
    dirty = _scm_version(tmp_path / "pyproject.toml", "demo")
    assert dirty.startswith(second) and is_dirty(dirty)
    git(tmp_path, "tag", "v1.4.0")
    git(tmp_path, "commit", "-qam", "three")
    assert _scm_version(tmp_path / "pyproject.toml", "demo").startswith("1.4.1.dev1+g")


def test_notebench_version_is_the_checkouts():
    from notebench import __version__
    from notebench.version import engine_version

    assert __version__ == engine_version() and __version__ not in ("0.1.0", "0.2.0")
