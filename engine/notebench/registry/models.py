"""The model registry: blessing gates, versions with lineage, aliases, promotion with a durable history, rollback.

Every function takes an `MlflowClient` and explicit names, and knows nothing about the use case: a model is a
registered name, its versions and the tags on them. Serving follows aliases only (`champion`, and `challenger`
for the newest blessed candidate); MLflow's stages are never used.

What lives where:

| tag | on | value |
|---|---|---|
| `notebench.blessed` | version | `true` / `false`: the blessing gate's verdict |
| `notebench.blessing.reasons` | version | JSON list of the verdict's readable reasons |
| `notebench.metric.<name>` | version | a key holdout metric (e.g. `auc`, `rmse`), for listings without reading runs |
| `notebench.model_uri` | version | the logged model it was registered from (registering it again reuses the version) |
| `notebench.deploy_check.*` | version | the last `notebench deploy-check`: status, at, qps, p50/p99, reasons, run |
| `notebench.promoted.*`, `notebench.forced.*` | version | who promoted it, when, why; a forced promotion's override |
| `notebench.champion_history` | registered model | a readable copy of the champion history (folded to fit a tag) |

The champion history lives in the state database (`notebench.state`, table `champion_history`: SQLite in the
workspace, PostgreSQL for a team) and is the source of truth for rollback: promotions push a version, rollbacks pop
back to the previous one, so "roll back twice" walks back two champions. A champion change is atomic: under the
state's lock `champion:<model>` (flock, or a PostgreSQL advisory lock shared by every machine) it reads the current
champion, checks the gates, then records the event and moves the alias in one transaction of the state database
(the alias moves last, inside it: an alias that cannot move leaves no event behind). So two promoters at once
queue behind each other: the second sees the first's champion as `previous`, and no event is lost, which a JSON
tag rewritten by read-modify-write could not promise. The registered model's tag is rewritten from the table
afterwards, for people browsing MLflow; a registry whose history is only in that tag (from before the state
database) has it imported on its first champion change.

Functions that touch the history take `state=` (a `notebench.state.State`); None opens the settings' workspace's.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime

from notebench.errors import DeployCheckRequired, ModelNotBlessed, NoPreviousChampion, RegistryError

__all__ = ["BLESSED_TAG", "CHALLENGER", "CHAMPION", "DEPLOY_CHECK_TAG", "HISTORY_TAG", "METRIC_PREFIX", "NO_BASELINE",
           "REASONS_TAG", "blessing", "blessing_markdown", "blessing_tags", "champion", "deploy_checked", "history",
           "infra_check", "metric_tags", "promote", "register", "rollback", "set_aliases", "versions"]

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
BLESSED_TAG = "notebench.blessed"
REASONS_TAG = "notebench.blessing.reasons"
METRIC_PREFIX = "notebench.metric."
SOURCE_TAG = "notebench.model_uri"
HISTORY_TAG = "notebench.champion_history"
DEPLOY_CHECK_TAG = "notebench.deploy_check.status"  # passed | failed, written by `notebench deploy-check`
HISTORY_LIMIT = 90_000  # characters kept in the history tag (MLflow allows 100,000 in a registered-model tag)
CHAMPION_WAIT = 120.0  # seconds a champion change waits for another one of the same model to finish
NO_BASELINE = "no champion yet: no baseline to compare with"


# blessing gates -------------------------------------------------------------------------------------------
def _fmt(value) -> str:
    return "undefined" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _defined(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _check(kind: str, scope: str, status: str, reason: str, **fields) -> dict:
    """One gate check: what was checked, on what scope, its status (passed|failed|skipped) and why."""
    return {"check": kind, "scope": scope, "status": status, "passed": status != "failed", "reason": reason, **fields}


def _better(maximize: bool) -> tuple[str, str]:
    """How a value meets a threshold in the metric's direction: (comparison, the threshold's name)."""
    return (">=", "minimum") if maximize else ("<=", "maximum")


def _absolute(metric: str, value, threshold: float | None, maximize: bool = True) -> dict:
    """The candidate's metric overall against the absolute threshold (`[gates] metric_threshold`), in its direction."""
    sign, bound_name = _better(maximize)
    if threshold is None:
        return _check("minimum", "overall", "skipped", f"{metric} overall {_fmt(value)}: no absolute threshold "
                      "([gates] metric_threshold is empty)", metric=metric, value=value if _defined(value) else None,
                      bound=None)
    if not _defined(value):
        return _check("minimum", "overall", "failed", f"{metric} overall is undefined on the holdout (e.g. one class "
                      f"only): cannot show it reaches the {bound_name} {threshold:.4f}", metric=metric, value=None,
                      bound=threshold)
    ok = value >= threshold if maximize else value <= threshold
    worse = "<" if maximize else ">"
    reason = (f"{metric} overall {_fmt(value)} {sign if ok else worse} {bound_name} {threshold:.4f}"
              + ("" if ok else f": {'below' if maximize else 'above'} the absolute threshold"))
    return _check("minimum", "overall", "passed" if ok else "failed", reason, metric=metric, value=value,
                  bound=threshold)


def _against(metric: str, scope: str, value, base, tolerance: float, bound_name: str, label: str,
             maximize: bool = True) -> dict:
    """`value` may be at most `tolerance` worse than `base` (lower when maximizing, higher when minimizing);
    undefined on either side skips the check, saying so."""
    kind = "regression" if scope == "overall" else "segment"
    where = "overall" if scope == "overall" else f"on segment {scope}"
    fields = dict(metric=metric, value=value if _defined(value) else None,
                  baseline=base if _defined(base) else None, bound=tolerance)
    if not (_defined(value) and _defined(base)):
        who = " and ".join(w for w, v in (("the candidate", value), (label, base)) if not _defined(v))
        return _check(kind, scope, "skipped", f"{metric} {where} skipped: undefined for {who} (e.g. one class only "
                      "in this slice of the holdout), so it cannot be compared", **fields)
    drop = (base - value) if maximize else (value - base)  # how much worse the candidate is, in the metric's units
    ok = drop <= tolerance + 1e-12
    within = f"{'within' if ok else 'more than'} {bound_name} {tolerance:.4f}"
    if maximize and drop > 0:
        reason = f"{metric} {where} dropped {drop:.4f} against {label} ({_fmt(value)} vs {_fmt(base)}), {within}"
    elif maximize:
        reason = f"{metric} {where} did not drop against {label} ({_fmt(value)} vs {_fmt(base)})"
    elif drop > 0:
        reason = f"{metric} {where} {_fmt(value)} rose {drop:.4f} above {label}'s {_fmt(base)}, {within}"
    else:
        reason = f"{metric} {where} {_fmt(value)} did not rise above {label}'s {_fmt(base)}"
    return _check(kind, scope, "passed" if ok else "failed", reason, drop=drop, **fields)


def blessing(candidate: dict, baseline: dict | None = None, *, threshold: float | None = None,
             max_regression: float, segment_tolerance: float, metric: str = "auc", direction: str = "maximize",
             baseline_label: str = "the champion", baseline_error: str | None = None, infra: dict | None = None,
             minimum: float | None = None) -> dict:
    """The blessing verdict of a candidate's evaluation report against an absolute threshold and a baseline's report.

    Reports are `{"overall": {metric: ...}, "segments": {"col=value": {metric: ...}}}`, both measured on the same
    holdout; `direction` (maximize | minimize) says which way `metric` is better, and `threshold` (None: no absolute
    check) and the tolerances are in the metric's units (`minimum` is `threshold`'s older name, for a metric to
    maximize); undefined values are NaN or None. `baseline` None means there is nothing to compare with (the first
    model), unless `baseline_error` says a baseline exists but could not be measured, which fails the gate. `infra`
    is an extra check (e.g. from `infra_check`). Returns `{"blessed", "reasons", "checks"}`.
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction {direction!r}: expected maximize or minimize")
    maximize = direction == "maximize"
    threshold = minimum if threshold is None else threshold
    checks = [_absolute(metric, candidate["overall"].get(metric), threshold, maximize)]
    if baseline is None and baseline_error:
        checks.append(_check("baseline", "overall", "failed", f"{baseline_label} could not be scored on this holdout "
                             f"({baseline_error}): compare by hand, then promote with force and a reason",
                             metric=metric))
    elif baseline is None:
        checks.append(_check("baseline", "overall", "skipped", NO_BASELINE, metric=metric))
    else:
        checks.append(_against(metric, "overall", candidate["overall"].get(metric), baseline["overall"].get(metric),
                               max_regression, "max_regression", baseline_label, maximize))
        for scope, values in candidate.get("segments", {}).items():
            base = baseline.get("segments", {}).get(scope)
            if base is None:
                checks.append(_check("segment", scope, "skipped", f"segment {scope} skipped: not in {baseline_label}'s "
                                     "report", metric=metric, value=values.get(metric)))
                continue
            checks.append(_against(metric, scope, values.get(metric), base.get(metric), segment_tolerance,
                                   "segment_tolerance", baseline_label, maximize))
    if infra is not None:
        checks.append(infra)
    blessed = all(c["status"] != "failed" for c in checks)
    failed = [c["reason"] for c in checks if c["status"] == "failed"]
    notes = [c["reason"] for c in checks if c["status"] == "skipped"]
    reasons = failed + notes if not blessed else [c["reason"] for c in checks]
    return {"blessed": blessed, "reasons": reasons, "checks": checks}


def blessing_markdown(result: dict, title: str = "Model blessing") -> str:
    """`blessing`'s result as a Markdown report: the verdict, why, and a table of every check."""
    verdict = "**blessed**" if result["blessed"] else "**not blessed**"
    lines = [f"# {title}", "", f"Verdict: {verdict}", ""]
    lines += [f"- {r}" for r in result["reasons"]]
    lines += ["", "| check | scope | status | value | baseline | bound | reason |", "|---|---|---|---|---|---|---|"]
    for c in result["checks"]:
        cells = [c["check"], c["scope"], c["status"]] + [_fmt(c[k]) if k in c else "" for k in ("value", "baseline")]
        bound = f"{c['bound']:.4f}" if isinstance(c.get("bound"), float | int) else ""
        cells += [bound, c["reason"].replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_LOAD_AND_PREDICT = """
import json, sys, time
import numpy as np
start = time.perf_counter()
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
example = model.input_example
if example is None:
    sys.exit("the model was logged without an input example")
out = np.asarray(model.predict(example), dtype=float)
if len(out) != len(example) or not np.isfinite(out).all():
    sys.exit(f"bad prediction: {len(out)} rows for {len(example)}, finite: {bool(np.isfinite(out).all())}")
print(json.dumps({"rows": len(example), "shape": list(out.shape), "model_id": model.metadata.model_id,
                  "seconds": time.perf_counter() - start}))
"""


def infra_check(model_uri: str, *, tracking_uri: str | None = None, registry_uri: str | None = None,
                timeout: float = 300, python: str = sys.executable) -> dict:
    """Load `model_uri` with `mlflow.pyfunc` in a fresh process and predict its input example, as serving will."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.update({k: v for k, v in (("MLFLOW_TRACKING_URI", tracking_uri), ("MLFLOW_REGISTRY_URI", registry_uri)) if v})
    start = time.perf_counter()
    try:
        proc = subprocess.run([python, "-c", _LOAD_AND_PREDICT, model_uri], capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return _check("infra", "serving", "failed", f"{model_uri} did not load and predict within {timeout:g} s "
                      "in a fresh process")
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return _check("infra", "serving", "failed", f"{model_uri} fails to load or predict in a fresh process: {tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return _check("infra", "serving", "passed", f"{model_uri} loads in a fresh process and predicts its input "
                  f"example ({out['rows']} rows -> shape {tuple(out['shape'])}) in {time.perf_counter() - start:.1f} s",
                  **out)


# versions ---------------------------------------------------------------------------------------------------
def _mlflow_code(exc) -> str:
    return getattr(exc, "error_code", "")


def _missing(exc) -> bool:
    """True when an MlflowException says the model, version or alias does not exist."""
    code = _mlflow_code(exc)
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (code == "INVALID_PARAMETER_VALUE"
                                                                  and "not found" in str(exc))


def _ensure_model(client, model_name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if _mlflow_code(exc) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise RegistryError(f"cannot create the registered model: {exc}", model=model_name) from exc


def _as_tag(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _logged_model_id(model_uri: str) -> str | None:
    """The logged model id of `models:/<id>` (MLflow 3's model URIs); None for other URIs."""
    rest = model_uri[len("models:/"):] if model_uri.startswith("models:/") else ""
    return rest if rest and "/" not in rest and "@" not in rest else None


def register(client, model_name: str, model_uri: str, tags: dict | None = None, *, run_id: str | None = None,
             description: str | None = None) -> str:
    """A registry version of `model_name` for `model_uri`, with `tags`; registering the same URI again reuses it."""
    _ensure_model(client, model_name)
    tags = {k: _as_tag(v) for k, v in (tags or {}).items()}
    for found in client.search_model_versions(f"name='{model_name}'"):
        if found.tags.get(SOURCE_TAG) == model_uri:
            for key, value in tags.items():
                client.set_model_version_tag(model_name, found.version, key, value)
            return str(found.version)
    version = client.create_model_version(model_name, source=model_uri, run_id=run_id, description=description,
                                          tags={**tags, SOURCE_TAG: model_uri}, model_id=_logged_model_id(model_uri))
    return str(version.version)


def blessing_tags(result: dict) -> dict[str, str]:
    """Version tags recording a `blessing` verdict and its reasons."""
    return {BLESSED_TAG: str(bool(result["blessed"])).lower(), REASONS_TAG: json.dumps(result["reasons"])}


def metric_tags(metrics: dict) -> dict[str, str]:
    """Version tags `notebench.metric.<name>` for key metrics (undefined values are left out)."""
    return {METRIC_PREFIX + k: repr(float(v)) for k, v in metrics.items() if _defined(float(v))}


def _version(client, model_name: str, version):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        if _missing(exc):
            raise RegistryError(f"no version {version}", model=model_name, version=str(version)) from exc
        raise


def set_aliases(client, model_name: str, version, aliases) -> list[str]:
    """Point each of `aliases` at `version` (an alias names one version, so it moves); `champion` moves by `promote`."""
    aliases = [aliases] if isinstance(aliases, str) else list(aliases)
    if CHAMPION in aliases:
        raise RegistryError(f"'{CHAMPION}' moves only through promote() or rollback(), which record the history",
                            model=model_name, version=str(version))
    _version(client, model_name, version)
    for alias in aliases:
        client.set_registered_model_alias(model_name, alias, str(version))
    return aliases


def champion(client, model_name: str) -> str | None:
    """The version the `champion` alias points at, or None (no such model, or no champion yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else None


def _blessed(tags: dict) -> bool | None:
    return {"true": True, "false": False}.get(tags.get(BLESSED_TAG, ""))


def _reasons(tags: dict) -> list[str]:
    try:
        return list(json.loads(tags.get(REASONS_TAG, "[]")))
    except ValueError:
        return [tags[REASONS_TAG]]


def versions(client, model_name: str) -> list[dict]:
    """Every version of `model_name`, newest first: aliases, blessing, key metrics, creation time, run, tags."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(model_name).aliases
        found = client.search_model_versions(f"name='{model_name}'")
    except MlflowException as exc:
        if _missing(exc):
            return []
        raise
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = [{"version": str(v.version), "aliases": sorted(by_version.get(str(v.version), [])),
             "blessed": _blessed(v.tags), "reasons": _reasons(v.tags),
             "metrics": {k[len(METRIC_PREFIX):]: float(x) for k, x in v.tags.items() if k.startswith(METRIC_PREFIX)},
             "created": _iso(v.creation_timestamp), "run_id": v.run_id, "source": v.source, "status": v.status,
             "tags": dict(v.tags)} for v in found]
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


# champion history -------------------------------------------------------------------------------------------
def _open(state):
    """`state`, or the settings' workspace's state database."""
    if state is not None:
        return state
    from notebench.state.store import open_state

    return open_state()


def _stored(conn, model_name: str) -> list[dict]:
    from sqlalchemy import select

    from notebench.state.schema import champion_history as t

    return [json.loads(text) for text in conn.execute(
        select(t.c.event).where(t.c.model == model_name).order_by(t.c.id)).scalars()]


def _tagged(client, model_name: str) -> list[dict]:
    """The history as the registered model's tag holds it (the only copy before the state database)."""
    from mlflow.exceptions import MlflowException

    try:
        text = client.get_registered_model(model_name).tags.get(HISTORY_TAG)
    except MlflowException as exc:
        if _missing(exc):
            return []
        raise
    return json.loads(text) if text else []


def history(client, model_name: str, *, state=None) -> list[dict]:
    """Every recorded champion change, oldest first: action, version, previous, who, when, why, forced."""
    with _open(state).read() as conn:
        events = _stored(conn, model_name)
    return events or _tagged(client, model_name)


def _stack(events: list[dict]) -> list[str]:
    """The champions in order, as the history replays: promote pushes, rollback pops back to its version."""
    stack: list[str] = []
    for event in events:
        if event["action"] == "baseline":
            stack = list(event["stack"])
        elif event["action"] == "promote":
            stack.append(event["version"])
        elif event["action"] == "rollback":
            while stack and stack[-1] != event["version"]:
                stack.pop()
            stack = stack or [event["version"]]
    return stack


def _save_history(client, model_name: str, events: list[dict]) -> None:
    """Write the tag copy of the history; when it outgrows MLflow's tag limit, fold the oldest events into a
    baseline (the state database keeps every event)."""
    text = json.dumps(events)
    while len(text) > HISTORY_LIMIT and len(events) > 2:
        cut = max(2, len(events) // 10)  # at least two events become one baseline: the text shrinks
        baseline = {"action": "baseline", "stack": _stack(events[:cut]), "when": events[cut - 1]["when"],
                    "who": "notebench", "why": f"{cut} older events folded to fit MLflow's tag size limit"}
        events = [baseline] + events[cut:]
        text = json.dumps(events)
    client.set_registered_model_tag(model_name, HISTORY_TAG, text)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextmanager
def _changing(state, model_name: str):
    """Hold the model's champion lock: one champion change at a time, on every machine sharing the state."""
    from notebench.state.store import LockBusy

    try:
        with state.lock(f"champion:{model_name}").held(wait=CHAMPION_WAIT):
            yield
    except LockBusy as exc:
        raise RegistryError(f"another champion change is in progress ({exc.holder or 'another process'}) and did not "
                            f"finish within {CHAMPION_WAIT:g} s; try again", model=model_name) from None


def _move(client, state, model_name: str, version: str, event: dict) -> dict:
    """Record `event` and point `champion` at `version` in one transaction of the state database; then refresh
    the tag copy of the history. Called under `_changing`."""
    from notebench.state.schema import champion_history as t

    with state.write() as conn:
        events = _stored(conn, model_name)
        if not events:  # a registry from before the state database: its history so far comes from the tag
            events = _tagged(client, model_name)
            for old in events:
                conn.execute(t.insert().values(model=model_name, action=old["action"], version=old.get("version"),
                                               event=json.dumps(old)))
        conn.execute(t.insert().values(model=model_name, action=event["action"], version=event["version"],
                                       event=json.dumps(event)))
        client.set_registered_model_alias(model_name, CHAMPION, version)  # last: if it fails, nothing is recorded
    try:
        _save_history(client, model_name, events + [event])
    except Exception as exc:  # the change is made and recorded; the tag is only a copy for people
        log.warning("model %s: champion history tag not refreshed (%s); the state database has it", model_name, exc)
    return event


def deploy_checked(tags: dict) -> bool:
    """True when the version's last `notebench deploy-check` passed."""
    return tags.get(DEPLOY_CHECK_TAG) == "passed"


def promote(client, model_name: str, version, *, force: bool = False, reason: str = "", who: str = "",
            require_deploy_check: bool = False, state=None) -> dict:
    """Make `version` the champion. An unblessed version, or one without a passed deploy-check when
    `require_deploy_check` (`[gates] deploy_check`), needs `force` and a reason; the override is recorded."""
    state = _open(state)
    with _changing(state, model_name):
        return _promote(client, model_name, version, force, reason, who, require_deploy_check, state)


def _promote(client, model_name: str, version, force: bool, reason: str, who: str, require_deploy_check: bool,
             state) -> dict:
    mv = _version(client, model_name, version)
    version, who, when = str(mv.version), who or getpass.getuser(), _now()
    blessed = _blessed(mv.tags) is True
    checked = deploy_checked(mv.tags) or not require_deploy_check
    previous = champion(client, model_name)
    if previous == version:
        return {"action": "promote", "version": version, "previous": previous, "changed": False,
                "why": f"version {version} is already the champion"}
    if not blessed and not force:
        raise ModelNotBlessed(model_name, version, _reasons(mv.tags))
    if not checked and not force:
        raise DeployCheckRequired(model_name, version, mv.tags.get(DEPLOY_CHECK_TAG),
                                  mv.tags.get("notebench.deploy_check.at"))
    overridden = [gate for gate, ok in (("blessing", blessed), ("deploy_check", checked)) if not ok]
    if overridden and not reason:
        raise RegistryError(f"forcing past the {' and '.join(overridden)} gate needs a reason, for the record",
                            model=model_name, version=version)
    forced = bool(overridden)
    tags = {"notebench.promoted.at": when, "notebench.promoted.by": who,
            "notebench.promoted.reason": reason or "blessed"}
    if forced:
        tags.update({"notebench.forced": "true", "notebench.forced.by": who, "notebench.forced.at": when,
                     "notebench.forced.reason": reason, "notebench.forced.gates": ",".join(overridden)})
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    event = {"action": "promote", "version": version, "previous": previous, "who": who, "when": when,
             "why": reason or "blessed", "forced": forced, **({"overrode": overridden} if forced else {})}
    return {**_move(client, state, model_name, version, event), "changed": True}


def _exists(client, model_name: str, version: str) -> bool:
    try:
        _version(client, model_name, version)
    except RegistryError:
        return False
    return True


def rollback(client, model_name: str, who: str = "", reason: str = "", *, state=None) -> dict:
    """Move `champion` back to the previous champion in the history (deleted versions are passed over)."""
    state = _open(state)
    with _changing(state, model_name):
        return _rollback(client, model_name, who, reason, state)


def _rollback(client, model_name: str, who: str, reason: str, state) -> dict:
    events, current = history(client, model_name, state=state), champion(client, model_name)
    stack = _stack(events)
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)  # the alias was moved outside Notebench: that move is the one undone
    earlier = [v for v in (stack[:-1] if current is not None else stack) if v != current]
    gone = []
    for target in reversed(earlier):
        if _exists(client, model_name, target):
            break
        gone.append(target)
    else:
        raise NoPreviousChampion("no earlier champion to roll back to"
                                 + (f" (versions {', '.join(gone)} are deleted)" if gone else ""), model=model_name)
    why = reason or "rollback"
    if gone:
        why += f" (passed over deleted versions {', '.join(gone)})"
    event = {"action": "rollback", "version": target, "previous": current, "who": who or getpass.getuser(),
             "when": _now(), "why": why, "forced": False}
    return _move(client, state, model_name, target, event)
