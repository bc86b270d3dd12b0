"""`notebench demo`: the demo world's data, one model trained with the exported modules, logged to MLflow.

Until the training pipeline exists this is the main job that `make demo` runs: it shows the experiment
notebooks' code working end to end against the workspace's real MLflow store.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .workspace import Workspace

__all__ = ["run_demo", "train_and_log"]


@contextmanager
def _phase(title: str):
    """Print what is happening and how long it took."""
    print(f"-> {title} ...", end="", flush=True, file=sys.stderr)
    start = time.perf_counter()
    yield
    print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr)


def _has_batches(landing: Path) -> bool:
    return any((landing / "features").glob("*.parquet"))


def train_and_log(ws: Workspace, landing: Path, run_name: str = "demo-train") -> dict:
    """Train the use case's model on the landed data, evaluate it on the holdout and log everything to MLflow."""
    from .data import FEATURES, TARGET, load_landing, time_split
    from .evaluation import evaluate, flatten
    from .model import DEFAULT_PARAMS, make_model

    cfg = ws.settings["training"]
    with _phase("loading the landed batches"):
        frame = load_landing(landing)
        train, holdout = time_split(frame, cfg["holdout_days"])
    with _phase(f"training on {len(train):,} rows"):
        params = {**DEFAULT_PARAMS, "random_state": cfg["seed"]}
        model = make_model(params).fit(train[FEATURES], train[TARGET])
    with _phase(f"evaluating on {len(holdout):,} holdout rows"):
        scores = model.predict_proba(holdout[FEATURES])[:, 1]
        report = evaluate(holdout[TARGET], scores, holdout, segments=cfg["segments"])
    with _phase("logging the run and the model to MLflow"):
        run_id, model_uri = _log(ws, run_name, params, frame, train, report, flatten(report), model)
    return {"run_id": run_id, "model_uri": model_uri, "report": report}


def _log(ws: Workspace, run_name, params, frame, train, report, metrics, model):
    import mlflow

    from .data import FEATURES, TIMESTAMP
    from .tracking import lineage_tags, log_sklearn_model

    mlflow.set_tracking_uri(ws.tracking_uri)
    mlflow.set_registry_uri(ws.registry_uri)
    client = ws.client()
    run = client.create_run(ws.experiment_id(client), run_name=run_name,
                            tags=lineage_tags(ws.settings.root, trigger="notebench demo"))
    run_id = run.info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, value)
    client.log_param(run_id, "train_rows", len(train))
    client.log_param(run_id, "train_until", str(train[TIMESTAMP].max()))
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.log_dict(run_id, report, "evaluation/report.json")
    with mlflow.start_run(run_id=run_id):
        mlflow.log_input(mlflow.data.from_pandas(frame, name="landing"), context="training")
    info = log_sklearn_model(run_id, model, train[FEATURES].head(5))
    client.set_terminated(run_id, "FINISHED")
    return run_id, info.model_uri


def run_demo(ws: Workspace, days: int = 45, customers: int = 2000) -> int:
    """Land the demo data when there is none, train and log one model, and say where to look."""
    from .demo_data import generate

    landing = ws.landing
    if _has_batches(landing):
        print(f"-> landing area {landing} already holds batches; using them", file=sys.stderr)
    else:
        with _phase(f"generating {days} days x {customers:,} customers of demo data into {landing}"):
            generate(landing, scenario="stable", days=days, customers=customers,
                     seed=ws.settings.value("training", "seed"))
    result = train_and_log(ws, landing)
    overall = result["report"]["overall"]
    print(f"\nModel trained: holdout ROC AUC {overall['auc']:.3f}, accuracy {overall['accuracy']:.3f}")
    print(f"MLflow run:    {result['run_id']}")
    print(f"Model:         {result['model_uri']}")
    print(f"Look at it:    .venv/bin/mlflow ui --backend-store-uri {ws.tracking_uri}")
    return 0
