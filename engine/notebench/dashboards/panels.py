"""What the dashboards show, read from the workspace: one function per panel, each returning plain data.

The dashboards call only these functions (and `render` to draw what they return), so every query a stakeholder's
page depends on is here, tested, and none is copied into a notebook. Each function takes a `Workspace` (None: the
settings' one) and returns a dict or a DataFrame; an empty result means "nothing yet", never an error: a fresh
workspace has no MLflow store, no runs, no prediction log, and the monitoring and trigger modules may not exist.

Sources:

| panel | reads |
|---|---|
| `primary_metric` | the use case (`UseCase.metric`): the number the pages lead with |
| `champion_summary`, `versions_table`, `segment_metrics`, `champion_history` | the MLflow registry, evaluate runs |
| `recent_runs`, `run_detail` | run records `<workspace>/pipelines/<name>/runs/<id>/run.json` |
| `service_health` | the prediction service's `/health` and `/model` on `[serving] host:port`, the registry |
| `prediction_volume` | the prediction log (`notebench.serving.read_predictions`) |
| `drift_over_time`, `drift_status`, `quality_over_time` | `notebench.monitoring.monitor.read_results` |
| `recent_triggers` | `notebench.triggers.read_events` |
| `health` | all of the above, as one green / amber / red state per concern |

A use case may declare no segments: `segment_metrics` then holds each version's overall primary metric only.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

__all__ = ["AMBER", "GREEN", "GREY", "HEALTH_CHECKS", "RED", "champion_history", "champion_summary", "client",
           "drift_over_time", "drift_status", "health", "health_check", "metric_names", "notebook_url",
           "prediction_volume", "primary_metric", "quality_over_time", "recent_runs", "recent_triggers",
           "run_detail", "segment_metrics", "service_health", "versions_table", "warm_up", "workspace", "worst"]

GREEN, AMBER, RED, GREY = "green", "amber", "red", "grey"  # grey: nothing to judge yet
_SEVERITY = {GREY: 0, GREEN: 1, AMBER: 2, RED: 3}
LINEAGE_TAGS = {"pipeline_run": "notebench.pipeline_run_id", "pipeline": "notebench.pipeline",
                "data_digest": "notebench.data_digest", "git_commit": "notebench.git.commit",
                "git_dirty": "notebench.git.dirty", "compared_with": "notebench.compared_with"}
FIXED_COLUMNS = ["version", "aliases", "blessed", "reasons", "created", *LINEAGE_TAGS, "notebooks"]  # of versions_table


def worst(states) -> str:
    """The most severe of `states` (red > amber > green > grey)."""
    return max(states, key=_SEVERITY.__getitem__, default=GREY)


# sources ---------------------------------------------------------------------------------------------------
def workspace(ws=None):
    """`ws`, or the settings' workspace."""
    from notebench.workspace import Workspace

    return ws or Workspace()


def _store_missing(ws) -> bool:
    """True when the tracking store is the embedded SQLite file and it does not exist yet (nothing was logged)."""
    uri = ws.settings.value("tracking", "uri")
    return not uri and not (ws.root / "mlflow.db").exists()


@functools.lru_cache(maxsize=4)
def _client(tracking_uri: str, registry_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)


def client(ws=None):
    """An MlflowClient on the workspace's stores, or None while there is no store (opening one would create it)."""
    ws = workspace(ws)
    return None if _store_missing(ws) else _client(ws.tracking_uri, ws.registry_uri)


def warm_up(ws=None) -> None:
    """Import what the panels use and open the MLflow store, so that a page's first query does not pay for it."""
    import matplotlib.pyplot as plt
    import mlflow  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from notebench.pipeline import store  # noqa: F401
    from notebench.serving import predlog  # noqa: F401

    fig = plt.figure(figsize=(1, 1))
    fig.canvas.draw()  # loads the fonts
    plt.close(fig)
    primary_metric(ws)  # imports the use case's module
    c = client(ws)
    if c is not None:
        c.search_registered_models(max_results=1)


@functools.lru_cache(maxsize=4)
def _metric_of(reference: str) -> str:
    from notebench.errors import NotebenchError
    from notebench.usecase import METRICS, load_use_case

    try:
        return load_use_case(reference=reference).metric
    except NotebenchError:  # the use case cannot be imported where the dashboards run: the binary default
        return METRICS["binary"]


def primary_metric(ws=None) -> str:
    """The use case's primary metric (`UseCase.metric`, e.g. `auc`): what the pages lead with and compare."""
    return _metric_of(workspace(ws).settings.value("use_case", "object"))


def _optional(module: str):
    """`notebench.<module>` if this installation has it, else None (a dashboard then says "nothing yet")."""
    try:
        return importlib.import_module(f"notebench.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"notebench.{module}":
            return None
        raise


def _frame(rows=None, columns=None):
    import pandas as pd

    return pd.DataFrame(rows or [], columns=columns)


def _iso(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds") if seconds else None


# registry --------------------------------------------------------------------------------------------------
def _model_name(ws) -> str:
    return ws.settings.value("registry", "model_name")


def _versions(ws) -> list[dict]:
    from notebench.registry.models import versions

    c = client(ws)
    return versions(c, _model_name(ws)) if c is not None else []


def champion_history(ws=None):
    """Every champion change, newest first: action, version, previous, who, when, why, forced."""
    from notebench.registry.models import history
    from notebench.state.store import open_state

    ws = workspace(ws)
    c = client(ws)
    events = history(c, _model_name(ws), state=open_state(ws)) if c is not None else []
    columns = ["when", "action", "version", "previous", "who", "why", "forced"]
    return _frame([{k: e.get(k) for k in columns} for e in reversed(events)], columns)


def champion_summary(ws=None) -> dict | None:
    """The champion: version, when and why it was promoted, by whom, key metrics, blessing; None without one."""
    ws = workspace(ws)
    rows = _versions(ws)
    row = next((r for r in rows if "champion" in r["aliases"]), None)
    if row is None:
        return None
    tags, metric = row["tags"], primary_metric(ws)
    return {"model_name": _model_name(ws), "version": row["version"], "aliases": row["aliases"],
            "metric": metric, "score": row["metrics"].get(metric),
            "promoted_at": tags.get("notebench.promoted.at"), "promoted_by": tags.get("notebench.promoted.by"),
            "promoted_why": tags.get("notebench.promoted.reason"), "forced": tags.get("notebench.forced") == "true",
            "created": row["created"], "metrics": row["metrics"], "blessed": row["blessed"],
            "reasons": row["reasons"], "versions": len(rows),
            **{k: tags.get(t) for k, t in LINEAGE_TAGS.items()}}


def versions_table(ws=None):
    """One row per registered version, newest first: aliases, blessing and reasons, key metrics, lineage."""
    ws = workspace(ws)
    rows = []
    for r in _versions(ws):
        lineage = {k: r["tags"].get(t) for k, t in LINEAGE_TAGS.items()}
        rows.append({"version": r["version"], "aliases": r["aliases"], "blessed": r["blessed"],
                     "reasons": r["reasons"], "created": r["created"], **r["metrics"], **lineage,
                     "notebooks": _run_notebooks(ws, lineage["pipeline"], lineage["pipeline_run"])})
    return _frame(rows, FIXED_COLUMNS if not rows else None)


def metric_names(table, metric: str | None = None) -> list[str]:
    """The metric columns of a `versions_table`, the primary `metric` first."""
    names = sorted(c for c in table.columns if c not in FIXED_COLUMNS)
    return sorted(names, key=lambda c: c != metric)


def segment_metrics(ws=None, metric: str | None = None):
    """`metric` (default: the primary one) of each version's evaluate step (rows: versions): `overall`, then one
    column per segment (`column=value`); `overall` alone when the use case declares no segments."""
    ws = workspace(ws)
    metric = metric or primary_metric(ws)
    c = client(ws)
    rows = _versions(ws)
    if c is None or not rows:
        return _frame()
    experiment = c.get_experiment_by_name(ws.experiment)
    if experiment is None:
        return _frame()
    runs = c.search_runs([experiment.experiment_id], filter_string="tags.`notebench.step` = 'evaluate'",
                         max_results=1000)
    by_parent = {r.data.tags.get("mlflow.parentRunId"): r.data.metrics for r in runs}
    out = {}
    for r in rows:
        metrics = by_parent.get(r["tags"].get("notebench.pipeline_mlflow_run"), {})
        segments = {_segment_label(k, metric): v for k, v in metrics.items()
                    if k.startswith("segment.") and k.endswith(f".{metric}")}
        if metric in metrics or segments:
            out[f"v{r['version']}"] = {"overall": metrics.get(metric), **segments}
    import pandas as pd

    return pd.DataFrame(out).T if out else _frame()


def _segment_label(key: str, metric: str) -> str:
    """`segment.<column>.<value>.<metric>` (as `notebench.evaluation.flatten` names it) -> `column=value`."""
    column, value = key[len("segment."):-len(metric) - 1].split(".", 1)
    return f"{column}={value}"


# pipeline runs ---------------------------------------------------------------------------------------------
def _records(ws, pipeline: str | None = None) -> list:
    from notebench.pipeline.store import PipelineStore

    root = ws.root / "pipelines"
    records = []
    for folder in sorted(root.glob("*")) if root.exists() else []:
        if folder.is_dir() and (pipeline is None or folder.name == pipeline):
            records += PipelineStore(ws.root, folder.name).runs()
    return sorted(records, key=lambda r: r.get("started") or 0, reverse=True)


def notebook_url(ws, pipeline: str | None, run_id: str | None, step: str) -> str | None:
    """The dashboards server's URL of a step's executed notebook (as HTML), or None when the run kept none."""
    if not (pipeline and run_id):
        return None
    if not (ws.root / "pipelines" / pipeline / "runs" / run_id / f"{step}.ipynb").exists():
        return None
    base = os.environ.get("VOILA_BASE_URL", "/")
    return f"{base}runs/{pipeline}/{run_id}/{step}.html"


def _step_notebook(ws, pipeline: str, run_id: str, name: str, step: dict) -> str | None:
    """The executed notebook that holds a step's work: its own, or the one of the run its cache came from."""
    return notebook_url(ws, pipeline, step.get("cached_from") if step.get("state") == "cached" else run_id, name)


def _run_notebooks(ws, pipeline: str | None, run_id: str | None) -> dict[str, str]:
    """step -> executed notebook URL for a run (empty when the run record is gone)."""
    path = ws.root / "pipelines" / (pipeline or "") / "runs" / (run_id or "") / "run.json"
    if not (pipeline and run_id and path.exists()):
        return {}
    steps = json.loads(path.read_text()).get("steps", {})
    links = {name: _step_notebook(ws, pipeline, run_id, name, s) for name, s in steps.items()}
    return {k: v for k, v in links.items() if v}


def _failed_step(rec) -> str | None:
    return next((n for n, s in rec.get("steps", {}).items() if s.get("state") == "failed"), None)


def recent_runs(ws=None, limit: int = 20, pipeline: str | None = None):
    """The newest pipeline runs: state, when, how long, trigger, steps run / cached / failed, the failing step."""
    ws = workspace(ws)
    rows = []
    for rec in _records(ws, pipeline)[:limit]:
        states = [s.get("state") for s in rec.get("steps", {}).values()]
        ended = rec.get("ended")
        failed = _failed_step(rec)
        rows.append({"run_id": rec["run_id"], "pipeline": rec.get("pipeline"), "state": rec.get("state"),
                     "started": _iso(rec.get("started")), "duration_s": ended - rec["started"] if ended else None,
                     "trigger": rec.get("trigger"), "steps": len(states), "ran": states.count("done"),
                     "cached": states.count("cached"), "failed_step": failed,
                     "error": rec["steps"][failed].get("error") if failed else None,
                     "git_commit": (rec.get("git") or {}).get("commit")})
    return _frame(rows, None if rows else ["run_id", "pipeline", "state", "started", "duration_s", "trigger",
                                           "steps", "ran", "cached", "failed_step", "error", "git_commit"])


def run_detail(ws=None, run_id: str | None = None) -> dict | None:
    """One run (default: the newest): its summary and a row per step with state, timing, cache hit, error, notebook."""
    ws = workspace(ws)
    records = _records(ws)
    rec = next((r for r in records if run_id is None or r["run_id"] == run_id), None)
    if rec is None:
        return None
    start = rec.get("started") or 0
    steps = []
    for name, s in rec.get("steps", {}).items():
        steps.append({"step": name, "state": s.get("state"), "cached": s.get("state") == "cached",
                      "duration_s": s.get("duration"), "offset_s": s["started"] - start if s.get("started") else None,
                      "cached_from": s.get("cached_from"), "reasons": s.get("reasons", []),
                      "error": s.get("error"), "attempts": s.get("attempts"),
                      "notebook": _step_notebook(ws, rec["pipeline"], rec["run_id"], name, s)})
    summary = recent_runs(ws, limit=len(records)).set_index("run_id").loc[rec["run_id"]].to_dict()
    return {**summary, "run_id": rec["run_id"], "user": rec.get("user"), "parameters": rec.get("parameters", {}),
            "run_error": rec.get("error"), "steps": _frame(steps)}


# the prediction service ------------------------------------------------------------------------------------
def service_health(ws=None, timeout: float = 0.5) -> dict:
    """Whether the prediction service on `[serving] host:port` is up, serving THIS workspace's registered model, and
    which version it serves.

    `answers`: something answers `/health` there; `up`: it also serves a version of this workspace's registered model
    (its `/model` names the model and version, and this workspace's registry holds that version, from the same run:
    run ids are unique to a tracking store, so another workspace's service on the port is told apart even when its
    model has the same name and version); `error`: why it is not up."""
    ws = workspace(ws)
    host, port = ws.settings.value("serving", "host"), ws.settings.value("serving", "port")
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    out = {"url": f"{base}/health", "up": False, "answers": False, "model_version": None, "model_name": None,
           "uptime_s": None, "error": None}
    try:
        body = _get_json(out["url"], timeout)
    except (OSError, ValueError) as exc:
        return {**out, "error": str(getattr(exc, "reason", exc))}
    out.update(answers=body.get("status") == "ok", model_version=body.get("model_version"),
               uptime_s=body.get("uptime_s"))
    if not out["answers"]:
        return {**out, "error": f"{out['url']} answers without status ok: {str(body)[:200]}"}
    if out["model_version"] is None:
        return {**out, "error": "the service answers but has no model loaded"}
    try:
        served = _get_json(f"{base}/model", timeout)
    except (OSError, ValueError) as exc:
        return {**out, "error": f"cannot read what the service serves ({base}/model): {getattr(exc, 'reason', exc)}"}
    out.update(model_name=served.get("name"), model_version=served.get("version"))
    why = _not_this_workspace(ws, served)
    return {**out, "error": why} if why else {**out, "up": True}


def _get_json(url: str, timeout: float):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _not_this_workspace(ws, served: dict) -> str | None:
    """Why the model a service describes (its `/model`) is not a version of this workspace's registered model; None
    when it is."""
    name, version, run = _model_name(ws), served.get("version"), served.get("run_id")
    other = "another workspace's service is on this port"
    if served.get("name") != name:
        what = f"registered model {served['name']!r}" if served.get("name") else f"the model at {served.get('uri')}"
        return f"it serves {what}, not this workspace's registered model {name!r}"
    c = client(ws)
    if c is None:
        return f"it serves {name} version {version}, but this workspace has no model registry yet: {other}"
    try:
        registered = c.get_model_version(name, version)
    except Exception:  # MlflowException: no such version here
        return f"it serves {name} version {version}, which this workspace's registry does not hold: {other}"
    if registered.run_id != run:
        return (f"it serves {name} version {version} of run {run}, but this workspace's version {version} comes from "
                f"run {registered.run_id}: {other}")
    return None


def prediction_volume(ws=None, freq: str | None = None):
    """Predictions served per time bucket and model version (shadow predictions left out)."""
    from notebench.serving import read_predictions

    ws = workspace(ws)
    log = read_predictions(ws, columns=["time", "model_version", "role"])
    columns = ["time", "model_version", "predictions"]
    if log.empty:
        return _frame(columns=columns)
    log = log[log["role"] != "shadow"] if "role" in log else log
    import pandas as pd

    span = log["time"].max() - log["time"].min()
    freq = freq or ("5min" if span < pd.Timedelta(hours=3) else "h" if span < pd.Timedelta(days=3) else "D")
    out = (log.groupby([pd.Grouper(key="time", freq=freq), "model_version"]).size()
           .rename("predictions").reset_index())
    out.attrs["freq"] = freq
    return out[out["predictions"] > 0].reset_index(drop=True)


# monitoring and triggers -----------------------------------------------------------------------------------
RESULT_COLUMNS = ["window_id", "window_start", "window_end", "model_version", "rows", "check", "feature", "method",
                  "statistic", "threshold", "alert"]
EVENT_COLUMNS = ["id", "time", "kind", "reason", "source", "status", "run_id", "coalesced_into", "details"]


def _results(ws, results=None):
    """Monitoring results (`notebench.monitoring.monitor.read_results`, or `results` when given) with window times as
    datetimes; an empty frame of that shape while there is no monitoring."""
    import pandas as pd

    if results is None:
        monitoring = _optional("monitoring.monitor")
        results = monitoring.read_results(workspace(ws)) if monitoring else None
    if results is None or not len(results):
        return _frame(columns=RESULT_COLUMNS)
    frame = results.copy()
    for column in ("window_start", "window_end"):
        frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    frame["alert"] = frame["alert"].astype(bool)
    frame["feature"] = frame["feature"].fillna("")
    return frame


def drift_over_time(ws=None, results=None):
    """Per-feature drift per monitoring window: statistic, threshold, alert (check `drift`), oldest window first."""
    frame = _results(ws, results)
    drift = frame[frame["check"] == "drift"]
    return drift.sort_values(["window_end", "feature"]).reset_index(drop=True)


def drift_status(ws=None, results=None) -> dict:
    """The newest window's verdicts: drifting features, dataset and prediction drift, data quality; with a state.

    red: dataset drift, prediction drift or a quality alert; amber: some features drift or data quality alerts;
    green: nothing flagged; grey: no window yet."""
    frame = _results(ws, results)
    if frame.empty:
        return {"state": GREY, "window_id": None, "drifting": [], "features": 0, "alerts": {}}
    latest = frame[frame["window_id"] == frame.loc[frame["window_end"].idxmax(), "window_id"]]
    drift = latest[latest["check"] == "drift"]
    alerts = {check: bool(group["alert"].any()) for check, group in latest.groupby("check")}
    drifting = sorted(drift.loc[drift["alert"], "feature"].unique().tolist())
    severe = alerts.get("dataset_drift") or alerts.get("prediction_drift") or alerts.get("quality")
    state = RED if severe else AMBER if drifting or alerts.get("data_quality") else GREEN
    first = latest.iloc[0]
    return {"state": state, "window_id": str(first["window_id"]), "window_end": first["window_end"].isoformat(),
            "model_version": str(first["model_version"]), "rows": int(first["rows"]), "drifting": drifting,
            "features": int(drift["feature"].nunique()), "alerts": alerts}


def quality_over_time(ws=None, results=None, method: str | None = None):
    """Live model quality per labelled window (check `quality`, `method`; default: the primary metric): statistic,
    alert bound, alert."""
    method = method or primary_metric(ws)
    frame = _results(ws, results)
    quality = frame[(frame["check"] == "quality") & (frame["method"] == method)]
    return quality.dropna(subset=["statistic"]).sort_values("window_end").reset_index(drop=True)


def recent_triggers(ws=None, limit: int = 10):
    """The newest trigger events: kind, reason, status, the run they started (`notebench.triggers.read_events`)."""
    triggers = _optional("triggers")
    frame = triggers.read_events(workspace(ws), limit=limit) if triggers else None
    if frame is None or not len(frame):
        return _frame(columns=EVENT_COLUMNS)
    return frame.sort_values("time", ascending=False).head(limit).reset_index(drop=True)


# the overview's states -------------------------------------------------------------------------------------
HEALTH_CHECKS: dict = {}  # name -> function(facts) -> (state, text); the overview shows them in this order


def health_check(name: str):
    """Register a health check: a function of the gathered facts returning (state, one-line text)."""
    def register(fn):
        HEALTH_CHECKS[name] = fn
        return fn
    return register


@health_check("model")
def _model_check(f) -> tuple[str, str]:
    c = f["champion"]
    if c is None:
        return RED, "no champion: nothing can be served"
    forced = " (forced past the gate)" if c["forced"] else ""
    score = f", holdout {c['metric']} {c['score']:.3f}" if c["score"] is not None else ""
    return AMBER if c["forced"] else GREEN, f"version {c['version']} is champion{forced}{score}"


@health_check("service")
def _service_check(f) -> tuple[str, str]:
    s, c = f["service"], f["champion"]
    if not s["answers"]:
        return RED, f"the prediction service does not answer at {s['url']}"
    if s["model_version"] is None:
        return RED, "the prediction service answers but has no model loaded"
    if not s["up"]:
        return RED, f"the service at {s['url']} does not serve this workspace's model: {s['error']}"
    if c is not None and str(s["model_version"]) != c["version"]:
        return AMBER, f"serving version {s['model_version']}, champion is {c['version']} (swap pending?)"
    return GREEN, f"serving version {s['model_version']}, up {s['uptime_s'] or 0:.0f} s"


@health_check("pipeline")
def _pipeline_check(f) -> tuple[str, str]:
    runs = f["runs"]
    if runs.empty:
        return GREY, "no pipeline run yet"
    last = runs.iloc[0]
    text = f"last run {last['run_id']} ({last['pipeline']}) {last['state']}"
    if last["state"] == "failed":
        return RED, f"{text} at step {last['failed_step']}"
    return (GREEN if last["state"] == "succeeded" else AMBER), text


@health_check("drift")
def _drift_check(f) -> tuple[str, str]:
    d = f["drift"]
    if d["state"] == GREY:
        return GREY, "no monitoring window yet"
    if d["drifting"]:
        return d["state"], f"{len(d['drifting'])} of {d['features']} features drift: {', '.join(d['drifting'])}"
    raised = [k for k, v in d["alerts"].items() if v]
    return d["state"], ("alerts: " + ", ".join(raised)) if raised else f"no drift in window {d['window_id']}"


@health_check("triggers")
def _trigger_check(f) -> tuple[str, str]:
    t = f["triggers"]
    if t.empty:
        return GREY, "no trigger fired yet"
    last = t.iloc[0]
    state = AMBER if last["status"] == "queued" else GREEN  # queued: a training run is waiting to start
    return state, f"last: {last['kind']} ({last['status']}) - {last['reason']}"


def health(ws=None) -> dict:
    """The overview: one state per concern (model, service, pipeline, drift, triggers) and the worst of them."""
    ws = workspace(ws)
    facts = {"champion": champion_summary(ws), "service": service_health(ws), "runs": recent_runs(ws, limit=1),
             "drift": drift_status(ws), "triggers": recent_triggers(ws, limit=1)}
    checks = []
    for name, check in HEALTH_CHECKS.items():
        state, text = check(facts)
        checks.append({"name": name, "state": state, "text": text})
    return {"state": worst(c["state"] for c in checks), "checks": checks, "as_of": _iso(time.time()), **facts}
