"""The HTTP API: predictions (MLflow-compatible `/invocations`, `/predict`), feedback, health (also MLflow's `/ping`
and `/version`), metrics, the model.

Routes parse, call the `Service`, and turn Notebench's errors into HTTP statuses (the only place that raises
`HTTPException`): malformed body 400, bad token 401, unknown entity (or no feature repo) 404, body too large 413
(in the middleware), unsupported media type 415, input that does not match the signature 422, no model loaded yet
or an unreadable feature store or log 503, a new version that cannot be loaded on /reload 502.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from notebench.errors import InvalidInputError, MalformedRequestError, ServingError, UnknownEntityError
from notebench.serving import formats
from notebench.serving.models import LoadedModel, scores
from notebench.serving.service import Service

__all__ = ["router"]

router = APIRouter()

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_REQUEST_ID_HEADER = {"name": "X-Request-Id", "in": "header", "required": False, "schema": {"type": "string"},
                      "description": "your id for this request ([A-Za-z0-9._:-], up to 128): echoed, logged, and the "
                                     "key of /feedback; default: a new UUID"}


# ---------------------------------------------------------------------------------------------------------
# dependencies


# Dependencies are `async def` (FastAPI runs a plain `def` dependency in a thread pool: a thread hop per request),
# and the prediction routes take one (`PredictionCall`): each dependency node costs FastAPI ~0.1 ms to solve.

async def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


@dataclass(frozen=True, slots=True)
class Call:
    """What a prediction request starts with: the service, the model (taken once: a swap during the request does
    not change it), its request id, and when it arrived (perf_counter, unix time)."""

    service: Service
    model: LoadedModel
    request_id: str
    started: tuple[float, float]


async def prediction_call(request: Request) -> Call:
    service: Service = request.app.state.service
    model = service.model
    if model is None:
        raise HTTPException(503, f"no model is being served yet: {service.holder.last_error or 'loading'}")
    given = request.headers.get("x-request-id")  # documented by `_REQUEST_ID_HEADER` (a Header() costs per call)
    rid = given if given is not None and _REQUEST_ID.match(given) else uuid.uuid4().hex
    started = request.scope.get("notebench.started") or (time.perf_counter(), time.time())
    return Call(service, model, rid, started)


PredictionCall = Annotated[Call, Depends(prediction_call)]


async def served_model(service: ServiceDep) -> LoadedModel:
    """The served model, or 503 while there is none."""
    model = service.model
    if model is None:
        raise HTTPException(503, f"no model is being served yet: {service.holder.last_error or 'loading'}")
    return model


ModelDep = Annotated[LoadedModel, Depends(served_model)]


async def require_token(service: ServiceDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """The bearer token of `[serving] token`, when one is set."""
    token = service.config.token
    if not token:
        return
    given = authorization[7:] if authorization and authorization[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "this endpoint needs the service's bearer token: Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})


Authorized = Annotated[None, Depends(require_token)]


@contextmanager
def http_errors() -> Iterator[None]:
    """Notebench's errors as HTTP statuses."""
    try:
        yield
    except UnknownEntityError as exc:
        raise HTTPException(404, str(exc)) from exc
    except MalformedRequestError as exc:
        raise HTTPException(400, _problems(exc)) from exc
    except InvalidInputError as exc:
        raise HTTPException(422, _problems(exc)) from exc
    except ServingError as exc:
        raise HTTPException(503, str(exc)) from exc


def _problems(exc: InvalidInputError) -> str | dict:
    return exc.problems[0] if len(exc.problems) == 1 else {"message": str(exc), "problems": exc.problems}


def _json(content: dict, model: LoadedModel, rid: str) -> Response:
    return Response(_encode(content), media_type="application/json",
                    headers={"X-Model-Version": model.version, "X-Request-Id": rid})


def _encode(content: dict) -> bytes:
    """An answer as JSON; `predictions` may be the model's numpy output. orjson writes a float64, integer or boolean
    output without making Python objects of it (15x faster on 1,000 rows); anything it would write differently
    from MLflow's server (NaN and infinities, which it writes as null; float32, which it writes in float32's
    shortest digits; objects) goes through the standard library, as MLflow's does."""
    predictions = content.get("predictions")
    if isinstance(predictions, np.ndarray):
        kind = predictions.dtype.kind
        if kind in "iub" or (predictions.dtype == np.float64 and np.isfinite(predictions).all()):
            try:
                return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
            except orjson.JSONEncodeError:  # e.g. an array that is not C-contiguous
                pass
        content = {**content, "predictions": predictions.tolist()}
    return json.dumps(content, allow_nan=True).encode()


# ---------------------------------------------------------------------------------------------------------
# predictions

_ROW = {"type": "object", "additionalProperties": True, "description": "column name -> value"}
_INVOCATIONS_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object", "description": "exactly one of the MLflow keys", "oneOf": [
            {"type": "object", "required": ["dataframe_split"], "properties": {"dataframe_split": {
                "type": "object", "required": ["data"], "properties": {
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "data": {"type": "array", "items": {"type": "array", "items": {}}}}}}},
            {"type": "object", "required": ["dataframe_records"],
             "properties": {"dataframe_records": {"type": "array", "items": _ROW}}},
            {"type": "object", "required": ["instances"], "properties": {"instances": {
                "oneOf": [{"type": "array", "items": _ROW}, {"type": "array", "items": {"type": "array"}},
                          {"type": "object"}]}}},
            {"type": "object", "required": ["inputs"], "properties": {"inputs": {
                "oneOf": [{"type": "object"}, {"type": "array", "items": _ROW},
                          {"type": "array", "items": {"type": "array"}}]}}},
        ]}},
        "text/csv": {"schema": {"type": "string", "description": "a header row, then one row per prediction"}},
    },
}
_ERRORS = {status: {"description": text} for status, text in (
    (400, "malformed body"), (401, "missing or wrong bearer token"), (404, "unknown entity"),
    (413, "body too large"), (415, "unsupported content type"), (422, "input does not match the model signature"),
    (503, "no model loaded yet, or the feature store or the log cannot be used"))}


@router.post("/invocations", openapi_extra={"requestBody": _INVOCATIONS_BODY, "parameters": [_REQUEST_ID_HEADER]},
             summary="Predict (MLflow format)",
             responses={200: {"description": '`{"predictions": [...], "model_version": "3"}`, as `mlflow models '
                              'serve` answers (plus the version)'}, **_ERRORS})
async def invocations(request: Request, call: PredictionCall) -> Response:
    """Score a body in any of `mlflow models serve`'s formats: JSON `dataframe_split`, `dataframe_records`,
    `instances`, `inputs`; `text/csv`; Parquet. The answer has the same shape as MLflow's."""
    model, rid = call.model, call.request_id
    content_type = request.headers.get("content-type")
    if formats.parser_for(content_type) is None:
        raise HTTPException(415, f"unsupported content type {content_type!r}; send one of "
                                 f"{sorted(formats.MEDIA_TYPES)} (UTF-8)")
    body = await request.body()
    with http_errors():
        batch = formats.parse(body, content_type, model.schema)
        output = await call.service.predict(model, batch, endpoint="/invocations", request_id=rid,
                                            started=call.started)
    return _json({"predictions": output, "model_version": model.version}, model, rid)


def _entity_id(value):
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"an entity id must be an integer or a string, got {type(value).__name__} {value!r}")
    return value


EntityId = Annotated[int | str, PlainValidator(_entity_id),
                     WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}]})]


class PredictRequest(BaseModel):
    """Exactly one of `entities` (features come from the online store) or `records` (full feature records)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"entities": [1, 2]}]})
    entities: list[EntityId] | None = Field(None, description="entity ids whose features the online store holds")
    records: list[dict[str, Any]] | None = Field(None, description="feature records, one per prediction")

    @model_validator(mode="after")
    def one_of(self):
        if (self.entities is None) == (self.records is None):
            raise ValueError("give exactly one of 'entities' or 'records'")
        if not (self.entities or self.records):
            raise ValueError("empty payload: no entities or records to predict")
        return self


class PredictResponse(BaseModel):
    request_id: str
    model_name: str | None
    model_version: str
    predictions: list[Any] = Field(description="positive-class probability per row (the output itself for models "
                                               "without two output columns)")
    entities: list[EntityId] | None = None


@router.post("/predict", response_model=PredictResponse, responses=_ERRORS, summary="Predict by entity or record",
             openapi_extra={"parameters": [_REQUEST_ID_HEADER]})
async def predict(body: PredictRequest, call: PredictionCall) -> Response:
    """Score entities (their latest features from the online feature store) or full feature records."""
    service, model, rid = call.service, call.model, call.request_id
    with http_errors():
        if body.entities is not None:
            frame = await service.features(body.entities)
            batch = model.schema.from_frame(frame)
        else:
            batch = model.schema.from_records(body.records)
        output = await service.predict(model, batch, endpoint="/predict", request_id=rid, started=call.started)
    content = {"request_id": rid, "model_name": model.name, "model_version": model.version,
               "predictions": scores(output)}
    if body.entities is not None:
        content["entities"] = body.entities
    return _json(content, model, rid)


# ---------------------------------------------------------------------------------------------------------
# feedback

def _label(value) -> float:
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"a label must be a finite number (or true/false), got {type(value).__name__} {value!r}")
    return float(value)


def _text(value) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise ValueError("a request id must be a string of 1 to 128 characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a request id must be valid Unicode (no lone surrogates)") from None
    return value


Label = Annotated[float, PlainValidator(_label), WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "boolean"}]})]


class Feedback(BaseModel):
    """Ground truth for a prediction, identified by the request id it was answered with."""

    model_config = ConfigDict(extra="forbid")
    request_id: Annotated[str, PlainValidator(_text), WithJsonSchema({"type": "string", "minLength": 1,
                                                                       "maxLength": 128})]
    label: Label = Field(description="the observed outcome (a number; booleans count as 0/1)")
    row: int | None = Field(None, ge=0, lt=2**31, description="row within the request (default: every row of it)")


class FeedbackResponse(BaseModel):
    accepted: int
    model_version: str | None


_ONE, _MANY = TypeAdapter(Feedback), TypeAdapter(list[Feedback])
_ITEM = _ONE.json_schema()
_FEEDBACK_BODY = {"required": True, "content": {"application/json": {"schema": {
    "oneOf": [_ITEM, {"type": "array", "items": _ITEM}]}}}}


def _feedback_items(doc) -> list[Feedback]:
    """One feedback object or a list of them, with pydantic's findings as readable lines."""
    try:
        return _MANY.validate_python(doc) if isinstance(doc, list) else [_ONE.validate_python(doc)]
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()]
        raise InvalidInputError(problems) from None


@router.post("/feedback", response_model=FeedbackResponse, responses=_ERRORS, summary="Record ground truth",
             openapi_extra={"requestBody": _FEEDBACK_BODY})
async def feedback(request: Request, service: ServiceDep, _: Authorized) -> dict:
    """Record delayed ground truth (`{"request_id", "label", "row"?}` or a list of them) by the request id a
    prediction was answered with; answered once it is durably written beside the predictions."""
    with http_errors():
        items = _feedback_items(formats.decode_json(await request.body()))
        if not items:
            raise InvalidInputError("empty payload: no feedback items")
        accepted = await service.feedback([i.model_dump() for i in items])
    model = service.model
    return {"accepted": min(accepted, len(items)), "model_version": model and model.version}


# ---------------------------------------------------------------------------------------------------------
# operations


@router.get("/health", summary="Liveness")
async def health(service: ServiceDep) -> dict:
    """The process answers (whether or not a model is loaded)."""
    model = service.model
    return {"status": "ok", "model_version": model and model.version,
            "uptime_s": round(time.time() - service.started_at, 1)}


@router.get("/ready", summary="Readiness", responses={503: {"description": "not ready, with the reasons"}})
async def ready(service: ServiceDep) -> JSONResponse:
    """Ready to predict: a model is loaded, the prediction worker and the log writer run."""
    problems = service.readiness()
    model = service.model
    return JSONResponse({"ready": not problems, "problems": problems, "model_version": model and model.version},
                        status_code=503 if problems else 200)


@router.get("/ping", summary="Readiness, as `mlflow models serve` answers it",
            responses={200: {"description": "ready: a newline, as MLflow answers"},
                       404: {"description": "not ready (MLflow's status for it), with the reasons"}})
async def ping(service: ServiceDep) -> Response:
    """MLflow's scoring-server probe (load balancers and SageMaker-style health checks call it): 200 with MLflow's
    body when the service is ready to predict, else 404, as MLflow answers before its model is loaded."""
    problems = service.readiness()
    if problems:
        raise HTTPException(404, f"not ready: {'; '.join(problems)}")
    return Response("\n", media_type="application/json")


@router.get("/version", summary="The MLflow version, as `mlflow models serve` answers it",
            responses={200: {"description": "the version of MLflow that loads the model (plain text, as MLflow's)",
                             "content": {"application/json": {"example": "3.1.0"}}}})
async def version() -> Response:
    """The version of MLflow serving the model, in MLflow's own format (the bare version string)."""
    return Response(_mlflow_version(), media_type="application/json")


def _mlflow_version() -> str:
    from mlflow.version import VERSION

    return VERSION


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def metrics(request: Request, service: ServiceDep) -> Response:
    """Prometheus text (0.0.4), or OpenMetrics when the scraper's Accept header asks for it."""
    body, content_type = service.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)


@router.get("/model", summary="The served model", responses={503: {"description": "no model loaded yet"}})
async def served(service: ServiceDep, model: ModelDep) -> dict:
    """Name, version, alias, run id, blessing, signature of the served model (and the shadow's), and the watcher."""
    holder = service.holder
    return {**model.describe(), "model_version": model.version,
            "shadow": holder.shadow.describe() if holder.shadow else None,
            "watch": {"source": {"name": holder.source.name, "alias": holder.source.alias, "uri": holder.source.uri},
                      "interval": service.config.watch_interval if holder.source.watched else None,
                      "last_check": holder.last_check, "last_error": holder.last_error, "swaps": holder.swaps}}


@router.post("/reload", summary="Check the alias now", responses={**_ERRORS, 502: {
    "description": "the alias names a version that cannot be loaded; the served version stays"}})
async def reload(service: ServiceDep, _: Authorized) -> dict:
    """Resolve the alias now and hot-swap to the version it names if that is new."""
    result = await service.check()
    if result["error"]:
        served_version = service.model and service.model.version
        raise HTTPException(502, f"{result['error']} (still serving version {served_version})")
    return {**result, "model_version": result["version"]}
