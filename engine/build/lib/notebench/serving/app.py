"""The app factory: `create_app(workspace, ...)` builds the FastAPI app; its lifespan loads the model.

Nothing is loaded at import or in the factory: the lifespan starts the `Service` (model, micro-batcher, prediction
log, alias watcher) when the server starts and stops it, flushing the log, when the server stops. Every error
answer has one shape, MLflow's (`{"error_code": ..., "message": ...}`, plus `problems` when there are several), so
that clients of `mlflow models serve` read Notebench's errors as they read MLflow's.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from notebench.serving.config import ServingConfig
from notebench.serving.middleware import ServiceMiddleware
from notebench.serving.routes import router
from notebench.serving.service import Service

__all__ = ["create_app"]

ERROR_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST",
               405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
               422: "INVALID_PARAMETER_VALUE", 502: "BAD_GATEWAY", 503: "TEMPORARILY_UNAVAILABLE"}

DESCRIPTION = """Serves the registry's model under an alias (default `champion`) and swaps to a new version without
failing a request. `POST /invocations` takes everything `mlflow models serve` takes and answers the same way;
`POST /predict` scores entities (features from the online store) or records; `POST /feedback` takes ground truth.
Every response names the model version that produced it (`X-Model-Version`)."""


def create_app(workspace=None, *, config: ServingConfig | None = None, **options) -> FastAPI:
    """The prediction service for `workspace` (a `Workspace`, or `Settings` to build one from; default: the
    settings file's).

    `config` replaces the `[serving]` settings; `options` override single fields of them (`model_uri`,
    `model_name`, `alias`, `watch_interval`, `shadow`, `log_predictions`, `flush_interval`, `token`, ...)."""
    from notebench import __version__
    from notebench.workspace import Workspace

    workspace = Workspace.of(workspace)
    config = (config or ServingConfig.from_settings(workspace.settings)).with_overrides(**options)
    service = Service(workspace, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="Notebench prediction service", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.service = service
    app.include_router(router)
    endpoints = {route.path for route in router.routes} | {app.docs_url, app.redoc_url, app.openapi_url}
    app.add_middleware(ServiceMiddleware, service=service, endpoints=endpoints)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


def _error(request: Request, status: int, detail, headers=None) -> JSONResponse:
    if isinstance(detail, dict):
        body = {"error_code": ERROR_CODES.get(status, "INTERNAL_ERROR"), **detail}
    else:
        body = {"error_code": ERROR_CODES.get(status, "INTERNAL_ERROR"), "message": str(detail)}
    model = request.app.state.service.model
    body["model_version"] = model and model.version
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(request, exc.status_code, exc.detail, getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Pydantic's findings as readable lines; a body that is not JSON at all is a 400, not a 422."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        ctx = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {})
        return _error(request, 400, f"malformed JSON: {ctx.get('error', 'cannot parse the body')}")
    problems = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {e.get('msg', 'invalid')}")
    problems = list(dict.fromkeys(problems))
    detail = problems[0] if len(problems) == 1 else {"message": "; ".join(problems[:20]), "problems": problems}
    return _error(request, 422, detail)
