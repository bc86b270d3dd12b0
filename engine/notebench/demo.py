"""`notebench demo`: the whole level-2 loop on the demo world — what `make demo` runs.

1. Land the first days of the use case's world (its contract's `simulate`); a `covariate_shift` starts the day
   after them.
2. Run the training pipeline: the first model has no champion to beat, is blessed on absolute thresholds and
   becomes champion.
3. Serve the champion (`notebench serve` in its own process), replay the next days of the world as traffic, and
   send their labels as feedback once they "arrive".
4. Land those days in the landing area too, as the data team would.
5. One pass of the trigger service: the monitoring job judges the logged predictions against the champion's
   training reference (the shifted features drift) and their labels; the drift alerts and the new landing data
   coalesce into one training run; the new model is compared with the champion on the same holdout, blessed and
   promoted.
6. The service notices the alias move and swaps to the new version without a failed request.

Everything lands in the workspace; a second `notebench demo` on the same workspace starts from what is there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from notebench.errors import UseCaseError
from notebench.workspace import Workspace

__all__ = ["run_demo"]


def _say(text: str = "") -> None:
    print(text, flush=True)


def _simulate(ws: Workspace, uc, landing: Path, start_day: int, days: int, shift_day: int,
              size: int | None) -> None:
    """The use case's world: days [start_day, start_day + days) landed in `landing` (identical if rerun)."""
    if uc.simulate is None:
        raise UseCaseError(f"use case {uc.name!r} has no `simulate`: the demo needs one to make its world's data "
                           "(see the README, 'Bring your own use case')")
    uc.simulate(landing, start_day=start_day, days=days, seed=ws.settings.value("training", "seed"),
                scenario="covariate_shift", shift_day=shift_day, **({"size": size} if size else {}))


def _products(ws: Workspace, step: str) -> Path:
    return ws.root / "pipelines" / "training" / "products" / step


def _where(ws: Workspace) -> None:
    """In team mode (steps not on the local executor), say where steps, trials and state are."""
    from notebench.pipeline.dask_executor import redact
    from notebench.settings import SCHEMA

    value = ws.settings.value
    executor = value("pipeline", "executor")
    if executor == "local":
        return
    scheduler = redact(value("dask", "scheduler"))
    where = f"Dask workers of {scheduler}" if executor == "dask" else f"the {executor} executor"
    trials = value("training", "trial_workers")
    _say(f"Team mode: pipeline steps on {where}; tuning trials "
         f"{f'on {trials} Dask workers' if trials > 1 else 'in the train step'}")
    stores = {"MLflow tracking": ws.tracking_uri}
    for section, key, what in (("state", "uri", "engine state"), ("training", "study_storage", "Optuna studies"),
                               ("features", "registry", "Feast registry")):
        if key in SCHEMA.get(section, {}) and value(section, key):
            stores[what] = value(section, key)
    _say("   " + "; ".join(f"{what}: {redact(uri)}" for what, uri in stores.items()))
    _say(f"   shared workspace (products, executed notebooks): {ws.root}\n")


def _verdict(ws: Workspace) -> dict:
    """Print the blessing and what the registry did with the model; return the registration."""
    model = json.loads((_products(ws, "train") / "model.json").read_text())
    if model.get("trials_on"):
        _say(f"   tuning: {model['trials']} trials on {model['trials_on']}")
    reg = json.loads((_products(ws, "register") / "registration.json").read_text())
    blessing = json.loads((_products(ws, "validate_model") / "blessing.json").read_text())
    _say(f"   model version {reg.get('version')}: {'BLESSED' if blessing['blessed'] else 'NOT blessed'}")
    for reason in blessing["reasons"]:
        _say(f"     - {reason}")
    promoted = reg.get("promoted")
    _say(f"   registry: aliases {', '.join(reg.get('aliases') or []) or 'none'}; "
         f"{'promoted to champion' if promoted else 'champion unchanged'}"
         f"{' (' + reg['why'] + ')' if reg.get('why') else ''}")
    return reg


# ---------------------------------------------------------------------------------------------------------
# the service, in its own process


class _Service:
    """`python -m notebench.serving` on a free local port, watching the alias every second."""

    def __init__(self, ws: Workspace):
        from notebench.serving.deploycheck import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = ws.root / "demo" / "service.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **ws.mlflow_env(), "NOTEBENCH_SERVING_WATCH_INTERVAL": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "notebench.serving", "--port", str(self.port),
                                          "--log-level", "warning"], env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> dict:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the prediction service exited ({self.proc.returncode}); see {self.log}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return httpx.get(f"{self.url}/model", timeout=5).json()
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the prediction service was not ready after {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _replay_days(ws: Workspace, uc, days: range, shift_day: int, size: int | None):
    """Each replayed day's feature rows with the label each row will get (None while unknown), from the world."""
    import shutil

    import pandas as pd

    from notebench.data.batches import feature_rows, read_labels

    folder = ws.root / "demo" / "replay"
    shutil.rmtree(folder, ignore_errors=True)
    # the days themselves, and enough days after them for their labels to arrive
    _simulate(ws, uc, folder, days.start, len(days) + uc.label_delay_days, shift_day, size)
    labels = read_labels(uc, folder)[[*uc.keys, uc.target]]
    for path in sorted((folder / "features").glob("*.parquet"))[:len(days)]:
        frame = feature_rows(uc, pd.read_parquet(path)).merge(labels, on=uc.keys, how="left")
        yield path.stem, frame


def _summary(uc, predictions: list, classes: list | None) -> str:
    """A day's predictions in a few words, as the task reads: a binary task's mean score, a regression's mean value,
    a multiclass task's most predicted class and its share."""
    import numpy as np

    if not predictions:
        return "none answered"
    values = np.asarray(predictions, dtype=float)
    if uc.task == "multiclass" and values.ndim == 2:
        picked = values.argmax(axis=1)
        top = np.bincount(picked, minlength=values.shape[1]).argmax()
        name = classes[top] if classes and top < len(classes) else f"class {top}"
        return f"most predicted {name} ({(picked == top).mean():.0%})"
    return f"mean {'prediction' if uc.task == 'regression' else 'score'} {values.mean():.3f}"


def _replay(service: _Service, ws: Workspace, uc, days: range, shift_day: int, size: int | None) -> dict:
    """Send days of the world as /predict traffic, then their labels as /feedback; count what happened."""
    import httpx

    sent, failed, versions, feedback = 0, 0, set(), []
    with httpx.Client(base_url=service.url, timeout=60) as http:
        for day, frame in _replay_days(ws, uc, days, shift_day, size):
            scores, classes = [], None
            for start in range(0, len(frame), 100):
                chunk = frame.iloc[start:start + 100]
                records = json.loads(chunk[uc.features].to_json(orient="records"))
                answer = http.post("/predict", json={"records": records})
                if answer.status_code != 200:
                    failed += 1
                    continue
                body = answer.json()
                sent += len(records)
                versions.add(body["model_version"])
                scores.extend(body["predictions"])
                classes = body.get("classes") or classes
                labels = json.loads(chunk[uc.target].to_json(orient="values"))
                feedback += [{"request_id": body["request_id"], "row": i, "label": label}
                             for i, label in enumerate(labels) if label is not None]
            _say(f"   {day}: {len(frame):,} predictions, {_summary(uc, scores, classes)}")
        for start in range(0, len(feedback), 2000):
            http.post("/feedback", json=feedback[start:start + 2000]).raise_for_status()
    return {"predictions": sent, "failed_requests": failed, "versions": sorted(versions), "labels": len(feedback)}


def _wait_for_version(service: _Service, version: str, timeout: float = 60) -> dict:
    import httpx

    deadline, model = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        model = httpx.get(f"{service.url}/model", timeout=5).json()
        if str(model.get("version")) == str(version):
            break
        time.sleep(0.5)
    return model


# ---------------------------------------------------------------------------------------------------------
# the loop


def run_demo(ws: Workspace, days: int = 30, more_days: int = 8, size: int | None = None, trials: int = 10) -> int:
    """Land, train, serve, replay shifted traffic, monitor, trigger, retrain, promote and swap; say where to look."""
    from notebench.pipeline.runner import RunOptions, run_pipeline
    from notebench.usecase import load_use_case

    uc = load_use_case(ws.settings)

    started = time.monotonic()
    _where(ws)
    # every training run of the demo, the triggered one included, tunes with `trials` trials
    os.environ["NOTEBENCH_TRAINING_N_TRIALS"] = str(trials)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    shift_day = days  # the covariate shift starts the first day after what the first model trains on
    _say(f"1. Landing days 0-{days - 1} of the {uc.name} use case's world in {ws.landing}")
    _simulate(ws, uc, ws.landing, 0, days, shift_day, size)
    _say("\n2. Training pipeline on the first batch")
    run_pipeline("training", RunOptions(trigger="demo: first batch"), workspace=ws)
    first = _verdict(ws)

    _say("\n3. Serving the champion")
    service = _Service(ws)
    try:
        model = service.wait_ready()
        _say(f"   {service.url} serves {model.get('name')} version {model.get('version')} (log: {service.log})")
        _say(f"   replaying days {days}-{days + more_days - 1} as traffic (a covariate shift starts on day {days}), "
             "then their labels as feedback")
        traffic = _replay(service, ws, uc, range(days, days + more_days), shift_day, size)
        _say(f"   {traffic['predictions']:,} predictions by version(s) {', '.join(traffic['versions'])}, "
             f"{traffic['failed_requests']} failed requests, {traffic['labels']:,} labels")

        _say(f"\n4. Landing days {days}-{days + more_days - 1} (the same days, as the data team delivers them)")
        _simulate(ws, uc, ws.landing, days, more_days, shift_day, size)

        settle = ws.settings.value("monitoring", "settle") + ws.settings.value("serving", "flush_interval")
        _say(f"\n5. Trigger service: one pass (waiting {settle:.0f} s for the last predictions to settle)")
        time.sleep(settle)
        _say("   monitoring judges the new predictions and labels; new data, drift and quality are polled; what is "
             "queued starts one training run")
        result = _tick(ws)
        drifted = _drift_summary(ws)
        second = _verdict(ws) if result.run_id else first

        _say("\n6. The service and the new champion")
        if second.get("promoted"):
            model = _wait_for_version(service, second["version"])
            _say(f"   the service swapped to version {model.get('version')} "
                 f"({'as expected' if str(model.get('version')) == str(second['version']) else 'NOT YET'})")
        else:
            _say(f"   champion unchanged: the service keeps version {model.get('version')}")
    finally:
        service.stop()
    _say(f"\nDone in {time.monotonic() - started:.0f} s: {traffic['predictions']:,} predictions, "
         f"{traffic['failed_requests']} failed requests, drift on {', '.join(drifted) or 'no feature'}. Where to look:")
    _say("   notebench models                      the registry: versions, aliases, blessing")
    _say("   notebench runs / notebench show RUN   pipeline runs, steps, executed notebooks")
    _say("   notebench monitor / notebench events  monitoring windows and alerts; trigger events and their runs")
    _say("   notebench dashboards                  the stakeholders' view of all of the above")
    _say(f"   .venv/bin/mlflow ui --backend-store-uri {ws.tracking_uri}")
    return 0


def _tick(ws: Workspace):
    """One pass of the trigger service; its events summarized by kind, then the rest of its report."""
    from collections import defaultdict

    from notebench.triggers import tick

    result = tick(ws)
    found = defaultdict(list)
    for event in result.enqueued:
        found[event.kind].append(event.reason)
    for kind, reasons in found.items():
        more = f" (and {len(reasons) - 2} more)" if len(reasons) > 2 else ""
        _say(f"   {len(reasons)} {kind} event(s): {'; '.join(dict.fromkeys(reasons[:2]))}{more}")
    for line in result.lines():
        if not line.startswith("enqueued:"):
            _say(f"   {line}")
    return result


def _drift_summary(ws: Workspace) -> list[str]:
    """Print the monitoring windows judged so far; the features that drifted in any of them."""
    from notebench.monitoring.monitor import read_windows

    windows = read_windows(ws)
    if windows.empty:
        _say("   monitoring: no window judged yet")
        return []
    drifted = sorted({f for names in windows["drifted"] for f in names})
    flagged = int(windows["dataset_drift"].astype(bool).sum())
    _say(f"   monitoring: {len(windows)} window(s) judged, {flagged} with dataset drift; drifting features: "
         f"{', '.join(drifted) or 'none'}")
    return drifted
