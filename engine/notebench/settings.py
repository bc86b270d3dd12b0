"""settings.ini: the schema of every key, the loader with environment overrides, and where each value came from.

The schema lives here (types and defaults); `settings.ini` at the project root documents every key beside its
value. A value is taken from, in order: the environment (`NOTEBENCH_<SECTION>_<KEY>`), the settings file, the
schema's default. Unknown sections and keys, and values of the wrong type, raise `SettingsError` naming the
file, the key and the expected type.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notebench.errors import SettingsError

__all__ = ["SCHEMA", "Key", "Settings", "Value", "find_settings_file", "load_settings", "project_root"]

ENV_PREFIX = "NOTEBENCH_"
SETTINGS_ENV = "NOTEBENCH_SETTINGS"  # points at another settings file
FILE_NAME = "settings.ini"


# ---------------------------------------------------------------------------------------------------------
# value types: each turns the text of a value into a Python value or raises ValueError saying what it wanted


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected a boolean (true/false, yes/no, on/off, 1/0)")


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("expected an integer") from None


def _parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError("expected a number") from None


def _parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]


@dataclass(frozen=True)
class Key:
    """One setting: its type name, parser, default (as text, as written in settings.ini) and allowed range."""

    type: str  # shown in errors and in `notebench config`: int, float, bool, str, path, list, or a choice
    default: str  # the default as it would be written in settings.ini
    doc: str  # one line, shown by `notebench config --doc`
    choices: tuple[str, ...] = ()  # allowed values of a choice key
    minimum: float | None = None  # smallest allowed value of a numeric key

    def parse(self, text: str) -> Any:
        """The typed value of `text`, or ValueError naming what was expected."""
        parser: Callable[[str], Any] = _PARSERS[self.type] if not self.choices else str.strip
        value = parser(text)
        if self.choices and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"expected a {self.type} of at least {self.minimum:g}")
        return value


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str.strip,
    "path": str.strip,
    "int": _parse_int,
    "float": _parse_float,
    "bool": _parse_bool,
    "list": _parse_list,
}


def _k(type_: str, default: str, doc: str, **kw) -> Key:
    return Key(type_, default, doc, **kw)


SCHEMA: dict[str, dict[str, Key]] = {
    "workspace": {
        "path": _k("path", ".notebench", "folder of all runtime state; relative to the settings file"),
    },
    "use_case": {
        "object": _k("str", "nbs_lib.use_case:USE_CASE", "the use-case contract: module:NAME of a notebench UseCase"),
    },
    "tracking": {
        "uri": _k("str", "", "MLflow tracking URI; empty: SQLite in the workspace"),
        "experiment": _k("str", "notebench", "MLflow experiment for pipeline runs and notebooks"),
    },
    "registry": {
        "uri": _k("str", "", "MLflow registry URI; empty: the tracking URI"),
        "model_name": _k("str", "notebench-model", "registered model name"),
    },
    "pipeline": {
        "parallelism": _k("int", "2", "steps run at once", minimum=1),
        "timeout": _k("int", "1800", "seconds a step may run before it is stopped", minimum=1),
        "retries": _k("int", "0", "extra attempts for a failed step", minimum=0),
        "warm_imports": _k("list", "pandas, numpy, sklearn.ensemble, mlflow",
                            "modules imported before a step starts"),
        "executor": _k("str", "local", "where steps run: local (threads + warm kernels here), dask, or an executor "
                       "a package registers (entry points notebench.executors)"),
    },
    "dask": {
        "scheduler": _k("str", "local", "the Dask scheduler: local (a cluster of worker processes on this machine, "
                        "for the run) or its address, tcp://host:8786"),
        "workers": _k("int", "2", "worker processes of a local cluster", minimum=1),
        "connect_timeout": _k("float", "10", "seconds to reach the scheduler before giving up, naming it",
                              minimum=1),
    },
    "training": {
        "seed": _k("int", "42", "random seed for splits, models and the tuner"),
        "holdout_days": _k("int", "7", "most recent days held out for evaluation", minimum=1),
        "n_trials": _k("int", "20", "tuning trials per training run", minimum=1),
        "tuning_timeout": _k("int", "600", "seconds the tuner may spend", minimum=1),
        "trial_workers": _k("int", "1", "trials at once, each a Dask task on [dask] scheduler's workers; 1: in the "
                            "train step's kernel, reproducible", minimum=1),
    },
    "gates": {
        "min_auc": _k("float", "0.70", "smallest ROC AUC a model may have on the holdout", minimum=0),
        "max_regression": _k("float", "0.01", "largest AUC drop against the champion, overall", minimum=0),
        "segment_tolerance": _k("float", "0.02", "largest AUC drop against the champion on a segment", minimum=0),
        "data_null_increase": _k("float", "0.2", "a feature's null-rate rise over the reference that stops a run",
                                 minimum=0),
        "data_skew_distance": _k("float", "0.1", "distribution distance of new data recorded as skew", minimum=0),
        "promotion": _k("str", "auto", "move `champion` to a blessed model by itself or by hand",
                        choices=("auto", "manual")),
        "deploy_check": _k("bool", "false", "promotion to champion needs a passed `notebench deploy-check`"),
    },
    "features": {
        "project": _k("str", "notebench", "Feast project name"),
        "ttl_days": _k("int", "30", "how old a feature value may be and still be served", minimum=1),
    },
    "serving": {
        "host": _k("str", "127.0.0.1", "address the prediction service binds to"),
        "port": _k("int", "8080", "port of the prediction service", minimum=1),
        "alias": _k("str", "champion", "registry alias whose version is served"),
        "watch_interval": _k("float", "10", "seconds between checks of the alias; 0: only POST /reload", minimum=0),
        "shadow": _k("str", "", "alias that also predicts every request, logged, never returned; empty: none"),
        "log_predictions": _k("bool", "true", "write every prediction to the workspace's prediction log"),
        "flush_interval": _k("float", "1.0", "seconds between prediction log flushes (the most a kill -9 loses)",
                             minimum=0.01),
        "flush_rows": _k("int", "10000", "flush the prediction log earlier when this many rows wait", minimum=1),
        "max_buffered_rows": _k("int", "1000000", "log rows held in memory before new ones are dropped (counted)",
                                minimum=1),
        "max_body_bytes": _k("int", "8388608", "larger request bodies are refused with 413", minimum=1),
        "max_batch_rows": _k("int", "256", "rows the micro-batcher puts in one model call", minimum=1),
        "threads": _k("int", "1", "OpenMP/BLAS threads per prediction", minimum=1),
        "token": _k("str", "", "bearer token /feedback and /reload require; empty: none (use the environment)"),
        "check_requests": _k("int", "300", "requests `notebench deploy-check` sends in its load test", minimum=1),
        "check_concurrency": _k("int", "4", "concurrent clients in the deploy-check load test", minimum=1),
        "check_max_p99_ms": _k("float", "0", "deploy-check fails above this p99 latency; 0: no limit", minimum=0),
    },
    "monitoring": {
        "window": _k("int", "1000", "predictions per monitoring window", minimum=1),
        "p_value": _k("float", "0.05", "drift when a test's p-value is below this", minimum=0),
        "distance": _k("float", "0.1", "drift when a distance is above this", minimum=0),
        "drift_share": _k("float", "0.5", "dataset drift when this share of features drift", minimum=0),
        "small_sample": _k("int", "1000", "windows smaller than this use tests (KS, chi-squared), larger distances",
                           minimum=1),
        "min_labels": _k("int", "100", "labelled predictions a window needs before its quality is judged",
                         minimum=1),
        "max_auc_drop": _k("float", "0.05", "quality alert when live AUC falls this far below the holdout's",
                           minimum=0),
        "quality_share": _k("float", "0.05", "data-quality alert when a feature's null rate rises by more than "
                            "this, or this share of its values is out of the reference range or unseen", minimum=0),
        "settle": _k("float", "10", "seconds a prediction must be old before it is judged (its log segment is "
                     "surely flushed)", minimum=0),
    },
    "triggers": {
        "schedule": _k("str", "", "cron expression for scheduled training; empty: none"),
        "cooldown": _k("int", "3600", "seconds after a run during which drift does not retrain", minimum=0),
        "kinds": _k("list", "schedule, new_data, drift, quality, on_demand", "trigger kinds that may start training"),
        "pipeline": _k("str", "training", "the pipeline that triggers start"),
        "interval": _k("float", "30", "seconds between passes of `notebench watch`", minimum=0.1),
    },
    "dashboards": {
        "host": _k("str", "127.0.0.1", "address the Voila dashboards bind to"),
        "port": _k("int", "8866", "port of the Voila dashboards", minimum=1),
    },
    "environments": {
        "names": _k("list", "dev, staging, prod", "environments, in promotion order"),
        "prod_min_staging_runs": _k("int", "2", "green staging runs before prod accepts a bundle", minimum=0),
    },
}


# ---------------------------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True)
class Value:
    """An effective setting: the typed value, its text and where it came from."""

    value: Any
    text: str
    source: str  # "default", the settings file's path, or the environment variable's name


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding settings.ini or pyproject.toml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / FILE_NAME).is_file() or (folder / "pyproject.toml").is_file():
            return folder
    return here


def find_settings_file(environ=None, start: Path | None = None) -> Path:
    """The settings file to read: `$NOTEBENCH_SETTINGS`, else settings.ini in the project root."""
    environ = os.environ if environ is None else environ
    if environ.get(SETTINGS_ENV):
        return Path(environ[SETTINGS_ENV]).expanduser().resolve()
    return project_root(start) / FILE_NAME


@dataclass
class Settings:
    """The effective settings: `settings["pipeline"]["timeout"]` or `settings.value("pipeline", "timeout")`."""

    file: Path  # the settings file that was read
    values: dict[str, dict[str, Value]] = field(default_factory=dict)

    def __getitem__(self, section: str) -> dict[str, Any]:
        return {key: v.value for key, v in self.values[section].items()}

    def value(self, section: str, key: str) -> Any:
        """The typed value of `section`.`key`."""
        return self.values[section][key].value

    @property
    def root(self) -> Path:
        """The folder relative paths are taken from: the settings file's folder."""
        return self.file.parent

    def path(self, section: str, key: str) -> Path:
        """A path setting made absolute against the settings file's folder."""
        return (self.root / Path(self.value(section, key)).expanduser()).resolve()

    def rows(self):
        """(section, key, type, text, source) for every key, in schema order."""
        for section, keys in SCHEMA.items():
            for key, spec in keys.items():
                v = self.values[section][key]
                yield section, key, spec.type if not spec.choices else "|".join(spec.choices), v.text, v.source


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides `section`.`key`."""
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def _read_file(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        raise SettingsError(
            "settings file not found; create it (the project's settings.ini documents every key) "
            f"or point {SETTINGS_ENV} at one", file=path)
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None, strict=True)
    parser.optionxform = str  # keep keys as written so that a wrong case is reported, not folded
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise SettingsError(f"cannot parse: {exc.message.splitlines()[0]}", file=path) from exc
    return {section: dict(parser[section]) for section in parser.sections()}


def _typed(spec: Key, text: str, *, file, section: str, key: str, origin: str) -> Any:
    try:
        return spec.parse(text)
    except ValueError as exc:
        raise SettingsError(f"[{section}] {key} = {text!r} (from {origin}): {exc} ({spec.type})",
                            file=file, key=f"{section}.{key}", expected=spec.type) from None


def _check_env(environ, file: Path) -> None:
    """Refuse a NOTEBENCH_<SECTION>_<KEY> variable whose section exists but whose key does not."""
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name == SETTINGS_ENV:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        for section, keys in SCHEMA.items():
            if rest.startswith(section + "_") and rest[len(section) + 1:] not in keys:
                raise SettingsError(
                    f"environment variable {name} names no key of [{section}]; known keys: {', '.join(keys)}",
                    file=file, key=f"{section}.{rest[len(section) + 1:]}")


def load_settings(file: Path | str | None = None, environ=None) -> Settings:
    """Read, check and type the settings file, applying `NOTEBENCH_<SECTION>_<KEY>` overrides."""
    environ = os.environ if environ is None else environ
    path = Path(file).resolve() if file else find_settings_file(environ)
    raw = _read_file(path)
    for section, keys in raw.items():
        if section not in SCHEMA:
            raise SettingsError(f"unknown section [{section}]; known sections: {', '.join(SCHEMA)}",
                                file=path, key=section)
        for key in keys:
            if key not in SCHEMA[section]:
                raise SettingsError(f"unknown key {key!r} in [{section}]; known keys: {', '.join(SCHEMA[section])}",
                                    file=path, key=f"{section}.{key}")
    _check_env(environ, path)
    settings = Settings(file=path)
    for section, keys in SCHEMA.items():
        settings.values[section] = {}
        for key, spec in keys.items():
            name = env_name(section, key)
            if name in environ:
                text, source = environ[name], name
            elif key in raw.get(section, {}):
                text, source = raw[section][key], str(path)
            else:
                text, source = spec.default, "default"
            value = _typed(spec, text, file=path, section=section, key=key, origin=source)
            settings.values[section][key] = Value(value, text.strip(), source)
    return settings
