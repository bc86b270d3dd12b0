"""A small demo-like workspace for the dashboards, built in seconds with the real stores (no training pipeline).

- MLflow: three registered versions of `[registry] model_name`, tagged as the register step tags them
  (v1 blessed, then champion; v2 blessed and promoted; v3 not blessed, with its reasons), each from a training run
  holding the reference profile that monitoring compares with (no model files: the dashboards never load one);
  a pipeline run with an evaluate child run holding per-segment metrics.
- Pipeline runs: a two-step pipeline named `training` run for real by the runner (papermill kernels, no lineage):
  a first run that fails at `train`, then one that succeeds with `ingest` cached.
- The prediction log: two hours of champion predictions written by the service's own `PredictionLog`.
- Monitoring results and trigger events, through `notebench.monitoring.monitor` / `notebench.triggers` when this checkout has
  them (their own writers: a real monitoring pass over the log, a queued trigger).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from pipeline_kit import make_pipeline

SEGMENTS = {"contract=monthly": 0.79, "contract=yearly": 0.84, "region=north": 0.77, "region=south": 0.83}
FEATURES = ["tenure", "monthly_charges", "support_calls"]
FAIL_ERROR = "holdout AUC undefined: one class only"


def _reference(frame: pd.DataFrame) -> dict:
    from notebench.monitoring.drift import profile

    return profile(frame, FEATURES, [])


def _customers(rng, n: int, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"tenure": rng.normal(24 + shift * 20, 8, n), "monthly_charges": rng.normal(60, 15, n),
                         "support_calls": rng.poisson(2 + shift * 3, n).astype(float)})


def _evaluate_run(client, experiment: str, auc: float, north: float) -> str:
    """A pipeline parent run whose evaluate child run holds overall and per-segment AUC; returns the parent's id."""
    parent = client.create_run(experiment, run_name="training", tags={"notebench.kind": "pipeline"})
    evaluate = client.create_run(experiment, run_name="evaluate", tags={
        "mlflow.parentRunId": parent.info.run_id, "notebench.step": "evaluate", "notebench.kind": "step"})
    client.log_metric(evaluate.info.run_id, "auc", auc)
    for segment, value in SEGMENTS.items():
        column, level = segment.split("=")
        shift = north if level == "north" else 0.0
        client.log_metric(evaluate.info.run_id, f"segment.{column}.{level}.auc", value + auc - 0.81 + shift)
    return parent.info.run_id


def seed_registry(ws, runs: list[str]) -> dict:
    """Three versions (v2 champion), each from pipeline run `runs[i]` with per-segment evaluate metrics."""
    from notebench.registry import models as registry

    client = ws.client()
    experiment = ws.experiment_id(client)
    name = ws.settings.value("registry", "model_name")
    rng = np.random.default_rng(0)
    X = _customers(rng, 2000)
    verdicts = [
        {"blessed": True, "reasons": ["auc overall 0.7900 >= minimum 0.7000", "no champion yet: no baseline"]},
        {"blessed": True, "reasons": ["auc overall 0.8100 >= minimum 0.7000",
                                      "auc overall did not drop against champion v1 (0.8100 vs 0.7900)"]},
        {"blessed": False, "reasons": ["auc on segment region=north dropped 0.0600 against champion v2 "
                                       "(0.7100 vs 0.7700), more than segment_tolerance 0.0200"]},
    ]
    versions = []
    for i, (verdict, auc) in enumerate(zip(verdicts, (0.79, 0.81, 0.80), strict=True)):
        run = client.create_run(experiment, run_name=f"train {i + 1}")
        client.log_dict(run.info.run_id, _reference(X), "reference/profile.json")
        tags = {**registry.blessing_tags(verdict), **registry.metric_tags({"auc": auc, "brier": 0.15 - i / 100}),
                "notebench.pipeline": "training", "notebench.pipeline_run_id": runs[i],
                "notebench.pipeline_mlflow_run": _evaluate_run(client, experiment, auc, -0.06 * (i == 2)),
                "notebench.data_digest": f"sha256:{i}abcdef0123456789",
                "notebench.git.commit": f"{i}1c2d3e4f5a6b7c8d9e0f", "notebench.git.dirty": "false"}
        versions.append(registry.register(client, name, f"runs:/{run.info.run_id}/model", tags,
                                          run_id=run.info.run_id))
        if verdict["blessed"]:
            registry.set_aliases(client, name, versions[-1], [registry.CHALLENGER])
            registry.promote(client, name, versions[-1], reason="blessed; [gates] promotion = auto",
                             who="pipeline training")
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
    """`requests` requests spread over the last `hours`, the second half drifting in tenure and support calls."""
    from notebench.serving.predlog import PredictionLog, log_root

    log = PredictionLog(log_root(ws), flush_interval=0.05).start()
    rng = np.random.default_rng(1)
    model = SimpleNamespace(name=model_name, version=str(version))
    now, total = time.time(), 0
    for i in range(requests):
        shift = 1.0 if i >= requests // 2 else 0.0
        frame = _customers(rng, int(per_request * (0.5 + rng.random())), shift)
        total += len(frame)
        p = 1 / (1 + np.exp(-(frame["support_calls"].to_numpy() - 2.5)))
        log.log(request_id=f"seed-{i}", endpoint="/invocations", model=model,
                columns={c: frame[c].to_numpy() for c in FEATURES}, output=np.column_stack([1 - p, p]),
                rows=len(frame), started=now - hours * 3600 * (1 - i / requests), latency=0.004)
    log.close()
    return total


def seed_monitoring(ws) -> bool:
    """One real monitoring pass over the log (`[monitoring] window` rows a window), if `notebench.monitoring.monitor` exists."""
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

    enqueue(ws, "drift", "dataset drift: 2 of 3 features drift (tenure, support_calls)", source="monitoring")
    return True


def seed(ws, folder: Path) -> dict:
    """Everything above into workspace `ws`; pipeline notebooks go to `folder`. Returns what was seeded."""
    facts = seed_runs(ws, folder)
    facts.update(seed_registry(ws, [facts["failed_run"], facts["ok_run"], facts["ok_run"]]))
    facts["predictions"] = seed_predictions(ws, facts["model_name"], facts["champion"])
    facts["monitoring"] = seed_monitoring(ws)
    facts["triggers"] = seed_triggers(ws)
    return facts
