"""settings.ini: schema, overrides, sources and the errors a user meets."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from notebench.errors import SettingsError
from notebench.settings import SCHEMA, env_name, load_settings

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.ini"
    path.write_text(text)
    return path


def test_shipped_file_documents_every_key():
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(ROOT / "settings.ini")
    text = (ROOT / "settings.ini").read_text()
    assert list(parser.sections()) == list(SCHEMA)
    for section, keys in SCHEMA.items():
        assert list(parser[section]) == list(keys), section
        for key, spec in keys.items():
            spec.parse(parser[section][key])
            assert f"# {key} " in text or f"# {key}:" in text, f"{section}.{key} has no comment"


def test_values_are_typed_and_sources_named(tmp_path):
    path = write(tmp_path, "[pipeline]\ntimeout = 60\nwarm_imports = a, b\n")
    s = load_settings(path, environ={})
    assert s.value("pipeline", "timeout") == 60
    assert s.value("pipeline", "warm_imports") == ["a", "b"]
    assert s.values["pipeline"]["timeout"].source == str(path)
    assert s.values["pipeline"]["retries"].source == "default"


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "[pipeline]\ntimeout = 60\n")
    s = load_settings(path, environ={env_name("pipeline", "timeout"): "5"})
    assert s.value("pipeline", "timeout") == 5
    assert s.values["pipeline"]["timeout"].source == "NOTEBENCH_PIPELINE_TIMEOUT"


def test_workspace_path_is_relative_to_the_settings_file(tmp_path):
    path = write(tmp_path, "[workspace]\npath = state\n")
    assert load_settings(path, environ={}).path("workspace", "path") == tmp_path / "state"


@pytest.mark.parametrize("text, environ, words", [
    ("[pipeline]\ntimout = 3\n", {}, ["unknown key 'timout'", "[pipeline]", "timeout"]),
    ("[pipelines]\n", {}, ["unknown section [pipelines]"]),
    ("[pipeline]\ntimeout = soon\n", {}, ["timeout", "'soon'", "expected an integer", "(int)"]),
    ("[pipeline]\nparallelism = 0\n", {}, ["parallelism", "at least 1"]),
    ("[gates]\npromotion = sometimes\n", {}, ["promotion", "auto, manual"]),
    ("", {"NOTEBENCH_PIPELINE_TIMOUT": "1"}, ["NOTEBENCH_PIPELINE_TIMOUT", "known keys"]),
    ("", {"NOTEBENCH_SERVING_PORT": "http"}, ["NOTEBENCH_SERVING_PORT", "expected an integer"]),
    ("[pipeline\n", {}, ["cannot parse"]),
])
def test_bad_settings_name_file_key_and_expectation(tmp_path, text, environ, words):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        load_settings(path, environ=environ)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(SettingsError, match="NOTEBENCH_SETTINGS"):
        load_settings(tmp_path / "nope.ini", environ={})


def test_settings_env_points_at_another_file(tmp_path):
    path = write(tmp_path, "[serving]\nport = 9999\n")
    s = load_settings(environ={"NOTEBENCH_SETTINGS": str(path)})
    assert s.file == path and s.value("serving", "port") == 9999
