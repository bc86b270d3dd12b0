"""MLflow helpers for the pipeline steps: logging a scikit-learn model of any task fast and loadably."""

from __future__ import annotations

import importlib.metadata as md
import logging
import warnings
from contextlib import contextmanager

__all__ = ["log_sklearn_model", "pip_requirements", "predict_fn", "skops_trusted_types"]

# what a logged scikit-learn model needs to load; pinned to this environment's versions
MODEL_PACKAGES = ("scikit-learn", "pandas", "numpy", "scipy", "skops", "mlflow")


def pip_requirements(packages=MODEL_PACKAGES) -> list[str]:
    """`name==version` for each of `packages` as installed here (skips MLflow's ~15 s inference)."""
    return [f"{name}=={md.version(name)}" for name in packages]


def skops_trusted_types(model) -> list[str]:
    """The types skops must trust to load `model`: those of the model we just built, nothing else."""
    import skops.io as sio

    return sio.get_untrusted_types(data=sio.dumps(model))


@contextmanager
def _quiet():
    """Silence MLflow's hints and INFO lines (uv project detected, integer columns) while logging a model."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def predict_fn(model, task: str | None = None) -> str:
    """The method a logged model answers with: `predict_proba` for a classifier (binary, multiclass: what the
    prediction service and `mlflow models serve` return), `predict` for a regressor; by `task`, else by the model."""
    if task is not None:
        return "predict" if task == "regression" else "predict_proba"
    return "predict_proba" if hasattr(model, "predict_proba") else "predict"


def log_sklearn_model(run_id: str, model, input_example, name: str = "model", task: str | None = None, **kwargs):
    """Log a fitted scikit-learn model to run `run_id` with signature, input example and pinned requirements; it
    predicts as `predict_fn(model, task)` says (class probabilities, or values for a regression)."""
    import mlflow
    from mlflow.models import infer_signature

    method = predict_fn(model, task)
    output = getattr(model, method)(input_example)
    with _quiet():
        signature = infer_signature(input_example, output)
    with _quiet(), mlflow.start_run(run_id=run_id):
        return mlflow.sklearn.log_model(
            model, name=name, signature=signature, input_example=input_example,
            pip_requirements=pip_requirements(), serialization_format="skops",
            skops_trusted_types=skops_trusted_types(model), pyfunc_predict_fn=method, **kwargs)
