"""settings.ini: the schema of every key, the loader with environment overrides, and where each value came from.

The schema lives here (types and defaults); `settings.ini` at the project root documents every key beside its
value. A value is taken from, in order: the environment (`NOTEBENCH_<SECTION>_<KEY>`), the settings file, the
schema's default. Unknown sections and keys, and values of the wrong type, raise `SettingsError` naming the
file, the key and the expected type.

Deployment environments (`[environments] names`) may override keys in sections of their own,
`[environments.<name>]`, one `section.key = value` per line; they are checked (known name, known key, typed value)
whenever the file is read, so a release whose settings fail is refused at build and at deploy. Settings read *for*
an environment (`load_settings(env=...)`, or `NOTEBENCH_ENVIRONMENT` set, as it is for everything that runs in an
environment) apply its overrides over the file (variables still win), and keep the environment apart from the
others unless its section says otherwise: its workspace is `<environment home>/workspace` (the deployed
environment's own MLflow store, Feast repo, Optuna storage, products, trigger queue and prediction log), and its
experiment and registered model are `<name>-<environment>`.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notebench.errors import SettingsError

__all__ = ["ENVIRONMENT_ENV", "ENVIRONMENT_HOME_ENV", "SCHEMA", "Key", "Settings", "Value", "find_settings_file",
           "load_settings", "project_root"]

ENV_PREFIX = "NOTEBENCH_"
MASK = "***"  # what `notebench config` shows of a secret
SETTINGS_ENV = "NOTEBENCH_SETTINGS"  # points at another settings file
ENVIRONMENT_ENV = "NOTEBENCH_ENVIRONMENT"  # the deployment environment this process runs in
ENVIRONMENT_HOME_ENV = "NOTEBENCH_ENVIRONMENT_HOME"  # that environment's folder (<workspace>/environments/<name>)
FILE_NAME = "settings.ini"
OVERRIDES = "environments."  # prefix of the sections that override keys for one environment
NOT_PER_ENVIRONMENT = {"workspace.path", "environments.names", "environments.signing_key"}  # fixed for all of them
ISOLATED = (("tracking", "experiment"), ("registry", "model_name"))  # named <value>-<environment> by default


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


def _parse_optional_float(text: str) -> float | None:
    return None if not text.strip() else _parse_float(text)


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
    secret: str = ""  # how the value is shown: "uri" masks a URI's credentials, "all" hides it; "": as it is

    def shown(self, text: str) -> str:
        """The value's text as it may be printed: credentials masked."""
        if not self.secret or not text:
            return text
        if self.secret == "all":
            return MASK
        from notebench.state.uri import mask_uri

        return mask_uri(text)

    def parse(self, text: str) -> Any:
        """The typed value of `text`, or ValueError naming what was expected."""
        parser: Callable[[str], Any] = _PARSERS[self.type] if not self.choices else str.strip
        value = parser(text)
        if self.choices and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}")
        if self.minimum is not None and value is not None and value < self.minimum:
            raise ValueError(f"expected a {self.type} of at least {self.minimum:g}")
        return value


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str.strip,
    "path": str.strip,
    "int": _parse_int,
    "float": _parse_float,
    "float or empty": _parse_optional_float,
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
    "state": {
        "uri": _k("str", "", "the engine's records (SQLAlchemy URL: sqlite:///PATH or postgresql://USER@HOST/DB); "
                  "empty: SQLite in the workspace", secret="uri"),
        "connect_timeout": _k("float", "5", "seconds to wait for a state, tracking or study server before failing",
                              minimum=0.5),
        "lease_ttl": _k("float", "30", "seconds a run's lease lives without a heartbeat (then it counts as dead)",
                        minimum=1),
    },
    "tracking": {
        "uri": _k("str", "", "MLflow tracking URI; empty: SQLite in the workspace", secret="uri"),
        "experiment": _k("str", "notebench", "MLflow experiment for pipeline runs and notebooks"),
    },
    "registry": {
        "uri": _k("str", "", "MLflow registry URI; empty: the tracking URI", secret="uri"),
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
        "study_storage": _k("str", "", "Optuna storage URL (sqlite:///PATH, postgresql://...); empty: SQLite in the "
                            "workspace", secret="uri"),
        "study_heartbeat": _k("int", "30", "seconds between a trial's heartbeats; a trial silent for twice this is "
                              "marked failed; 0: no heartbeat", minimum=0),
        "n_trials": _k("int", "20", "tuning trials per training run", minimum=1),
        "tuning_timeout": _k("int", "600", "seconds the tuner may spend", minimum=1),
        "trial_workers": _k("int", "1", "trials at once, each a Dask task on [dask] scheduler's workers; 1: in the "
                            "train step's kernel, reproducible", minimum=1),
    },
    "gates": {
        "metric_threshold": _k("float or empty", "", "the primary metric's absolute threshold on the holdout (a "
                               "minimum or a maximum, by the use case's direction); empty: none"),
        "max_regression": _k("float", "0.01", "how much worse than the champion's the primary metric may be, "
                             "overall (its units)", minimum=0),
        "segment_tolerance": _k("float", "0.02", "how much worse than the champion's the primary metric may be on "
                                "a segment (its units)", minimum=0),
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
        "registry": _k("str", "", "Feast SQL registry URL (postgresql://...); empty: a file in the feature repo",
                       secret="uri"),
        "online_store": _k("str", "sqlite", "Feast online store: sqlite (in the feature repo) or a postgresql:// URL",
                           secret="uri"),
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
        "token": _k("str", "", "bearer token /feedback and /reload require; empty: none (use the environment)",
                    secret="all"),
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
        "max_metric_drop": _k("float", "0.05", "quality alert when the live primary metric is this much worse "
                              "than the holdout's (its units, its direction)", minimum=0),
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
        "keep_releases": _k("int", "3", "releases (and their venvs) each environment keeps; the current one always",
                            minimum=1),
        "compile_bytecode": _k("bool", "true", "compile a new lock's packages to bytecode after the deploy, in the "
                               "background (imports then take half the time)"),
        "signing_key": _k("str", "", "HMAC key that signs CI results and releases, and that deploys then require; "
                          "empty: none. Set NOTEBENCH_ENVIRONMENTS_SIGNING_KEY, never the file (it ships)",
                          secret="all"),
    },
}


# keys that were renamed: an old name in a settings file or the environment is refused, naming the new one
RENAMED: dict[tuple[str, str], tuple[str, str, str]] = {
    ("gates", "min_auc"): ("gates", "metric_threshold", "the primary metric's absolute threshold, in its units; "
                           "the use case's direction says whether it is a minimum or a maximum"),
    ("monitoring", "max_auc_drop"): ("monitoring", "max_metric_drop", "how much worse than the holdout's the live "
                                     "primary metric may be, in its units"),
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
    environment: str | None = None  # the deployment environment they were read for (None: the project's own)
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)  # [environments.<name>]: {"section.key": text}

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

    def shown(self, section: str, key: str) -> str:
        """The text of `section`.`key` as it may be printed: credentials in URIs masked, secrets hidden."""
        return SCHEMA[section][key].shown(self.values[section][key].text)

    def rows(self):
        """(section, key, type, text as it may be shown, source) for every key, in schema order."""
        for section, keys in SCHEMA.items():
            for key, spec in keys.items():
                v = self.values[section][key]
                yield section, key, spec.type if not spec.choices else "|".join(spec.choices), spec.shown(v.text), \
                    v.source


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides `section`.`key`."""
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def _read_file(path: Path) -> dict[str, dict[str, str]]:
    """The file's sections and their keys as written (text)."""
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
        raise SettingsError(f"[{section}] {key} = {spec.shown(text)!r} (from {origin}): {exc} ({spec.type})",
                            file=file, key=f"{section}.{key}", expected=spec.type) from None


def _renamed(section: str, key: str, where: str, file: Path) -> SettingsError:
    """The error for an old key name: where it was found, its new name and what the new key means."""
    new_section, new_key, meaning = RENAMED[(section, key)]
    return SettingsError(f"[{section}] {key} ({where}) was renamed: use [{new_section}] {new_key} "
                         f"({env_name(new_section, new_key)} in the environment): {meaning}",
                         file=file, key=f"{section}.{key}", expected=f"{new_section}.{new_key}")


def _check_env(environ, file: Path) -> None:
    """Refuse a NOTEBENCH_<SECTION>_<KEY> variable whose section exists but whose key does not."""
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name == SETTINGS_ENV:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        for section, keys in SCHEMA.items():
            if rest.startswith(section + "_") and (section, rest[len(section) + 1:]) in RENAMED:
                raise _renamed(section, rest[len(section) + 1:], f"environment variable {name}", file)
            if rest.startswith(section + "_") and rest[len(section) + 1:] not in keys:
                raise SettingsError(
                    f"environment variable {name} names no key of [{section}]; known keys: {', '.join(keys)}",
                    file=file, key=f"{section}.{rest[len(section) + 1:]}")


def _check_sections(raw: dict[str, dict[str, str]], path: Path) -> None:
    """Refuse an unknown section or key (the per-environment sections are checked later, with the names)."""
    for section, keys in raw.items():
        if section.startswith(OVERRIDES):
            continue
        if section not in SCHEMA:
            raise SettingsError(f"unknown section [{section}]; known sections: {', '.join(SCHEMA)}, and "
                                "[environments.<name>] for each of [environments] names", file=path, key=section)
        for key in keys:
            if (section, key) in RENAMED:
                raise _renamed(section, key, "in the settings file", path)
            if key not in SCHEMA[section]:
                raise SettingsError(f"unknown key {key!r} in [{section}]; known keys: {', '.join(SCHEMA[section])}",
                                    file=path, key=f"{section}.{key}")


def _check_overrides(overrides: dict[str, dict[str, str]], names: list[str], path: Path) -> None:
    """Each [environments.<name>] names a known environment, and each of its `section.key` a known key whose
    value parses; keys that must be the same everywhere are refused."""
    for env, keys in overrides.items():
        if env not in names:
            raise SettingsError(f"[{OVERRIDES}{env}] is not one of the environments ([environments] names = "
                                f"{', '.join(names)})", file=path, key=f"{OVERRIDES}{env}")
        for dotted, text in keys.items():
            section, _, key = dotted.partition(".")
            if section not in SCHEMA or key not in SCHEMA[section]:
                raise SettingsError(f"[{OVERRIDES}{env}] {dotted}: no such key; write section.key = value, e.g. "
                                    "serving.port = 8081", file=path, key=f"{OVERRIDES}{env}.{dotted}")
            if dotted in NOT_PER_ENVIRONMENT:
                raise SettingsError(f"[{OVERRIDES}{env}] {dotted}: this key is the same for every environment "
                                    "(an environment's workspace is <workspace>/environments/<name>/workspace)",
                                    file=path, key=f"{OVERRIDES}{env}.{dotted}")
            _typed(SCHEMA[section][key], text, file=path, section=section, key=key, origin=f"[{OVERRIDES}{env}]")


def _for_environment(settings: Settings, env: str, environ, path: Path) -> None:
    """Apply environment `env`'s overrides (variables still win) and keep its state apart from the others'."""
    names = settings.value("environments", "names")
    if env not in names:
        raise SettingsError(f"environment {env!r} ({ENVIRONMENT_ENV}) is not one of [environments] names = "
                            f"{', '.join(names)}", file=path, key="environments.names")
    own = settings.overrides.get(env, {})
    origin = f"[{OVERRIDES}{env}] in {path}"
    for dotted, text in own.items():
        section, _, key = dotted.partition(".")
        if env_name(section, key) not in environ:
            value = _typed(SCHEMA[section][key], text, file=path, section=section, key=key, origin=origin)
            settings.values[section][key] = Value(value, text.strip(), origin)
    for section, key in ISOLATED:
        current = settings.values[section][key]
        if f"{section}.{key}" not in own and not current.text.endswith(f"-{env}"):
            text = f"{current.text}-{env}"
            settings.values[section][key] = Value(text, text, f"environment {env} ({current.source}, suffixed)")
    home = environ.get(ENVIRONMENT_HOME_ENV)
    if home:  # the environment's own state, whatever NOTEBENCH_WORKSPACE_PATH the caller had
        text = str(Path(home) / "workspace")
        settings.values["workspace"]["path"] = Value(text, text, f"environment {env} ({ENVIRONMENT_HOME_ENV})")
    settings.environment = env


def load_settings(file: Path | str | None = None, environ=None, env: str | None = None) -> Settings:
    """Read, check and type the settings file, applying `NOTEBENCH_<SECTION>_<KEY>` overrides; for a deployment
    environment (`env`, default `$NOTEBENCH_ENVIRONMENT`), also its `[environments.<env>]` overrides."""
    environ = os.environ if environ is None else environ
    path = Path(file).resolve() if file else find_settings_file(environ)
    raw = _read_file(path)
    _check_sections(raw, path)
    _check_env(environ, path)
    overrides = {name[len(OVERRIDES):]: keys for name, keys in raw.items() if name.startswith(OVERRIDES)}
    settings = Settings(file=path, overrides=overrides)
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
    _check_overrides(overrides, settings.value("environments", "names"), path)
    env = env or environ.get(ENVIRONMENT_ENV) or None
    if env:
        _for_environment(settings, env, environ, path)
    return settings
