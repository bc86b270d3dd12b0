"""`notebench deploy-check`: Google's continuous-delivery checks on a model version before it may serve.

A deploy-check reads as a list of steps, each reported as it runs:

1. **resolve** the candidate (a version number, or the version an alias such as `challenger` names) and the
   current champion;
2. **start** the candidate in a fresh process, exactly as production starts it (`python -m notebench.serving
   --model-uri models:/NAME/V`), with prediction logging on into a throwaway workspace under
   `<workspace>/deploy_checks/`, so the load test pays what production pays; the champion starts beside it, in
   the same way, without logging;
3. **input example**: the candidate must answer the input example logged with it;
4. **recorded requests**: a sample of real requests from the workspace's prediction log, rebuilt into
   `/invocations` bodies, goes to both servers; each answer's format (status, keys, JSON types, shape; never the
   values) must be the champion's, so that clients of the champion keep working. With an empty log only the input
   example is compared, and the report says so;
5. **load test**: `[serving] check_requests` single-row requests from `[serving] check_concurrency` clients;
   every one must succeed, and p99 latency must stay under `[serving] check_max_p99_ms` when that is above 0;
6. **record** the verdict on the model version (tags `notebench.deploy_check.*`: status, qps, p50/p99, time,
   reasons, the MLflow run) and a run in the workspace's experiment holding the metrics and the report.

Why the champion is started rather than its answers kept on file: a recorded format would have been produced by
whatever service code ran when it was recorded, so a change in the service itself would show up as a change of
model. Two servers on the same code, asked the same requests in the same minute, differ only by the model.

`[gates] deploy_check = true` makes `promote` require `notebench.deploy_check.status = passed` on the version.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from notebench.errors import DeployCheckInputError

__all__ = ["DEPLOY_CHECK_PREFIX", "STATUS_TAG", "deploy_check", "describe_shape", "response_shape"]

DEPLOY_CHECK_PREFIX = "notebench.deploy_check."
STATUS_TAG = DEPLOY_CHECK_PREFIX + "status"  # passed | failed: what `[gates] deploy_check` reads
READY_TIMEOUT = 180.0  # seconds a server may take to load its model


# ---------------------------------------------------------------------------------------------------------
# the report


@dataclass
class Finding:
    """One check: its name, whether it passed (None: skipped, with why), and readable details."""

    name: str
    passed: bool | None
    detail: str
    lines: list[str] = field(default_factory=list)


@dataclass
class Report:
    model: str
    version: str
    asked: str  # what the user asked for: "version 3" or "alias challenger"
    champion: str | None
    started: str  # ISO time
    findings: list[Finding] = field(default_factory=list)
    load: dict = field(default_factory=dict)
    folder: Path | None = None  # the throwaway workspace and the servers' logs

    @property
    def passed(self) -> bool:
        return bool(self.findings) and all(f.passed is not False for f in self.findings)

    def reasons(self) -> list[str]:
        failed = [f"{f.name}: {f.detail}" for f in self.findings if f.passed is False]
        return failed or [f"{f.name}: {f.detail}" for f in self.findings]

    def as_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "asked": self.asked, "champion": self.champion,
                "started": self.started, "status": "passed" if self.passed else "failed", "load": self.load,
                "findings": [{"name": f.name, "passed": f.passed, "detail": f.detail, "lines": f.lines}
                             for f in self.findings]}

    def markdown(self) -> str:
        verdict = "**passed**" if self.passed else "**failed**"
        lines = [f"# Deploy-check of {self.model} version {self.version}", "",
                 f"Asked for {self.asked}; champion: {self.champion or 'none'}; started {self.started}.", "",
                 f"Verdict: {verdict}", "", "| check | result | detail |", "|---|---|---|"]
        for f in self.findings:
            result = {True: "passed", False: "FAILED", None: "skipped"}[f.passed]
            lines.append(f"| {f.name} | {result} | {f.detail.replace('|', '/')} |")
        for f in self.findings:
            if f.lines:
                lines += ["", f"## {f.name}", "", *[f"- {line}" for line in f.lines]]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# response formats


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def response_shape(value):
    """The format of a decoded JSON value, without its values: keys, types and list lengths."""
    if isinstance(value, dict):
        return {"object": {k: response_shape(v) for k, v in sorted(value.items())}}
    if isinstance(value, list):
        items = []
        for item in value:
            shape = response_shape(item)
            if shape not in items:
                items.append(shape)
        return {"list": len(value), "of": items}
    return _JSON_TYPES.get(type(value), type(value).__name__)


def describe_shape(shape) -> str:
    """`response_shape`'s result as short text: `{model_version: string, predictions: list[5] of list[2] of number}`."""
    if isinstance(shape, str):
        return shape
    if "object" in shape:
        return "{" + ", ".join(f"{k}: {describe_shape(v)}" for k, v in shape["object"].items()) + "}"
    items = " | ".join(describe_shape(s) for s in shape["of"]) or "nothing"
    return f"list[{shape['list']}] of {items}"


# ---------------------------------------------------------------------------------------------------------
# the servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m notebench.serving` on one fixed model version, in a fresh process on a free local port."""

    def __init__(self, label: str, model_uri: str, folder: Path, env: dict, cwd: Path, *, log_predictions: bool):
        self.label, self.model_uri = label, model_uri  # e.g. "candidate"; models:/NAME/V
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"{label}.log"
        cmd = [sys.executable, "-m", "notebench.serving", "--model-uri", model_uri, "--host", "127.0.0.1",
               "--port", str(self.port), "--watch-interval", "0", "--log-level", "warning",
               *([] if log_predictions else ["--no-log"])]
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.perf_counter()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Seconds until `/ready` answered 200; `RuntimeError` with the reason when it never will."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.label} server exited with status {self.proc.returncode}: "
                                   f"{self.tail()}")
            try:
                r = httpx.get(f"{self.url}/ready", timeout=5)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if r.status_code == 200:
                return time.perf_counter() - self.started
            # with a fixed model URI the model is loaded once, before the server answers: not ready is final
            raise RuntimeError(f"the {self.label} server cannot serve {self.model_uri}: "
                               f"{'; '.join(r.json().get('problems', [])) or r.text}")
        raise RuntimeError(f"the {self.label} server was not ready after {timeout:g} s: {self.tail()}")

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " / ".join(text[-lines:]) or "(no output)"

    def stop(self) -> None:
        """SIGINT (graceful: flushes its log), then SIGKILL after 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _server_env(ws, folder: Path) -> dict:
    """The environment of a checked server: the workspace's MLflow stores, a throwaway workspace for its log."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTEBENCH_WORKSPACE_PATH": str(folder / "workspace"),
           "NOTEBENCH_TRACKING_URI": ws.tracking_uri, "NOTEBENCH_REGISTRY_URI": ws.registry_uri,
           "NOTEBENCH_SETTINGS": str(ws.settings.file)}
    return env


# ---------------------------------------------------------------------------------------------------------
# the requests


def _resolve(client, name: str, version: str | None, alias: str | None) -> tuple[str, str]:
    """The candidate's version number, and how it was asked for; `DeployCheckInputError` when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        known = sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int)
    except MlflowException as exc:
        raise DeployCheckInputError(f"cannot read the registry: {exc}", model=name) from exc
    if not known:
        raise DeployCheckInputError("no versions registered yet; train one with `notebench run training`",
                                    model=name)
    if version is not None:
        if str(version) not in known:
            raise DeployCheckInputError(f"no version {version}; versions: {', '.join(known)}", model=name)
        return str(version), f"version {version}"
    try:
        found = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        aliases = client.get_registered_model(name).aliases
        raise DeployCheckInputError(f"no alias '{alias}'; aliases: "
                                    f"{', '.join(f'{a} -> {v}' for a, v in aliases.items()) or 'none'}",
                                    model=name) from exc
    return str(found.version), f"alias {alias} (version {found.version})"


def _mlflow_model(client, name: str, version: str, tracking_uri: str):
    """The version's `MLmodel` (signature, input example) and its local folder."""
    import mlflow
    from mlflow.models import Model

    uri = client.get_model_version_download_uri(name, version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)
    return Model.load(local), local


def _input_names(client, name: str, version: str, tracking_uri: str) -> list[str] | None:
    try:
        model, _ = _mlflow_model(client, name, version, tracking_uri)
        return model.get_input_schema().input_names()
    except Exception:  # a deleted version, a model without signature: its requests are rebuilt from the log alone
        return None


def _split_body(frame) -> bytes:
    """`frame` as an `/invocations` body in MLflow's `dataframe_split` format (NaN as null)."""
    doc = json.loads(frame.to_json(orient="split", index=False, date_format="iso"))
    return json.dumps({"dataframe_split": {"columns": doc["columns"], "data": doc["data"]}}).encode()


def _example(mlmodel, local: str):
    """The model's input example as a DataFrame, or None."""
    try:
        example = mlmodel.load_input_example(local)
    except Exception:  # unreadable example: reported as missing
        return None
    return example if hasattr(example, "columns") and len(example) else None


def _recorded(ws, client, name: str, sample: int) -> tuple[list[tuple[str, bytes]], str]:
    """Up to `sample` recent requests from the prediction log, rebuilt as `/invocations` bodies (request id, body),
    and a sentence about where they came from."""
    from datetime import timedelta

    from notebench.serving.predlog import META_COLUMNS, read_predictions

    index_columns = ["request_id", "time", "role"]  # a cheap first pass: which requests, and since when
    index = read_predictions(ws, since=datetime.now(UTC) - timedelta(days=7), columns=index_columns)
    window = "the last 7 days"
    if index.empty:
        index, window = read_predictions(ws, columns=index_columns), "the whole log"
    if index.empty:
        return [], "the prediction log is empty: only the input example is compared"
    index = index[index["role"] == "champion"] if "role" in index else index
    ids = list(dict.fromkeys(index.sort_values("time", ascending=False)["request_id"]))[:sample]
    if not ids:
        return [], f"the prediction log holds no champion requests in {window}: only the input example is compared"
    chosen = index[index["request_id"].isin(ids)]
    log = read_predictions(ws, since=chosen["time"].min())  # only the newest segments, every column
    log = log[log["request_id"].isin(ids)]
    names: dict[str, list[str] | None] = {}
    bodies = []
    for rid in ids:
        rows = log[log["request_id"] == rid].sort_values("row")
        if rows.empty:
            continue
        version = str(rows["model_version"].iloc[0])
        if version not in names:
            names[version] = _input_names(client, name, version, ws.tracking_uri)
        columns = names[version] or [c.removeprefix("feature_") if c.removeprefix("feature_") in META_COLUMNS else c
                                     for c in rows.columns if c not in META_COLUMNS
                                     and not c.startswith("output_") and rows[c].notna().any()]
        stored = {c: f"feature_{c}" if c in META_COLUMNS else c for c in columns}
        if not all(s in rows for s in stored.values()):
            continue
        frame = rows[list(stored.values())].set_axis(columns, axis=1)
        bodies.append((rid, _split_body(frame)))
    versions = ", ".join(sorted(names, key=lambda v: int(v) if v.isdigit() else 0))
    return bodies, (f"{len(bodies)} of {index['request_id'].nunique():,} requests logged in {window} "
                    f"(answered by version {versions})")


def _post(url: str, body: bytes):
    import httpx

    r = httpx.post(f"{url}/invocations", content=body, headers={"content-type": "application/json"}, timeout=60)
    try:
        doc = r.json()
    except ValueError:
        doc = r.text
    return r.status_code, doc


def _compare(candidate: Server, champion: Server | None,
             requests: list[tuple[str, bytes]]) -> tuple[list[tuple[str, str]], list[str]]:
    """Send each request to both servers; ((label, problem) per request at fault, a line describing each answer)."""
    problems, lines = [], []
    for label, body in requests:
        status, doc = _post(candidate.url, body)
        shape = response_shape(doc)
        line = f"{label}: candidate {status} {describe_shape(shape)}"
        if champion is None:
            if status != 200:
                problems.append((label, f"the candidate answered {status}: {_message(doc)}"))
            lines.append(line)
            continue
        their_status, their_doc = _post(champion.url, body)
        their_shape = response_shape(their_doc)
        if (status, shape) != (their_status, their_shape):
            problems.append((label, f"the candidate answers {status} {describe_shape(shape)} where the champion "
                                    f"answers {their_status} {describe_shape(their_shape)}"
                                    + (f" ({_message(doc)})" if status != 200 else "")))
            line += f"; champion {their_status} {describe_shape(their_shape)}: DIFFERENT"
        else:
            line += "; same as the champion"
        lines.append(line)
    return problems, lines


def _message(doc) -> str:
    return doc.get("message", str(doc))[:300] if isinstance(doc, dict) else str(doc)[:300]


def _single_rows(requests: list[tuple[str, bytes]]) -> list[bytes]:
    """Every row of the requests as a one-row `/invocations` body (the load test's bodies)."""
    bodies = []
    for _, body in requests:
        split = json.loads(body)["dataframe_split"]
        for row in split["data"]:
            bodies.append(json.dumps({"dataframe_split": {"columns": split["columns"], "data": [row]}}).encode())
    return bodies


# ---------------------------------------------------------------------------------------------------------
# the load test


def load_test(url: str, bodies: list[bytes], total: int, concurrency: int,
              out: Callable[[str], None] = print) -> dict:
    """`total` POSTs of `bodies` (in turn) to `url`/invocations from `concurrency` keep-alive clients: QPS and
    latency percentiles (client-side, so they include the client's own cost), and the failures."""
    import httpx
    import numpy as np

    counter, latencies, failures = itertools.count(), [], []

    def post(http, i: int) -> tuple:
        try:
            r = http.post("/invocations", content=bodies[i % len(bodies)])
            return r.status_code, r.text
        except httpx.HTTPError as exc:
            return type(exc).__name__, str(exc)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60, headers={"content-type": "application/json"}) as http:
            while (i := next(counter)) < total:  # next() on a shared count is atomic under the GIL
                start = time.perf_counter()
                status, text = post(http, i)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    failures.append(f"request {i}: {status} {text[:200]}")

    with httpx.Client(base_url=url, timeout=60, headers={"content-type": "application/json"}) as http:
        for i in range(max(10, 2 * concurrency)):  # warm-up, not counted
            post(http, i)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    next_report = start + 2.0
    while any(t.is_alive() for t in threads):
        threads[0].join(0.1)
        if time.perf_counter() >= next_report:
            out(f"      ... {len(latencies):,}/{total:,} requests")
            next_report += 2.0
    seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {"requests": len(latencies), "concurrency": concurrency, "seconds": round(seconds, 3),
            "qps": round(len(latencies) / seconds, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2),
            "errors": len(failures), "first_errors": failures[:3]}


# ---------------------------------------------------------------------------------------------------------
# recording


def _record(ws, client, report: Report) -> str:
    """The verdict as version tags, and an MLflow run with the metrics and the report; returns the run id."""
    status = "passed" if report.passed else "failed"
    run = client.create_run(ws.experiment_id(client), run_name=f"deploy-check {report.model} v{report.version}",
                            tags={"notebench.kind": "deploy_check", "notebench.model_name": report.model,
                                  "notebench.model_version": report.version, DEPLOY_CHECK_PREFIX + "status": status})
    run_id = run.info.run_id
    for key, value in (("model_version", report.version), ("champion", report.champion or "none"),
                       ("requests", report.load.get("requests")), ("concurrency", report.load.get("concurrency"))):
        client.log_param(run_id, key, value)
    for key in ("qps", "p50_ms", "p99_ms", "max_ms", "errors"):
        if report.load.get(key) is not None:
            client.log_metric(run_id, key, report.load[key])
    client.log_text(run_id, report.markdown(), "deploy_check/report.md")
    client.log_dict(run_id, report.as_dict(), "deploy_check/report.json")
    client.set_terminated(run_id, "FINISHED" if report.passed else "FAILED")
    tags = {"status": status, "at": report.started, "run_id": run_id,
            "reasons": json.dumps(report.reasons())[:5000],
            **{k: str(report.load[k]) for k in ("qps", "p50_ms", "p99_ms") if report.load.get(k) is not None}}
    for key, value in tags.items():
        client.set_model_version_tag(report.model, report.version, DEPLOY_CHECK_PREFIX + key, value)
    return run_id


# ---------------------------------------------------------------------------------------------------------
# the command


def deploy_check(workspace=None, version: str | None = None, *, alias: str | None = None,
                 requests: int | None = None, concurrency: int | None = None, max_p99_ms: float | None = None,
                 sample: int = 20, out: Callable[[str], None] = print) -> dict:
    """Check a model version as `notebench deploy-check` does (see the module docstring); return the report as a
    dict (`status` passed|failed). `version` or `alias` (default `challenger`) names the candidate; unset limits
    take `[serving] check_requests`, `check_concurrency`, `check_max_p99_ms`."""
    from notebench.registry.models import champion as champion_of
    from notebench.workspace import Workspace

    ws = Workspace.of(workspace)
    settings = ws.settings
    name = settings.value("registry", "model_name")
    requests = settings.value("serving", "check_requests") if requests is None else requests
    concurrency = settings.value("serving", "check_concurrency") if concurrency is None else concurrency
    max_p99_ms = settings.value("serving", "check_max_p99_ms") if max_p99_ms is None else max_p99_ms
    for what, value in (("requests", requests), ("concurrency", concurrency), ("sample", sample)):
        if value < 1:
            raise DeployCheckInputError(f"{what} must be at least 1, got {value}", model=name)
    client = ws.client()
    version, asked = _resolve(client, name, version, alias or ("challenger" if version is None else None))
    champion = champion_of(client, name)
    report = Report(name, version, asked, champion, datetime.now(UTC).isoformat(timespec="seconds"))
    out(f"deploy-check of {name} version {version} ({asked}); champion: {champion or 'none'}")

    report.folder = ws.ensure() / "deploy_checks" / f"{time.strftime('%Y%m%d-%H%M%S')}-v{version}"
    report.folder.mkdir(parents=True, exist_ok=True)
    env = _server_env(ws, report.folder)
    servers: list[Server] = []
    try:
        _run_checks(ws, client, report, env, servers, requests, concurrency, max_p99_ms, sample, out)
    finally:
        if servers:
            out("[5/6] stopping the servers (the candidate flushes its prediction log) ...")
        for server in servers:
            server.stop()
    run_id = _record(ws, client, report)
    out(f"[6/6] recorded on models:/{name}/{version}: {STATUS_TAG}={'passed' if report.passed else 'failed'}"
        + (f", qps={report.load['qps']}, p99_ms={report.load['p99_ms']}" if report.load.get("qps") else "")
        + f"; MLflow run {run_id}")
    if report.passed:
        shutil.rmtree(report.folder, ignore_errors=True)
        out(f"PASSED: version {version} may be promoted (`notebench promote {version}`)")
    else:
        out(f"FAILED: version {version} should not serve:")
        for reason in report.reasons():
            out(f"  - {reason}")
        out(f"  servers' logs: {report.folder}")
    return {**report.as_dict(), "run_id": run_id}


@dataclass
class _Checking:
    """What the steps of one deploy-check share."""

    ws: object  # the Workspace
    client: object  # its MlflowClient
    report: Report
    out: Callable[[str], None]
    servers: list = field(default_factory=list)  # everything started, stopped at the end whatever happens
    candidate: Server | None = None
    reference: Server | None = None  # the champion, when there is one to compare with

    def finding(self, name: str, passed: bool | None, detail: str, lines: list[str] | None = None) -> None:
        self.report.findings.append(Finding(name, passed, detail, lines or []))


def _run_checks(ws, client, report: Report, env: dict, servers: list, requests: int, concurrency: int,
                max_p99_ms: float, sample: int, out: Callable[[str], None]) -> None:
    """Steps 1-4, appending their findings to `report`; `servers` collects what must be stopped."""
    run = _Checking(ws, client, report, out, servers)
    _start_servers(run, env)
    example = _read_example(run)
    recorded, source = _recorded(ws, client, report.model, sample)
    if not _wait_for_servers(run):
        return
    examples = _check_example(run, example)
    _check_recorded(run, recorded, source)
    _check_load(run, _single_rows(recorded + examples), requests, concurrency, max_p99_ms)


def _start_servers(run: _Checking, env: dict) -> None:
    """The candidate (logging into the throwaway workspace) and the champion, starting side by side."""
    name, version, champion = run.report.model, run.report.version, run.report.champion
    compare_with = champion if champion and champion != version else None
    run.out(f"[1/6] starting version {version}" + (f" and the champion, version {compare_with}," if compare_with
                                                   else "") + " in fresh processes ...")
    cwd, folder = run.ws.settings.root, run.report.folder
    run.candidate = Server("candidate", f"models:/{name}/{version}", folder, env, cwd, log_predictions=True)
    run.servers.append(run.candidate)
    if compare_with:
        run.reference = Server("champion", f"models:/{name}/{compare_with}", folder, env, cwd, log_predictions=False)
        run.servers.append(run.reference)


def _read_example(run: _Checking):
    """The candidate's input example (None, with a finding, when it cannot be read)."""
    try:
        return _example(*_mlflow_model(run.client, run.report.model, run.report.version, run.ws.tracking_uri))
    except Exception as exc:  # MLflow, a missing artifact: reported, the other checks still run
        run.finding("model", False, f"cannot read the version's MLmodel: {exc}")
        return None


def _wait_for_servers(run: _Checking) -> bool:
    """Wait for both servers; False when the candidate cannot serve (a champion that cannot only skips comparing)."""
    try:
        seconds = run.candidate.wait_ready()
    except RuntimeError as exc:
        run.finding("start", False, str(exc))
        run.out(f"      {exc}")
        return False
    run.finding("start", True, f"version {run.report.version} ready in {seconds:.1f} s at {run.candidate.url}")
    run.out(f"      candidate ready in {seconds:.1f} s")
    if run.reference is not None:
        try:
            run.out(f"      champion ready in {run.reference.wait_ready():.1f} s")
        except RuntimeError as exc:
            run.finding("champion", None, f"not compared: {exc}")
            run.out(f"      WARNING: the champion cannot be started, formats are not compared: {exc}")
            run.reference = None
    elif run.report.champion == run.report.version:
        run.finding("champion", None, "the candidate is the champion: nothing to compare with")
    else:
        run.finding("champion", None, "no champion yet (a first deployment): nothing to compare with")
    return True


def _check_example(run: _Checking, example) -> list[tuple[str, bytes]]:
    """The candidate answers its input example, in the champion's format; returns it as a request."""
    if example is None:
        run.finding("input example", False, "the model was logged without a readable input example; log it with "
                                            "one (input_example=...)")
        run.out("[2/6] input example: MISSING")
        return []
    examples = [("input example", _split_body(example))]
    problems, lines = _compare(run.candidate, run.reference, examples)
    same = ", same format as the champion" if run.reference else ""
    run.finding("input example", not problems, "; ".join(p for _, p in problems) or
                f"{len(example)} rows answered{same}", lines)
    run.out(f"[2/6] {lines[0]}")
    return examples


def _check_recorded(run: _Checking, recorded: list[tuple[str, bytes]], source: str) -> None:
    """The candidate answers real requests from the log as the champion does."""
    run.out(f"[3/6] recorded requests: {source}")
    if not recorded:
        run.finding("recorded requests", None, source)
        return
    problems, lines = _compare(run.candidate, run.reference, recorded)
    detail = "; ".join(f"request {label}: {p}" for label, p in problems[:3])
    detail += f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    ok = f"{len(recorded)} answered" + (", each in the champion's format" if run.reference else "")
    run.finding("recorded requests", not problems, detail or ok, [source, *lines])
    run.out(f"      {'FAILED: ' + detail if problems else ok}")


def _check_load(run: _Checking, bodies: list[bytes], requests: int, concurrency: int, max_p99_ms: float) -> None:
    """Every request of the load test succeeds, and p99 stays under the limit."""
    if not bodies:
        run.finding("load test", False, "no request to send: no input example and an empty log")
        return
    run.out(f"[4/6] load test: {requests:,} single-row requests from {concurrency} clients ...")
    load = run.report.load = load_test(run.candidate.url, bodies, requests, concurrency, out=run.out)
    problems = []
    if load["errors"]:
        problems.append(f"{load['errors']} of {load['requests']} requests failed: {'; '.join(load['first_errors'])}")
    if max_p99_ms > 0 and load["p99_ms"] > max_p99_ms:
        problems.append(f"p99 {load['p99_ms']} ms is above [serving] check_max_p99_ms = {max_p99_ms:g} ms")
    summary = (f"{load['qps']:,} requests/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms "
               f"({load['requests']} requests, {concurrency} clients, {load['errors']} errors)")
    run.finding("load test", not problems, "; ".join(problems) or summary, [summary])
    run.out(f"      {summary}" + "".join(f"\n      FAILED: {p}" for p in problems))
