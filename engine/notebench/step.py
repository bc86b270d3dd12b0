"""The step API: how a step notebook reads its inputs, writes its products and records metrics and verdicts.

A step notebook declares `upstream`, `products` and `context` in its `parameters` cell with `None` defaults.
Under the runner they are filled in; opened by hand in JupyterLab they stay `None`, and `Step` falls back to
the latest products in the workspace for inputs and to a scratch folder for outputs, so the same notebook runs
both ways:

```python
step = Step("train", upstream=upstream, products=products, context=context)
frame = pd.read_parquet(step.input("training_set"))
model_path = step.output("model")
step.metric("auc", 0.91)
step.verdict("blessed", passed=True, reasons=["no champion yet"])
```
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from notebench.errors import NotebenchError, StepStopped

__all__ = ["Step"]


class Step:
    """A running step's view of the pipeline: its inputs, outputs and records."""

    def __init__(self, name: str, upstream: dict | None = None, products: dict | None = None,
                 context: dict | None = None, pipeline: str | None = None):
        self.name = name  # the step's name in pipeline.yaml
        self.context = context or {}  # run ids and paths, from the runner; empty when run by hand
        self.by_hand = context is None
        self._upstream = upstream
        self._products = products
        self._pipeline = pipeline or self.context.get("pipeline")
        self.records: dict = {"metrics": {}, "verdicts": {}, "tags": {}}
        if self.by_hand:
            self._resolve_by_hand()

    # inputs and outputs -------------------------------------------------------------------------------
    def input(self, product: str) -> Path:
        """The path of an upstream product, by product name."""
        for step_products in (self._upstream or {}).values():
            if product in step_products:
                return Path(step_products[product])
        known = sorted(p for ps in (self._upstream or {}).values() for p in ps)
        raise NotebenchError(f"step '{self.name}' has no upstream product '{product}'; it has: "
                             f"{', '.join(known) or 'none'} (declare it under the upstream step's products)")

    def output(self, product: str) -> Path:
        """Where to write one of this step's declared products."""
        if product not in (self._products or {}):
            raise NotebenchError(f"step '{self.name}' declares no product '{product}'; "
                                 f"declared: {', '.join(self._products or {}) or 'none'} (see pipeline.yaml)")
        path = Path(self._products[product])
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def previous(self, product: str) -> Path | None:
        """This step's product as the last successful run left it (None if there is none)."""
        path = (self.context.get("previous") or {}).get(product)
        return Path(path) if path and Path(path).exists() else None

    @property
    def use_case(self):
        """The project's use-case contract (`[use_case] object` in settings.ini), loaded once per process."""
        from notebench.usecase import load_use_case

        if not hasattr(self, "_use_case"):
            self._use_case = load_use_case()
        return self._use_case

    @property
    def workspace(self) -> Path:
        """The workspace folder this step works in."""
        return Path(self.context["workspace"])

    # records ------------------------------------------------------------------------------------------
    def metric(self, name: str, value: float) -> float:
        """Record a metric; the runner logs it on the step's MLflow run."""
        self.records["metrics"][name] = float(value)
        self._save()
        return value

    def tag(self, name: str, value) -> None:
        """Record a tag for the step's MLflow run (e.g. the model version it would replace)."""
        self.records["tags"][name] = str(value)
        self._save()

    def verdict(self, name: str, passed: bool, reasons: list[str] | None = None) -> bool:
        """Record a gate's verdict with its human-readable reasons; returns `passed`."""
        self.records["verdicts"][name] = {"passed": bool(passed), "reasons": list(reasons or [])}
        self._save()
        return passed

    def stop(self, reason: str):
        """Stop the pipeline here with a readable reason (the step fails, later steps do not run)."""
        self.records["stopped"] = reason
        self._save()
        raise StepStopped(f"step '{self.name}' stopped the pipeline: {reason}")

    @property
    def mlflow_run_id(self) -> str | None:
        """The step's MLflow run id under the runner (waits for the lineage recorder to create it)."""
        if not self.context.get("lineage"):
            return None
        from notebench.pipeline.lineage import await_id

        return await_id(Path(self.context["run_dir"]), f"step:{self.name}")

    @property
    def mlflow_parent_run_id(self) -> str | None:
        """The pipeline run's MLflow run id under the runner."""
        if not self.context.get("lineage"):
            return None
        from notebench.pipeline.lineage import await_id

        return await_id(Path(self.context["run_dir"]), "pipeline")

    @contextmanager
    def mlflow_run(self):
        """The step's own MLflow run as the active run (a fresh run when the notebook runs by hand)."""
        import mlflow

        uri = self.context.get("tracking_uri")
        if uri:  # the runner passes a URI with credentials masked: the kernel's settings hold the real one
            from notebench.state.uri import is_masked

            if is_masked(uri):
                from notebench.workspace import Workspace

                uri = Workspace.of(self.workspace).tracking_uri
            mlflow.set_tracking_uri(uri)
        run_id = self.mlflow_run_id
        if run_id:
            with mlflow.start_run(run_id=run_id) as run:
                yield run
        else:
            with mlflow.start_run(run_name=f"{self._pipeline}.{self.name} (by hand)") as run:
                yield run

    def _save(self) -> None:
        path = self.context.get("records")
        if path:
            tmp = Path(path).with_suffix(".tmp")
            tmp.write_text(json.dumps(self.records, indent=1))
            os.replace(tmp, path)

    # by hand --------------------------------------------------------------------------------------------
    def _resolve_by_hand(self) -> None:
        """Inputs from the workspace's current products, outputs into a scratch folder, MLflow from settings."""
        from notebench.pipeline.spec import load_spec
        from notebench.pipeline.store import PipelineStore
        from notebench.workspace import Workspace

        spec_file = Path.cwd() / "pipeline.yaml"
        if not spec_file.is_file():
            raise NotebenchError(f"run by hand, step '{self.name}' looks for pipeline.yaml in {Path.cwd()}; "
                                 "open the notebook from its pipeline folder")
        spec = load_spec(spec_file)
        ws = Workspace()
        self._pipeline = self._pipeline or spec.name
        store = PipelineStore(ws.root, spec.name)
        me = spec.steps[self.name]
        if self._upstream is None:
            self._upstream = {up: {p: str(store.product_dir(up) / f) for p, f in spec.steps[up].products.items()}
                              for up in me.upstream}
        if self._products is None:
            scratch = ws.root / "scratch" / spec.name / self.name
            self._products = {p: str(scratch / f) for p, f in me.products.items()}
        self.context = {"tracking_uri": ws.tracking_uri, "pipeline": spec.name, "workspace": str(ws.root),
                        "previous": {p: str(store.product_dir(self.name) / f) for p, f in me.products.items()}}
        os.environ.setdefault("MLFLOW_TRACKING_URI", ws.tracking_uri)
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", ws.experiment)
