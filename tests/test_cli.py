"""The `notebench` command: help, version, config, errors and exit codes — through the real console script."""

from __future__ import annotations

import json

from conftest import notebench
from notebench import __version__


def test_help_lists_the_subcommands():
    proc = notebench("--help", check=True)
    for word in ("config", "demo-data", "lab", "demo"):
        assert word in proc.stdout


def test_version():
    assert notebench("--version", check=True).stdout.splitlines()[0].startswith(f"notebench {__version__} (the engine")


def test_help_imports_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys; from notebench.cli import build_parser; build_parser();"
            "heavy = [m for m in ('mlflow', 'pandas', 'feast', 'sklearn', 'papermill') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_config_shows_overrides_and_sources(workspace):
    proc = notebench("config", env={"NOTEBENCH_TRAINING_SEED": "7"}, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("training.seed"))
    assert "= 7" in line and "NOTEBENCH_TRAINING_SEED" in line
    assert str(workspace) in proc.stdout


def test_config_json(workspace):
    data = json.loads(notebench("config", "--json", check=True).stdout)
    assert data["workspace.path"]["value"] == str(workspace)
    assert data["pipeline.timeout"] == {"value": 1800, "type": "int", "source": data["pipeline.timeout"]["source"]}


def test_misspelled_key_is_a_clear_error(workspace):
    proc = notebench("config", env={"NOTEBENCH_TRAINING_SEEDS": "7"})
    assert proc.returncode == 2
    assert "NOTEBENCH_TRAINING_SEEDS" in proc.stderr and "Traceback" not in proc.stderr


def test_wrong_type_names_key_and_type(workspace):
    proc = notebench("config", env={"NOTEBENCH_PIPELINE_RETRIES": "twice"})
    assert proc.returncode == 2
    assert "retries" in proc.stderr and "(int)" in proc.stderr and "settings.ini" in proc.stderr


def test_missing_settings_file(workspace, tmp_path):
    proc = notebench("config", env={"NOTEBENCH_SETTINGS": str(tmp_path / "absent.ini")})
    assert proc.returncode == 2 and "absent.ini" in proc.stderr and "not found" in proc.stderr


def test_no_command_prints_help_and_exits_2():
    proc = notebench()
    assert proc.returncode == 2 and "usage: notebench" in proc.stdout


def test_unknown_subcommand_exits_2():
    assert notebench("frobnicate").returncode == 2
