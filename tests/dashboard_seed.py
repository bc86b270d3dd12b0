"""A small workspace of the engine tests' use case for the dashboards, built in seconds with the real stores (no
training pipeline). The use case (sensors) declares no segments, so nothing here records per-segment metrics.

- MLflow: three registered versions of `[registry] model_name`, tagged as the register step tags them
  (v1 blessed, then champion; v2 blessed and promoted; v3 not blessed, with its reasons), each from a training run
  holding the reference profile that monitoring compares with (no model files: the dashboards never load one);
  a pipeline run with an evaluate child run holding the primary metric (`UseCase.metric`) overall.
- Pipeline runs: a two-step pipeline named `training` run for real by the runner (papermill kernels, no lineage):
  a first run that fails at `train`, then one that succeeds with `ingest` cached.
- The prediction log: two hours of champion predictions of sensor readings written by the service's own
  `PredictionLog`; in the second hour temperature and load shift (the use case's `covariate_shift` scenario).
- Monitoring results and trigger events, through `notebench.monitoring.monitor` / `notebench.triggers` when this
  checkout has them (their own writers: a real monitoring pass over the log, a queued trigger).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from fixture_lib.use_case import readings
from notebench.usecase import load_use_case
from pipeline_kit import make_pipeline

UC = load_use_case()  # the engine tests' use case (conftest selects it)
METRIC = UC.metric  # the primary metric the pages lead with
FAIL_ERROR = f"holdout {METRIC} undefined: one class only"
DEVICES = 200  # the fleet whose readings train the versions and are served
SHIFTED = ["load_pct", "temperature"]  # what the use case's covariate shift moves, sorted
DRIFT_REASON = f"prediction drift; {len(SHIFTED)} of {len(UC.features)} features drift ({', '.join(SHIFTED)})"


def _reference(frame: pd.DataFrame) -> dict:
    from notebench.monitoring.drift import profile

    return profile(frame, list(UC.numeric), list(UC.categorical))


def _evaluate_run(client, experiment: str, score: float) -> str:
    """A pipeline parent run whose evaluate child run holds the primary metric overall; returns the parent's id."""
    parent = client.create_run(experiment, run_name="training", tags={"notebench.kind": "pipeline"})
    evaluate = client.create_run(experiment, run_name="evaluate", tags={
        "mlflow.parentRunId": parent.info.run_id, "notebench.step": "evaluate", "notebench.kind": "step"})
    client.log_metric(evaluate.info.run_id, METRIC, score)
    client.log_metric(evaluate.info.run_id, "brier", 0.15)
    return parent.info.run_id


def seed_registry(ws, runs: list[str]) -> dict:
    """Three versions (v2 champion), each from pipeline run `runs[i]` with an evaluate step's overall metric."""
    from notebench.registry import models as registry
    from notebench.state.store import open_state

    client = ws.client()
    experiment = ws.experiment_id(client)
    name = ws.settings.value("registry", "model_name")
    X = pd.concat([readings(day, size=DEVICES) for day in range(10)], ignore_index=True)
    verdicts = [
        {"blessed": True, "reasons": [f"{METRIC} overall 0.7900 >= minimum 0.7000", registry.NO_BASELINE]},
        {"blessed": True, "reasons": [f"{METRIC} overall 0.8100 >= minimum 0.7000",
                                      f"{METRIC} overall did not drop against champion v1 (0.8100 vs 0.7900)"]},
        {"blessed": False, "reasons": [f"{METRIC} overall dropped 0.0100 against champion v2 (0.8000 vs 0.8100), "
                                       "more than max_regression 0.0050"]},
    ]
    versions = []
    for i, (verdict, score) in enumerate(zip(verdicts, (0.79, 0.81, 0.80), strict=True)):
        run = client.create_run(experiment, run_name=f"train {i + 1}")
        client.log_dict(run.info.run_id, _reference(X), "reference/profile.json")
        tags = {**registry.blessing_tags(verdict), **registry.metric_tags({METRIC: score, "brier": 0.15 - i / 100}),
                "notebench.pipeline": "training", "notebench.pipeline_run_id": runs[i],
                "notebench.pipeline_mlflow_run": _evaluate_run(client, experiment, score),
                "notebench.data_digest": f"sha256:{i}abcdef0123456789",
                "notebench.git.commit": f"{i}1c2d3e4f5a6b7c8d9e0f", "notebench.git.dirty": "false"}
        versions.append(registry.register(client, name, f"runs:/{run.info.run_id}/model", tags,
                                          run_id=run.info.run_id))
        if verdict["blessed"]:
            registry.set_aliases(client, name, versions[-1], [registry.CHALLENGER])
            registry.promote(client, name, versions[-1], reason="blessed; [gates] promotion = auto",
                             who="pipeline training", state=open_state(ws))
    return {"model_name": name, "versions": versions, "champion": versions[1]}


def seed_runs(ws, folder: Path) -> dict:
    """A real failed run (at `train`) then a real succeeded one (`ingest` cached) of a pipeline named `training`."""
    from notebench.errors import StepFailed
    from notebench.pipeline.progress import Progress
    from notebench.pipeline.runner import RunOptions, run_pipeline

    spec = make_pipeline(folder / "training", {
        "ingest": {"body": "import pathlib\npathlib.Path(step.output('rows')).write_text('200')",
                   "products": {"rows": "rows.txt"}},
        "train": {"params": "fail = False\n", "upstream": ["ingest"], "products": {"model": "model.txt"},
                  "body": f"if fail:\n    raise ValueError({FAIL_ERROR!r})\n"
                          "import pathlib\npathlib.Path(step.output('model')).write_text('ok')"}})
    try:
        run_pipeline(spec, RunOptions(lineage=False, parameters={"fail": True}), progress=Progress(), workspace=ws)
        raise AssertionError("the seeded failing run did not fail")
    except StepFailed:
        pass
    ok = run_pipeline(spec, RunOptions(lineage=False, trigger="drift"), progress=Progress(), workspace=ws)
    runs = sorted((ws.root / "pipelines" / "training" / "runs").glob("*/run.json"))
    return {"failed_run": json.loads(runs[0].read_text())["run_id"], "ok_run": ok["run_id"]}


def seed_predictions(ws, model_name: str, version: str, hours: float = 2.0, per_request: int = 50,
                     requests: int = 48) -> int:
    """`requests` requests of sensor readings spread over the last `hours`, the second half shifted (temperature
    and load rise, as in the use case's `covariate_shift` scenario)."""
    from notebench.serving.predlog import PredictionLog, log_root

    log = PredictionLog(log_root(ws), flush_interval=0.05).start()
    rng = np.random.default_rng(1)
    model = SimpleNamespace(name=model_name, version=str(version))
    now, total = time.time(), 0
    for i in range(requests):
        day = readings(20 + i, size=DEVICES, scenario="covariate_shift", shift_day=20 + requests // 2)
        frame = day.sample(int(per_request * (0.5 + rng.random())), random_state=i)  # some devices of the fleet
        total += len(frame)
        p = 1 / (1 + np.exp(-(0.1 * (frame["temperature"].to_numpy() - 60) - 2)))
        log.log(request_id=f"seed-{i}", endpoint="/invocations", model=model,
                columns={c: frame[c].to_numpy() for c in UC.features}, output=np.column_stack([1 - p, p]),
                rows=len(frame), started=now - hours * 3600 * (1 - i / requests), latency=0.004)
    log.close()
    return total


def seed_monitoring(ws) -> bool:
    """One real monitoring pass over the log (`[monitoring] window` rows a window), if this checkout has
    `notebench.monitoring.monitor`."""
    if importlib.util.find_spec("notebench.monitoring.monitor") is None:
        return False
    from notebench.monitoring.monitor import monitor

    monitor(ws, log_to_mlflow=False, settle=0)
    return True


def seed_triggers(ws) -> bool:
    """A drift trigger event, when this checkout has `notebench.triggers`."""
    if importlib.util.find_spec("notebench.triggers") is None:
        return False
    from notebench.triggers import enqueue

    enqueue(ws, "drift", DRIFT_REASON, source="monitoring")
    return True


def seed(ws, folder: Path) -> dict:
    """Everything above into workspace `ws`; pipeline notebooks go to `folder`. Returns what was seeded."""
    facts = seed_runs(ws, folder)
    facts.update(seed_registry(ws, [facts["failed_run"], facts["ok_run"], facts["ok_run"]]))
    facts["predictions"] = seed_predictions(ws, facts["model_name"], facts["champion"])
    facts["monitoring"] = seed_monitoring(ws)
    facts["triggers"] = seed_triggers(ws)
    return facts
