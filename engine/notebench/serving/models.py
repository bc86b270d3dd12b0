"""The served model: loading a registry version, and the holder whose single reference swap is the hot swap.

A `LoadedModel` is immutable: a request takes the holder's current reference once, when it starts, and predicts
with it to the end, so a swap never changes the model under a request in flight. `ModelHolder.check` resolves the
alias, and when it points at another version loads that version beside the served one, warms it up on its own
input example (a version that cannot score its example is refused and the served one stays), then replaces the
reference in one assignment. The old model is freed when its last request finishes.

Versions are loaded by number (`models:/name/3`), never through the alias, so that the alias moving again while
a version loads cannot mix two versions. Artifacts are read through the version's download URI with the
workspace's tracking URI passed explicitly: nothing here sets MLflow's process-wide URIs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from notebench.errors import InvalidInputError, ModelLoadError
from notebench.serving.schema import Batch, InputSchema

__all__ = ["LoadedModel", "ModelHolder", "ModelSource", "load_model", "scores"]

BLESSED_TAG, REASONS_TAG = "notebench.blessed", "notebench.blessing.reasons"  # written by notebench.registry.models


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One loaded model version, ready to predict; never changed after loading."""

    name: str | None  # registered model name (None for a model served from a plain URI)
    version: str  # registry version, or the logged model's id for a plain URI
    alias: str | None  # the alias it was resolved through, if any
    uri: str  # what was loaded
    run_id: str | None
    tags: dict[str, str]  # the registry version's tags
    schema: InputSchema
    predict_fn: Callable = field(repr=False)  # DataFrame -> array of outputs, one row per input row
    thread_safe: bool = False  # whether predict_fn may run in several threads at once (a scikit-learn estimator's)
    loaded_at: float = 0.0  # unix time
    load_seconds: float = 0.0

    def predict(self, batch: Batch) -> np.ndarray:
        """The model's output for `batch`: one entry (or row of entries) per input row."""
        out = np.asarray(self.predict_fn(batch.frame()))
        if out.ndim == 0 or out.shape[0] != batch.rows:
            raise ValueError(f"the model returned {out.shape} for {batch.rows} rows")
        return out

    def blessing(self) -> dict:
        """The registry's blessing verdict on this version: blessed (or None if never judged) and its reasons."""
        blessed = self.tags.get(BLESSED_TAG)
        try:
            reasons = json.loads(self.tags.get(REASONS_TAG, "[]"))
        except ValueError:
            reasons = [self.tags[REASONS_TAG]]
        return {"blessed": None if blessed is None else blessed.lower() == "true", "reasons": reasons}

    def describe(self) -> dict:
        """What `/model` shows."""
        return {"name": self.name, "version": self.version, "alias": self.alias, "uri": self.uri,
                "run_id": self.run_id, "loaded_at": self.loaded_at, "load_seconds": round(self.load_seconds, 3),
                "blessing": self.blessing(), "tags": self.tags, "inputs": self.schema.describe()}


def scores(output: np.ndarray) -> list:
    """One score per row: the positive-class probability of a two-column output, else the output itself."""
    if output.ndim == 2 and output.shape[1] == 2:
        return output[:, 1].tolist()
    if output.ndim == 2 and output.shape[1] == 1:
        return output[:, 0].tolist()
    return output.tolist()


# ---------------------------------------------------------------------------------------------------------
# loading


def _predict_fn(pyfunc_model) -> tuple[Callable, bool]:
    """The raw model's own predict function when it is a scikit-learn model (no pyfunc schema enforcement: the
    service has checked the input already; and scikit-learn's predictions may run in several threads at once), else
    the pyfunc's predict (not known to be thread-safe); and whether it is the former."""
    flavor = pyfunc_model.metadata.flavors.get("python_function", {})
    if flavor.get("loader_module") == "mlflow.sklearn":
        raw = pyfunc_model.get_raw_model()
        fn = getattr(raw, flavor.get("predict_fn", "predict"), None)
        if fn is not None:
            return fn, True
    return pyfunc_model.predict, False


def _warm_up(model: LoadedModel, pyfunc_model) -> None:
    """Score the model's own input example once: refuses a model that cannot, and pays first-call costs now."""
    try:
        example = pyfunc_model.input_example
    except Exception:  # a missing or unreadable example only skips the warm-up
        return
    if example is None or not hasattr(example, "columns"):
        return
    try:
        model.predict(model.schema.from_frame(example))
    except InvalidInputError as exc:
        raise ModelLoadError(f"its input example does not match its own signature: {exc}", model=model.name,
                             version=model.version) from exc
    except Exception as exc:  # whatever the model raises, it is not served
        raise ModelLoadError(f"it cannot score its own input example: {type(exc).__name__}: {exc}",
                             model=model.name, version=model.version) from exc


def load_model(uri: str, *, tracking_uri: str | None = None, name: str | None = None, version: str | None = None,
               alias: str | None = None, run_id: str | None = None, tags: dict | None = None) -> LoadedModel:
    """Load the MLflow model at `uri` (an artifact location), check its signature, warm it up."""
    import mlflow

    start = time.perf_counter()
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)
        pyfunc_model = mlflow.pyfunc.load_model(local)
    except Exception as exc:  # MLflow, skops and the model's own imports raise anything
        raise ModelLoadError(f"cannot load {uri}: {type(exc).__name__}: {exc}", model=name, alias=alias,
                             version=version) from exc
    meta = pyfunc_model.metadata
    try:
        schema = InputSchema.from_signature(meta.get_input_schema())
    except ModelLoadError as exc:
        raise ModelLoadError(str(exc), model=name, alias=alias, version=version) from None
    predict_fn, thread_safe = _predict_fn(pyfunc_model)
    model = LoadedModel(name=name, version=str(version or getattr(meta, "model_id", None) or meta.run_id or uri),
                        alias=alias, uri=uri, run_id=run_id or meta.run_id, tags=dict(tags or {}), schema=schema,
                        predict_fn=predict_fn, thread_safe=thread_safe, loaded_at=time.time())
    _warm_up(model, pyfunc_model)
    object.__setattr__(model, "load_seconds", time.perf_counter() - start)
    return model


@dataclass(frozen=True)
class ModelSource:
    """Where the served model comes from: a registered model's alias (watched), or a fixed model URI."""

    name: str | None = None  # registered model name
    alias: str | None = "champion"  # the alias that names the version to serve
    uri: str | None = None  # a fixed model URI instead: models:/name/version, runs:/..., a path; never swapped

    @property
    def watched(self) -> bool:
        return self.uri is None


class ModelHolder:
    """The served model (and an optional shadow), swapped by a single reference assignment."""

    def __init__(self, source: ModelSource, *, tracking_uri: str, registry_uri: str, shadow_alias: str | None = None):
        self.source, self.shadow_alias = source, shadow_alias  # shadow_alias: e.g. challenger; None: no shadow
        self.tracking_uri, self.registry_uri = tracking_uri, registry_uri
        self.current: LoadedModel | None = None  # what requests take, once, when they start
        self.shadow: LoadedModel | None = None  # also predicts, logged, never returned
        self.last_check: float | None = None  # unix time of the last completed check
        self.last_error: str | None = None  # why the last check could not load a model (None: it could)
        self.swaps = 0  # times `current` was replaced
        self._lock = threading.Lock()  # one check at a time
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    def check(self) -> dict:
        """Load what the source names now if it differs from what is served; return what happened."""
        with self._lock:
            before, shadow_before = self.current, self.shadow
            try:
                if self.source.watched:
                    self.current = self._follow(self.source.alias, self.current)
                elif self.current is None:
                    self.current = self._fixed(self.source.uri)
                self.last_error = None
            except ModelLoadError as exc:
                self.last_error = str(exc)
            if self.shadow_alias and self.source.watched:
                try:
                    self.shadow = self._follow(self.shadow_alias, self.shadow, self.current)
                except ModelLoadError:
                    self.shadow = None  # no challenger (or a broken one): nothing to shadow
            self.last_check = time.time()
            if self.current is not before and self.current is not None:
                self.swaps += before is not None
            return {"changed": self.current is not before, "version": self.current and self.current.version,
                    "previous_version": before and before.version, "error": self.last_error,
                    "shadow_version": self.shadow and self.shadow.version,
                    "loaded": self.current is not before or (self.shadow is not shadow_before and bool(self.shadow))}

    def _follow(self, alias: str, *served: LoadedModel | None) -> LoadedModel:
        """The version `alias` names: one of the `served` models when it is that version (its tags refreshed), else
        that version freshly loaded."""
        name = self.source.name
        try:
            found = self.client.get_model_version_by_alias(name, alias)
        except Exception as exc:  # MlflowException for a missing model/alias, DB errors
            raise ModelLoadError(f"cannot resolve the alias: {getattr(exc, 'message', exc)}", model=name,
                                 alias=alias) from exc
        for model in served:
            if model is not None and model.version == str(found.version):
                if model.tags != found.tags:  # e.g. a blessing recorded after registration: one reference swap
                    object.__setattr__(model, "tags", dict(found.tags))
                return model
        try:
            uri = self.client.get_model_version_download_uri(name, found.version)
        except Exception as exc:
            raise ModelLoadError(f"cannot find its artifacts: {exc}", model=name, version=found.version) from exc
        return load_model(uri, tracking_uri=self.tracking_uri, name=name, version=str(found.version), alias=alias,
                          run_id=found.run_id, tags=found.tags)

    def _fixed(self, uri: str) -> LoadedModel:
        """A model given by URI; `models:/name/version` (or `@alias`) is resolved through the registry once."""
        if uri.startswith("models:/") and not uri.startswith("models:/m-"):
            ref = uri[len("models:/"):]
            name, sep, alias = ref.partition("@")
            if sep:
                return ModelHolder(ModelSource(name, alias), tracking_uri=self.tracking_uri,
                                   registry_uri=self.registry_uri)._follow(alias)
            name, _, version = ref.partition("/")
            try:
                found = self.client.get_model_version(name, version)
                location = self.client.get_model_version_download_uri(name, version)
            except Exception as exc:
                raise ModelLoadError(f"cannot resolve {uri}: {getattr(exc, 'message', exc)}", model=name,
                                     version=version) from exc
            return load_model(location, tracking_uri=self.tracking_uri, name=name, version=str(version),
                              run_id=found.run_id, tags=found.tags)
        return load_model(uri, tracking_uri=self.tracking_uri)
