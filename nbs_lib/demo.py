"""`notebench demo`: the whole loop on the demo world, as far as it is built — what `make demo` runs.

1. Land the first days of the demo world (a later `covariate_shift` is already scheduled in it).
2. Run the training pipeline: ingest, validate, features, train, evaluate, validate_model, register. The first
   model has no champion to beat; it is blessed on absolute thresholds and becomes champion.
3. Land a second batch of days and run the pipeline again: the new model is compared with the champion,
   overall and per segment, and the verdict is shown with its reasons.

Everything lands in the workspace; a second `notebench demo` finds the data and the cached runs and ends in
seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .workspace import Workspace

__all__ = ["run_demo"]


def _say(text: str = "") -> None:
    print(text, flush=True)


def _land(ws: Workspace, start_day: int, days: int, customers: int, shift_day: int) -> None:
    """Write the demo world's days [start_day, start_day + days) into the landing area (identical if rerun)."""
    from .demo_data import generate

    generate(ws.landing, scenario="covariate_shift", days=days, start_day=start_day, customers=customers,
             seed=ws.settings.value("training", "seed"), shift_day=shift_day)


def _products(ws: Workspace, step: str) -> Path:
    return ws.root / "pipelines" / "training" / "products" / step


def _verdict(ws: Workspace) -> None:
    """Print the blessing and what the registry did with the model."""
    reg = json.loads((_products(ws, "register") / "registration.json").read_text())
    blessing = json.loads((_products(ws, "validate_model") / "blessing.json").read_text())
    _say(f"   model version {reg.get('version')}: {'BLESSED' if blessing['blessed'] else 'NOT blessed'}")
    for reason in blessing["reasons"]:
        _say(f"     - {reason}")
    promoted = reg.get("promoted")
    _say(f"   registry: aliases {', '.join(reg.get('aliases') or []) or 'none'}; "
         f"{'promoted to champion' if promoted else 'champion unchanged'}"
         f"{' (' + reg['why'] + ')' if reg.get('why') else ''}")


def run_demo(ws: Workspace, days: int = 30, more_days: int = 8, customers: int = 1500, trials: int = 10) -> int:
    """Land the demo data, train twice through the pipeline, show the verdicts and where to look."""
    from .runner import RunOptions, run_pipeline

    shift_day = days + more_days  # the covariate shift starts after what this demo trains on
    params = {"n_trials": trials}
    _say(f"1. Landing days 0-{days - 1} of the demo world ({customers:,} customers) in {ws.landing}")
    _land(ws, 0, days, customers, shift_day)
    _say("2. Training pipeline on the first batch")
    run_pipeline("training", RunOptions(parameters=params, trigger="demo: first batch"), workspace=ws)
    _verdict(ws)
    _say(f"\n3. Landing days {days}-{days + more_days - 1}, then the training pipeline again")
    _land(ws, days, more_days, customers, shift_day)
    run_pipeline("training", RunOptions(parameters=params, trigger="demo: second batch"), workspace=ws)
    _verdict(ws)
    _say("\nWhere to look:")
    _say("   notebench models                  the registry: versions, aliases, blessing")
    _say("   notebench runs / notebench show RUN   pipeline runs, steps, executed notebooks")
    _say(f"   .venv/bin/mlflow ui --backend-store-uri {ws.tracking_uri}")
    _say(f"   .venv/bin/optuna-dashboard sqlite:///{ws.root / 'optuna.db'}")
    sys.stdout.flush()
    return 0
