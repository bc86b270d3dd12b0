"""The monitoring job: live predictions and their delayed labels, window by window, against the training reference.

`monitor(workspace)` is one pass. It reads the prediction log rows (role `champion`) that no pass has judged yet,
cuts them into windows of `[monitoring] window` predictions per model version, and measures each window against
the reference profile that version was trained with:

| check | per | method | alert when |
|---|---|---|---|
| `drift` | feature | under `small_sample` rows a test, else a distance (below) | p < `p_value`; > `distance` |
| `dataset_drift` | window | share of drifting features | share >= `drift_share` |
| `prediction_drift` | window | the same tests on the `prediction` column | as `drift` |
| `data_quality` | feature | null-rate rise, share out of range, share of unseen categories | > `quality_share` |
| `quality` | labelled window | primary metric, accuracy, Brier, calibration | worse than holdout by > `max_auc_drop` |

(Numeric features get KS and Wasserstein, categorical ones chi-squared on a contingency table and Jensen–Shannon.)

Which model judged a row is the row's own `model_version` (the champion that served it, hot swaps included), so
every window belongs to one version and is compared with that version's reference. The reference (the MLflow
artifact `reference/profile.json` of the version's training run, with its holdout metrics) is fetched once per version
and cached under `<workspace>/monitoring/references/`; its statistics (1,001 quantiles, counts) were computed once
at training time, so a window costs one pass over its own rows and never touches the training data.

Labels arrive later than predictions, so model quality is judged separately from drift: a window waits until at
least `min_labels` of its rows are labelled and either all are or no new label arrived for it since the previous
pass; then it is judged once, on the use case's primary metric (`UseCase.metric`, in its direction) against the one
the version's holdout recorded (binary use cases: the metrics of `notebench.evaluation.metrics`).

Where results live, and why SQLite. `<workspace>/monitoring/monitoring.db` holds one row per (window, check,
feature) (`read_results`), the windows, and the per-version watermark of the last judged row. Results and the
watermark that says they exist are written in **one transaction**: a pass that dies half-way leaves neither, so the
next pass judges the same rows again and every row is judged exactly once — a folder of Parquet segments would need
the results file and a separate watermark file to agree after a crash, which no rename makes atomic. The volume suits
SQLite (about 50 rows per window of a thousand predictions), WAL mode lets the dashboards read while a pass writes,
and a second pass started meanwhile (cron and `notebench watch`) waits on a lock and then sees the first one's
watermark. The prediction log itself stays Parquet: that is the hot path, and SQLite is only the ledger of verdicts.

Rows younger than `[monitoring] settle` seconds are left for the next pass: the service logs a request after it is
answered and flushes every `[serving] flush_interval`, so a younger row may still be on its way to disk.
"""

from __future__ import annotations

import fcntl
import json
import math
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from notebench.errors import NotebenchError
from notebench.pipeline.store import atomic_write_json
from notebench.workspace import Workspace

__all__ = ["CHECKS", "Alert", "MonitorBusy", "MonitorReport", "MonitoringError", "monitor", "read_results",
           "read_windows"]

CHECKS = ("drift", "dataset_drift", "prediction_drift", "quality", "data_quality")
ROLE = "champion"
PREDICTION = "prediction"
KEY = ["_t", "request_id", "row"]  # a log row's order: arrival time (us), request, row within the request
RESULT_COLUMNS = ["window_id", "window_start", "window_end", "model_name", "model_version", "rows", "check",
                  "feature", "method", "statistic", "threshold", "alert", "details", "pass_id", "recorded_at"]
ALERT_KINDS = {"dataset_drift": "drift", "prediction_drift": "drift", "data_quality": "drift", "quality": "quality"}


class MonitoringError(NotebenchError):
    """The monitoring job cannot do what was asked; names the model version or file at fault."""


class MonitorBusy(MonitoringError):
    """Another monitoring pass holds the workspace's monitoring lock longer than we were willing to wait."""

    exit_code = 3


@dataclass
class Alert:
    """A threshold breach: `kind` drift (the data moved) or quality (the model got worse), with its reason."""

    kind: str  # "drift" | "quality"
    reason: str  # one readable sentence
    window_end: str  # ISO time of the window's last prediction
    model_version: str  # the version that served the window
    details: dict = field(default_factory=dict)  # numbers behind the reason
    check: str = ""  # dataset_drift | prediction_drift | data_quality | quality
    window_id: str = ""
    model_name: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MonitorReport:
    """What one pass did: the windows it judged, the labelled windows it scored, the alerts, what it left."""

    pass_id: str
    windows: list[dict] = field(default_factory=list)  # one summary per window judged for drift
    quality: list[dict] = field(default_factory=list)  # one summary per window scored on labels
    alerts: list[Alert] = field(default_factory=list)
    rows_read: int = 0  # new champion rows read from the log
    rows_judged: int = 0  # of those, rows in windows judged now
    rows_pending: int = 0  # rows waiting for their window to fill
    skipped: list[str] = field(default_factory=list)  # rows that could not be judged, and why
    mlflow_run_id: str | None = None
    mlflow_error: str | None = None
    message: str = ""

    @property
    def nothing_new(self) -> bool:
        return not self.windows and not self.quality and not self.skipped

    def summary(self):
        """One row per window judged or scored in this pass, as a DataFrame."""
        import pandas as pd

        rows = {w["window_id"]: dict(w) for w in self.windows}
        for q in self.quality:
            rows.setdefault(q["window_id"], {"window_id": q["window_id"], "model_version": q["model_version"],
                                             "window_end": q["window_end"], "rows": q["rows"]}).update(
                {"labels": q["labels"], "metric": q.get("metric"), "value": q.get("value"),
                 "holdout": q.get("holdout")})
        return pd.DataFrame(list(rows.values()))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["nothing_new"] = self.nothing_new
        return out


# ---------------------------------------------------------------------------------------------------------
# the store: SQLite in the workspace


SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    window_id TEXT NOT NULL, window_start TEXT, window_end TEXT, model_name TEXT, model_version TEXT, rows INTEGER,
    "check" TEXT NOT NULL, feature TEXT NOT NULL DEFAULT '', method TEXT, statistic REAL, threshold REAL,
    alert INTEGER NOT NULL, details TEXT, pass_id TEXT, recorded_at TEXT);
CREATE INDEX IF NOT EXISTS results_window ON results (window_id);
CREATE TABLE IF NOT EXISTS windows (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, window_id TEXT UNIQUE NOT NULL, model_name TEXT, model_version TEXT,
    window_start TEXT, window_end TEXT, rows INTEGER, first_t INTEGER, first_request TEXT, first_row INTEGER,
    last_t INTEGER, last_request TEXT, last_row INTEGER, dataset_drift INTEGER, drifted TEXT, labels INTEGER
    NOT NULL DEFAULT 0, quality_done INTEGER NOT NULL DEFAULT 0, pass_id TEXT);
CREATE TABLE IF NOT EXISTS cursors (
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, last_t INTEGER, last_request TEXT, last_row INTEGER,
    PRIMARY KEY (model_name, model_version));
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS passes (
    pass_id TEXT PRIMARY KEY, started TEXT, finished TEXT, rows_read INTEGER, windows INTEGER, scored INTEGER,
    alerts INTEGER, mlflow_run_id TEXT);
"""


def _folder(ws) -> Path:
    return Path(ws.root) / "monitoring"


def _connect(ws) -> sqlite3.Connection:
    folder = _folder(ws)
    folder.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(folder / "monitoring.db", timeout=60)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(SCHEMA)
    return con


@contextmanager
def _pass_lock(ws, wait: float):
    """One pass at a time per workspace: wait up to `wait` seconds for another to finish, then give up."""
    path = _folder(ws) / "monitor.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise MonitorBusy(f"another monitoring pass holds {path}; try again when it has finished"
                                      ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_results(workspace=None, *, since=None, model_version: str | None = None):
    """The monitoring results table: one row per (window, check, feature), oldest window first."""
    import pandas as pd

    ws = Workspace.of(workspace)
    if not (_folder(ws) / "monitoring.db").exists():
        return pd.DataFrame({c: [] for c in RESULT_COLUMNS}).astype({"alert": bool})
    query, args = "SELECT r.* FROM results r JOIN windows w USING (window_id) WHERE 1=1", []
    if since is not None:
        query, args = query + " AND r.window_end >= ?", [*args, _iso(since)]
    if model_version is not None:
        query, args = query + " AND r.model_version = ?", [*args, str(model_version)]
    with _closing(_connect(ws)) as con:
        frame = pd.read_sql_query(query + " ORDER BY w.seq, r.rowid", con, params=args)
    frame["alert"] = frame["alert"].astype(bool)
    frame["feature"] = frame["feature"].fillna("")
    return frame


def read_windows(workspace=None):
    """The windows judged so far: version, span, rows, dataset drift, drifted features, labels, quality judged."""
    import pandas as pd

    ws = Workspace.of(workspace)
    if not (_folder(ws) / "monitoring.db").exists():
        return pd.DataFrame()
    with _closing(_connect(ws)) as con:
        frame = pd.read_sql_query("SELECT * FROM windows ORDER BY seq", con)
    frame["drifted"] = frame["drifted"].map(lambda t: json.loads(t) if t else [])
    return frame


@contextmanager
def _closing(con):
    try:
        yield con
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------------------
# references: fetched once per model version, cached in the workspace


def _reference_file(ws, model_name: str, version: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_name)
    folder = _folder(ws) / "references" / safe
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{version}.json"


def load_reference(ws, model_name: str, version: str, client=None) -> dict:
    """The version's training reference profile and holdout metrics, from the workspace cache or once from MLflow
    (`client`: an `MlflowClient`, or a function returning one, called only when the cache misses)."""
    path = _reference_file(ws, model_name, version)
    if path.exists():
        return json.loads(path.read_text())
    import tempfile

    client = client() if callable(client) else client or ws.client()
    try:
        mv = client.get_model_version(model_name, str(version))
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(mv.run_id, "reference/profile.json", tmp)
            profile = json.loads(Path(local).read_text())
    except Exception as exc:
        raise MonitoringError(f"model '{model_name}' version {version}: no training reference "
                              f"(reference/profile.json on its run) to compare with: {exc}") from exc
    holdout = {k[len("notebench.metric."):]: float(v) for k, v in mv.tags.items() if k.startswith("notebench.metric.")}
    ref = {"model_name": model_name, "model_version": str(version), "run_id": mv.run_id, "profile": profile,
           "holdout": holdout, "fetched": _now()}
    atomic_write_json(path, ref)
    return ref


# ---------------------------------------------------------------------------------------------------------
# one window


@dataclass(frozen=True)
class Thresholds:
    window: int
    p_value: float
    distance: float
    drift_share: float
    small_sample: int
    min_labels: int
    max_auc_drop: float
    quality_share: float

    @classmethod
    def from_settings(cls, settings) -> Thresholds:
        return cls(**{k: settings.value("monitoring", k) for k in cls.__dataclass_fields__})


def _row(check: str, feature: str, method: str, statistic, threshold, alert: bool, **details) -> dict:
    return {"check": check, "feature": feature, "method": method, "statistic": _num(statistic),
            "threshold": _num(threshold), "alert": bool(alert), "details": details}


def _num(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _drift_rows(comparison: dict, th: Thresholds) -> list[dict]:
    rows = []
    for name, col in comparison["columns"].items():
        d = col["drift"]
        rows.append(_row("drift", name, d["test"], d.get("score"), d.get("threshold"), d["drift"],
                         **({"note": d["note"]} if "note" in d else {})))
    rows.append(_row("dataset_drift", "", "share_of_drifting_features", comparison["drift_share"], th.drift_share,
                     comparison["dataset_drift"], drifted=comparison["drifted"]))
    return rows


def _quality_rows(comparison: dict, th: Thresholds) -> list[dict]:
    rows = []
    for name, col in comparison["columns"].items():
        q = col["quality"]
        if not q:
            continue
        rise = q["null_rate"] - (q.get("reference_null_rate") or 0.0)
        rows.append(_row("data_quality", name, "null_rate_rise", rise, th.quality_share, rise > th.quality_share,
                         null_rate=q["null_rate"], reference_null_rate=q.get("reference_null_rate")))
        if "out_of_range" in q:
            rows.append(_row("data_quality", name, "out_of_range", q["out_of_range"], th.quality_share,
                             q["out_of_range"] > th.quality_share))
        if "unseen" in q:
            rows.append(_row("data_quality", name, "unseen_categories", q["unseen"], th.quality_share,
                             q["unseen"] > th.quality_share, values=q.get("unseen_values", [])))
    return rows


def _prediction_row(ref: dict, predictions, th: Thresholds, ws) -> dict:
    """Prediction drift against the profile's `prediction` entry, else against the version's first window."""
    import numpy as np

    from notebench.monitoring.drift import array_drift, profile

    if predictions is None:
        return _row("prediction_drift", PREDICTION, "none", None, None, False, note="no prediction column")
    baseline, source = ref["profile"].get(PREDICTION), "reference"
    if baseline is None:
        baseline, source = ref.get("first_window_prediction"), "first window"
    if baseline is None:
        import pandas as pd

        first = pd.DataFrame({PREDICTION: predictions})
        ref["first_window_prediction"] = profile(first, [PREDICTION], [])["columns"][PREDICTION]
        if ws is not None:
            atomic_write_json(_reference_file(ws, ref["model_name"], ref["model_version"]), ref)
        return _row("prediction_drift", PREDICTION, "baseline", None, None, False,
                    note="the reference profile holds no prediction distribution: this first window becomes the "
                         "baseline later windows of the version are compared with")
    d = array_drift(baseline, np.asarray(predictions, dtype=float), th.small_sample, th.p_value, th.distance)
    return _row("prediction_drift", PREDICTION, d["test"], d.get("score"), d.get("threshold"), d["drift"],
                baseline=source)


def judge_window(ref: dict, window, th: Thresholds, ws=None, *, arrays: dict | None = None,
                 rows: slice | None = None) -> list[dict]:
    """Result rows of one window against its version's reference: drift, dataset drift, prediction drift, data
    quality. `arrays` (from `drift.encode`, with `prediction`) and `rows` judge a slice of a larger read instead."""
    from notebench.monitoring.drift import compare_arrays, encode

    if arrays is None:
        arrays = encode(ref["profile"], window)
        if PREDICTION in window:
            arrays[PREDICTION] = window[PREDICTION].to_numpy(dtype=float, na_value=float("nan"))
    comparison = compare_arrays(ref["profile"], arrays, rows, small=th.small_sample, p_value=th.p_value,
                                distance=th.distance, drift_share=th.drift_share)
    predictions = arrays[PREDICTION][rows or slice(None)] if PREDICTION in arrays else None
    return [*_drift_rows(comparison, th), _prediction_row(ref, predictions, th, ws), *_quality_rows(comparison, th)]


def _alerts_of(rows: list[dict], meta: dict) -> list[Alert]:
    """One alert per breached window-level check: dataset drift, prediction drift, data quality, model quality."""
    alerts = []
    common = {"window_end": meta["window_end"], "model_version": meta["model_version"],
              "window_id": meta["window_id"], "model_name": meta["model_name"]}
    for r in rows:
        if not r["alert"] or r["check"] in ("drift", "data_quality"):
            continue
        if r["check"] == "dataset_drift":
            drifted = r["details"]["drifted"]
            reason = (f"dataset drift: {len(drifted)} of the features drift ({', '.join(drifted)}), share "
                      f"{r['statistic']:.2f} >= {r['threshold']:.2f}")
        elif r["check"] == "prediction_drift":
            reason = f"prediction drift: {r['method']} = {r['statistic']:.4g} (threshold {r['threshold']:.4g})"
        else:
            reason = r["details"]["reason"]
        alerts.append(Alert(ALERT_KINDS[r["check"]], reason, details={"method": r["method"],
                            "statistic": r["statistic"], "threshold": r["threshold"], **r["details"]},
                            check=r["check"], **common))
    bad = [r for r in rows if r["alert"] and r["check"] == "data_quality"]
    if bad:
        what = ", ".join(f"{r['feature']} {r['method']} {r['statistic']:.1%}" for r in bad)
        alerts.append(Alert("drift", f"data quality: {what} (allowed {bad[0]['threshold']:.1%})", check="data_quality",
                            details={"features": sorted({r["feature"] for r in bad}),
                                     "findings": [{k: r[k] for k in ("feature", "method", "statistic")} for r in bad]},
                            **common))
    return alerts


# ---------------------------------------------------------------------------------------------------------
# model quality on labels


def primary_metric(ws) -> tuple[str, str, bool]:
    """(task, primary metric, larger is better) of the workspace's use case; a binary task's defaults without one."""
    from notebench.errors import UseCaseError
    from notebench.usecase import DIRECTIONS, METRICS, load_use_case

    try:
        uc = load_use_case(ws.settings)
    except UseCaseError:
        return "binary", METRICS["binary"], DIRECTIONS[METRICS["binary"]] == "maximize"
    return uc.task, uc.metric, uc.maximize


def _quality_result(ref: dict, labelled, th: Thresholds, metric: tuple[str, str, bool] = ("binary", "auc", True)
                    ) -> tuple[list[dict], dict]:
    """Quality rows of one labelled window: the primary metric against the holdout's (`metric`: task, name, larger
    is better), accuracy, Brier, calibration-in-the-large."""
    import numpy as np

    from notebench.evaluation import metrics

    task, name, maximize = metric
    y, s = labelled["label"].to_numpy(), labelled[PREDICTION].to_numpy(dtype=float)
    holdout = ref["holdout"].get(name)
    summary = {"labels": int(len(y)), "metric": name, "holdout": holdout, f"holdout_{name}": holdout}
    note = (f"task {task!r}: live quality is judged for binary use cases only" if task != "binary" else
            "labels are not 0/1 or predictions are not probabilities: binary-classification quality not defined"
            if not np.isin(y, (0, 1)).all() or not ((s >= 0) & (s <= 1)).all() else "")
    m = metrics(y.astype(int), s) if not note else {}
    if not note and name not in m:
        note = f"the primary metric {name!r} is not one live quality measures ({', '.join(m)})"
    if note:
        return [_row("quality", "", "none", None, None, False, labels=len(y), note=note)], {**summary, "note": note}
    value = m[name]
    worse = (lambda a, b: a < b) if maximize else (lambda a, b: a > b)
    bound = None if holdout is None else holdout - th.max_auc_drop if maximize else holdout + th.max_auc_drop
    decayed = bound is not None and not math.isnan(value) and worse(value, bound)
    drop = None if holdout is None or math.isnan(value) else (holdout - value) * (1 if maximize else -1)
    reason = (f"model quality: live {name} {value:.4f} on {len(y)} labels is {drop:.4f} "
              f"{'below' if maximize else 'above'} the holdout's {holdout:.4f} (allowed {th.max_auc_drop:.4f})"
              if decayed else "")
    note = (f"one class only among the labels: {name} undefined" if math.isnan(value)
            else f"no holdout {name} recorded on the version: nothing to compare with" if holdout is None else "")
    rows = [_row("quality", "", name, value, bound, decayed, labels=len(y), holdout=holdout, drop=drop,
                 reason=reason, **({"note": note} if note else {}))]
    rows += [_row("quality", "", other, m[other], None, False, holdout=ref["holdout"].get(other))
             for other in ("accuracy", "brier") if other != name]
    rows.append(_row("quality", "", "calibration_in_the_large", m["mean_score"] - m["positive_rate"], None, False,
                     mean_score=m["mean_score"], positive_rate=m["positive_rate"]))
    return rows, {**summary, "value": _num(value), name: _num(value), "accuracy": m["accuracy"], "brier": m["brier"],
                  "drop": drop, "alert": decayed}


# ---------------------------------------------------------------------------------------------------------
# reading the log


def _iso(moment) -> str:
    import pandas as pd

    ts = pd.Timestamp(moment)
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    return ts.isoformat()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _us_iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="microseconds")


def _keyed(frame):
    """`frame` with `_t` (arrival time in us), in log order: by time, request id, row.

    The log is written in arrival order, so a stable sort on the integer time alone usually gives the full order;
    the slower sort that breaks ties by request id runs only when two requests share a microsecond. Columns are
    set in place: a million-row read is not copied for each of them."""
    import numpy as np

    frame["_t"] = frame["time"].dt.tz_convert("UTC").dt.as_unit("us").astype("int64")
    if frame["request_id"].dtype != object:
        frame["request_id"] = frame["request_id"].astype(str)
    frame["row"] = frame["row"].astype("int64", copy=False)
    t = frame["_t"].to_numpy()
    if len(t) > 1 and (np.diff(t) < 0).any():
        frame = frame.take(np.argsort(t, kind="stable"))
        t = frame["_t"].to_numpy()
    rid = frame["request_id"].to_numpy()
    same = t[1:] == t[:-1]
    if same.any() and ((rid[1:] != rid[:-1]) & same).any():
        frame = frame.sort_values(KEY, kind="stable")
    return frame.reset_index(drop=True)


def _later(frame, key: tuple):
    """Mask of the rows of `frame` strictly after `key` (t, request, row) in log order."""
    t, rid, row = key
    return (frame["_t"] > t) | ((frame["_t"] == t) & ((frame["request_id"] > rid)
                                                      | ((frame["request_id"] == rid) & (frame["row"] > row))))


def _after(frame, key: tuple | None):
    """Rows of `frame` strictly after `key` in log order (all of them when `key` is None)."""
    return frame if key is None else frame[_later(frame, key)]


def _within(frame, first: tuple, last: tuple):
    """Rows of `frame` from key `first` to key `last`, both included."""
    t, rid, row = first
    at = (frame["_t"] == t) & (frame["request_id"] == rid) & (frame["row"] == row)
    return frame[(_later(frame, first) | at) & ~_later(frame, last)]


def _read_new(ws, since_us: int | None, cutoff_us: int):
    from notebench.serving.predlog import read_predictions

    since = None if since_us is None else _us_iso(since_us)
    frame = read_predictions(ws, since=since, until=_us_iso(cutoff_us))
    if not len(frame):
        return frame
    champion = frame["role"] == ROLE
    if not champion.all():
        frame = frame[champion]
    if not len(frame):
        return frame
    if frame["model_name"].isna().any():
        frame["model_name"] = frame["model_name"].fillna(ws.settings.value("registry", "model_name"))
    if frame["model_version"].dtype != object:
        frame["model_version"] = frame["model_version"].astype(str)
    return _keyed(frame)


def _by_version(frame):
    """(name, version, rows) per model version in `frame`; the frame itself, uncopied, when one version served."""
    names, versions = frame["model_name"].to_numpy(), frame["model_version"].to_numpy()
    if (names == names[0]).all() and (versions == versions[0]).all():
        return [(names[0], versions[0], frame)]
    return [(name, version, group) for (name, version), group in frame.groupby(["model_name", "model_version"],
                                                                                 sort=False)]


# ---------------------------------------------------------------------------------------------------------
# the pass


@dataclass
class _Pass:
    ws: object
    th: Thresholds
    con: sqlite3.Connection
    report: MonitorReport
    client: object = None
    references: dict = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)  # rows for the results table
    windows: list[dict] = field(default_factory=list)  # rows for the windows table
    cursors: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)  # window_id -> labels seen, for windows still waiting
    quality_done: list[str] = field(default_factory=list)
    state: dict = field(default_factory=dict)  # key -> value for the state table
    primary: tuple | None = None  # (task, metric, larger is better) of the use case, read when a window is scored

    def metric(self) -> tuple[str, str, bool]:
        if self.primary is None:
            self.primary = primary_metric(self.ws)
        return self.primary

    def reference(self, name: str, version: str) -> dict | None:
        key = (name, version)
        if key not in self.references:
            try:
                self.references[key] = load_reference(self.ws, name, version, self._client)  # MLflow only on a miss
            except MonitoringError as exc:
                self.references[key] = None
                self.report.skipped.append(str(exc))
        return self.references[key]

    def _client(self):
        if self.client is None:
            self.client = self.ws.client()
        return self.client


def _cursor(con, name: str, version: str) -> tuple | None:
    got = con.execute("SELECT last_t, last_request, last_row FROM cursors WHERE model_name=? AND model_version=?",
                      (name, version)).fetchone()
    return tuple(got) if got else None


def _read_from(con) -> int | None:
    """Where the next read of the log starts (us): the oldest row the last pass left unjudged, else its newest row."""
    got = con.execute("SELECT value FROM state WHERE key = 'read_from'").fetchone()
    return None if got is None else int(got[0])


def _cut(n: int, size: int, close_tail: bool) -> list[slice]:
    """Positions of `n` rows in consecutive windows of `size`; the short tail too when `close_tail`."""
    cuts = [slice(i, i + size) for i in range(0, n - n % size, size)]
    if close_tail and n % size:
        cuts.append(slice(n - n % size, n))
    return cuts


def _encoded(ref: dict, rows) -> dict:
    """The rows' features as arrays (`drift.encode`), and their predictions: converted once per read, not per window."""
    from notebench.monitoring.drift import encode

    arrays = encode(ref["profile"], rows)
    if PREDICTION in rows:
        arrays[PREDICTION] = rows[PREDICTION].to_numpy(dtype=float, na_value=float("nan"))
    return arrays


def _window_meta(name: str, version: str, keys: tuple, sl: slice, pass_id: str) -> dict:
    """Identity and span of the window at positions `sl` of a read whose key columns are `keys` (t, request, row)."""
    t, rid, row = keys
    first, last = sl.start, sl.stop - 1
    return {"window_id": f"{version}-{int(t[first])}-{rid[first]}-{int(row[first])}", "model_name": name,
            "model_version": version, "window_start": _us_iso(int(t[first])), "window_end": _us_iso(int(t[last])),
            "rows": int(sl.stop - sl.start), "first_t": int(t[first]), "first_request": str(rid[first]),
            "first_row": int(row[first]), "last_t": int(t[last]), "last_request": str(rid[last]),
            "last_row": int(row[last]), "pass_id": pass_id}


def _judge_new_rows(p: _Pass, frame) -> None:
    """Cut the new rows of each version into windows and judge each against the version's reference."""
    if not len(frame):
        return
    latest = frame.iloc[-1][["model_name", "model_version"]].tolist()
    waiting = []  # the first unjudged row of each version: the next read starts at the oldest
    for name, version, group in _by_version(frame):
        rows = _after(group, _cursor(p.con, name, version))
        p.report.rows_read += len(rows)
        superseded = [name, version] != latest  # a newer version served later: this one's tail will not grow
        ref = p.reference(name, version) if len(rows) else None
        arrays = _encoded(ref, rows) if ref is not None else None
        keys = tuple(rows[k].to_numpy() for k in KEY)
        for sl in _cut(len(rows), p.th.window, close_tail=superseded):
            meta = _window_meta(name, version, keys, sl, p.report.pass_id)
            p.cursors[(name, version)] = (meta["last_t"], meta["last_request"], meta["last_row"])
            if ref is None:
                continue
            verdicts = judge_window(ref, None, p.th, p.ws, arrays=arrays, rows=sl)
            dataset = next(r for r in verdicts if r["check"] == "dataset_drift")
            p.windows.append({**meta, "dataset_drift": int(dataset["alert"]),
                              "drifted": json.dumps(dataset["details"]["drifted"])})
            p.results += [{**meta, **r} for r in verdicts]
            p.report.alerts += _alerts_of(verdicts, meta)
            p.report.rows_judged += meta["rows"]
            p.report.windows.append({k: meta[k] for k in ("window_id", "model_version", "window_start", "window_end",
                                                          "rows")} | {
                "dataset_drift": bool(dataset["alert"]), "drift_share": dataset["statistic"],
                "drifted": dataset["details"]["drifted"],
                "prediction_drift": next(r["alert"] for r in verdicts if r["check"] == "prediction_drift"),
                "data_quality": [r["feature"] for r in verdicts if r["check"] == "data_quality" and r["alert"]]})
        judged = p.cursors.get((name, version))
        left = _after(rows, judged)
        p.report.rows_pending += len(left)
        if len(left):
            waiting.append(int(left["_t"].iloc[0]))
    p.state["read_from"] = str(min(waiting) if waiting else int(frame["_t"].max()))
    if p.report.skipped:
        p.report.skipped = sorted(set(p.report.skipped))


def _score_labelled(p: _Pass, cutoff_us: int) -> None:
    """Windows whose labels have arrived: join the feedback, and judge model quality once per window."""
    import pandas as pd

    from notebench.serving.predlog import read_feedback, read_predictions

    pending = pd.read_sql_query("SELECT * FROM windows WHERE quality_done = 0 ORDER BY seq", p.con)
    pending = pd.concat([pending, pd.DataFrame(p.windows)], ignore_index=True) if p.windows else pending
    if not len(pending):
        return
    start = int(pending["first_t"].min())
    feedback = read_feedback(p.ws, since=_us_iso(start))
    if not len(feedback):
        return
    newest = int(feedback["time"].dt.tz_convert("UTC").dt.as_unit("us").astype("int64").max())
    before = p.con.execute("SELECT value FROM state WHERE key = 'feedback_t'").fetchone()
    waiting = (pd.to_numeric(pending["labels"], errors="coerce").fillna(0) >= p.th.min_labels).any() \
        if "labels" in pending else False
    if before is not None and newest <= int(before[0]) and not waiting and not p.windows:
        return  # no label arrived since the last pass, and no window was waiting for its labels to settle
    p.state["feedback_t"] = str(newest)
    feedback = feedback.sort_values("time").drop_duplicates(["request_id", "row"], keep="last")
    logged = read_predictions(p.ws, since=_us_iso(start), until=_us_iso(int(pending["last_t"].max()) + 1),
                              columns=["request_id", "row", "time", "role", "model_name", "model_version", PREDICTION])
    logged = logged[logged["role"] == ROLE]
    if not len(logged):
        return
    logged = _keyed(logged.assign(model_version=logged["model_version"].astype(str)))
    labelled = _join_labels(logged, feedback)
    windows = pending.to_dict("records")
    at = _positions(labelled, [(w[f"{end}_t"], w[f"{end}_request"], w[f"{end}_row"])
                               for w in windows for end in ("first", "last")])
    for w in windows:
        first = (int(w["first_t"]), w["first_request"], int(w["first_row"]))
        last = (int(w["last_t"]), w["last_request"], int(w["last_row"]))
        if first in at and last in at:  # the log is in key order: the window is one slice of it
            rows = labelled.iloc[at[first]:at[last] + 1]
            rows = rows[rows["model_version"] == w["model_version"]]
        else:
            rows = _within(labelled[labelled["model_version"] == w["model_version"]], first, last)
        rows = rows.dropna(subset=["label"])
        seen = len(rows)
        stalled = not pd.isna(w.get("labels")) and seen == int(w["labels"])
        if seen < p.th.min_labels or not (seen >= w["rows"] or stalled):
            p.labels[w["window_id"]] = seen
            continue
        ref = p.reference(w["model_name"], w["model_version"])
        if ref is None:
            continue
        verdicts, summary = _quality_result(ref, rows, p.th, p.metric())
        meta = {k: w[k] for k in ("window_id", "model_name", "model_version", "window_start", "window_end", "rows")}
        meta["rows"] = int(meta["rows"])
        p.results += [{**meta, **r} for r in verdicts]
        p.report.alerts += _alerts_of(verdicts, meta)
        p.report.quality.append({**{k: meta[k] for k in ("window_id", "model_version", "window_end", "rows")},
                                 **summary})
        p.quality_done.append(w["window_id"])
        p.labels[w["window_id"]] = seen


def _positions(frame, keys: list[tuple]) -> dict:
    """Row positions in `frame` (in key order, positional index) of the given (t, request, row) keys."""
    wanted = {(int(t), str(r), int(w)) for t, r, w in keys}
    near = frame[frame["_t"].isin({k[0] for k in wanted})]
    return {key: i for i, key in zip(near.index, zip(near["_t"].tolist(), near["request_id"].tolist(),
                                                      near["row"].tolist(), strict=True), strict=True)
            if key in wanted}


def _join_labels(logged, feedback):
    """Predictions with their label: feedback by (request_id, row), or by request_id when it named no row."""
    feedback = feedback.assign(request_id=feedback["request_id"].astype(str))
    by_row = feedback.dropna(subset=["row"]).assign(row=lambda f: f["row"].astype("int64"))[
        ["request_id", "row", "label"]]
    whole = feedback[feedback["row"].isna()][["request_id", "label"]].rename(columns={"label": "label_all"})
    out = logged.merge(by_row, on=["request_id", "row"], how="left")
    if len(whole):
        out = out.merge(whole.drop_duplicates("request_id", keep="last"), on="request_id", how="left")
        out["label"] = out["label"].fillna(out.pop("label_all"))
    out.index = logged.index
    return out


def _commit(p: _Pass, started: str) -> None:
    """Results, windows, label counts and watermarks in one transaction: all of this pass, or none of it."""
    now = _now()
    with p.con:
        p.con.executemany(
            'INSERT INTO windows (window_id, model_name, model_version, window_start, window_end, rows, first_t, '
            'first_request, first_row, last_t, last_request, last_row, dataset_drift, drifted, pass_id) VALUES '
            '(:window_id, :model_name, :model_version, :window_start, :window_end, :rows, :first_t, :first_request, '
            ':first_row, :last_t, :last_request, :last_row, :dataset_drift, :drifted, :pass_id)', p.windows)
        p.con.executemany(
            'INSERT INTO results (window_id, window_start, window_end, model_name, model_version, rows, "check", '
            'feature, method, statistic, threshold, alert, details, pass_id, recorded_at) '
            'VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)',
            [(r["window_id"], r["window_start"], r["window_end"], r["model_name"], r["model_version"], r["rows"],
              r["check"], r["feature"], r["method"], r["statistic"], r["threshold"], int(r["alert"]),
              json.dumps(r["details"], default=str), p.report.pass_id, now) for r in p.results])
        p.con.executemany("UPDATE windows SET labels = ? WHERE window_id = ?",
                          [(n, wid) for wid, n in p.labels.items()])
        p.con.executemany("UPDATE windows SET quality_done = 1 WHERE window_id = ?", [(w,) for w in p.quality_done])
        p.con.executemany("INSERT INTO cursors VALUES (?,?,?,?,?) ON CONFLICT (model_name, model_version) DO UPDATE "
                          "SET last_t=excluded.last_t, last_request=excluded.last_request, last_row=excluded.last_row",
                          [(n, v, *c) for (n, v), c in p.cursors.items()])
        p.con.executemany("INSERT INTO state VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                          list(p.state.items()))
        p.con.execute("INSERT INTO passes VALUES (?,?,?,?,?,?,?,?)",
                      (p.report.pass_id, started, now, p.report.rows_read, len(p.report.windows),
                       len(p.report.quality), len(p.report.alerts), None))


def monitor(workspace=None, *, log_to_mlflow: bool = True, settle: float | None = None, until=None,
            parent_run_id: str | None = None, wait: float = 60.0) -> MonitorReport:
    """One monitoring pass over the rows no pass has judged: drift and data quality per window, model quality on
    labelled windows; results stored in the workspace (`read_results`) and logged to MLflow; alerts returned."""
    ws = Workspace.of(workspace)
    th = Thresholds.from_settings(ws.settings)
    settle = ws.settings.value("monitoring", "settle") if settle is None else settle
    cutoff = int((_parse_time(until) if until is not None else time.time() - settle) * 1e6)
    started = _now()
    report = MonitorReport(pass_id=datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"))
    with _pass_lock(ws, wait), _closing(_connect(ws)) as con:
        p = _Pass(ws, th, con, report)
        frame = _read_new(ws, _read_from(con), cutoff)
        _judge_new_rows(p, frame)
        _score_labelled(p, cutoff)
        _commit(p, started)
        report.message = _message(report)
        if log_to_mlflow and not report.nothing_new:
            try:
                report.mlflow_run_id = _log_pass(p, parent_run_id)
                con.execute("UPDATE passes SET mlflow_run_id = ? WHERE pass_id = ?",
                            (report.mlflow_run_id, report.pass_id))
                con.commit()
            except Exception as exc:  # the verdicts are stored; MLflow is a copy
                report.mlflow_error = f"{type(exc).__name__}: {exc}"
    return report


def _parse_time(moment) -> float:
    import pandas as pd

    return pd.Timestamp(_iso(moment)).timestamp()


def _message(r: MonitorReport) -> str:
    if r.nothing_new:
        waiting = f"; {r.rows_pending} row(s) wait for their window to fill" if r.rows_pending else ""
        return f"nothing to monitor: no new predictions make a full window and no labelled window is ready{waiting}"
    parts = [f"{len(r.windows)} window(s) judged ({r.rows_judged} rows)"]
    if r.quality:
        parts.append(f"{len(r.quality)} labelled window(s) scored")
    if r.rows_pending:
        parts.append(f"{r.rows_pending} row(s) wait for their window to fill")
    parts.append(f"{len(r.alerts)} alert(s)")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# MLflow: one run per pass, metrics per window


def _metric_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_./ " else "_" for ch in text)


def _log_pass(p: _Pass, parent_run_id: str | None) -> str:
    from mlflow.entities import Metric, Param, RunTag

    client = p._client()
    experiment = p.ws.experiment_id(client)
    tags = {"notebench.kind": "monitoring", "notebench.monitor.pass": p.report.pass_id}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment, run_name=f"monitor {p.report.pass_id}", tags=tags)
    run_id = run.info.run_id
    seqs = dict(p.con.execute("SELECT window_id, seq FROM windows").fetchall())
    metrics = []
    for r in p.results:
        if r["statistic"] is None:
            continue
        name = {"drift": f"drift.{r['feature']}", "data_quality": f"data_quality.{r['feature']}.{r['method']}",
                "quality": f"quality.{r['method']}"}.get(r["check"], r["check"])
        stamp = int(_parse_time(r["window_end"]) * 1000)
        metrics.append(Metric(_metric_name(name), r["statistic"], stamp, int(seqs.get(r["window_id"], 0))))
        if r["check"] in ("dataset_drift", "prediction_drift"):
            metrics.append(Metric(_metric_name(f"{r['check']}.alert"), float(r["alert"]), stamp,
                                  int(seqs.get(r["window_id"], 0))))
    params = [Param(k, str(v)) for k, v in asdict(p.th).items()]
    summary = [RunTag("notebench.monitor.windows", str(len(p.report.windows))),
               RunTag("notebench.monitor.alerts", str(len(p.report.alerts)))]
    client.log_batch(run_id, params=params, tags=summary)
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    client.log_dict(run_id, {"message": p.report.message, "alerts": [a.to_dict() for a in p.report.alerts],
                             "windows": p.report.windows, "quality": p.report.quality}, "monitoring/pass.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id
