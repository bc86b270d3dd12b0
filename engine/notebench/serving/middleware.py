"""One pure ASGI middleware around every request: body size limit, timing and metrics, `X-Model-Version`.

Pure ASGI (not Starlette's `BaseHTTPMiddleware`, which costs a task and a stream per request). The size limit is
enforced before the app reads anything: a `Content-Length` over it is answered 413 at once, and a chunked body is
read here up to the limit (then replayed to the app) so that no route ever holds more than the limit in memory.
Responses that do not name a model version already (prediction routes name the version that produced them) get
the one being served.
"""

from __future__ import annotations

import json
import time

__all__ = ["ServiceMiddleware"]

_BODY_METHODS = {"POST", "PUT", "PATCH"}


class ServiceMiddleware:
    def __init__(self, app, service, endpoints: set[str]):
        self.app, self.service = app, service  # the service holds the metrics and the model
        self.endpoints = endpoints  # paths reported as themselves in metrics; anything else is "other"
        self._series: dict[tuple, tuple] = {}  # (endpoint, method, status) -> its metrics' children (labels() is slow)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = self.service
        started = (time.perf_counter(), time.time())
        scope["notebench.started"] = started
        path = scope["path"]
        endpoint = path if path in self.endpoints else "other"
        status = 500
        limit = service.config.max_body_bytes

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers") or []
                if not any(k == b"x-model-version" for k, _ in headers):
                    model = service.holder.current
                    message = {**message, "headers": [*headers, (b"x-model-version",
                                                                 (model.version if model else "").encode())]}
            await send(message)

        try:
            if scope["method"] in _BODY_METHODS:
                length = _content_length(scope)
                if length is not None and length > limit:
                    await _too_large(send_wrapper, length, limit)
                    return
                if length is None:
                    body = await _read_limited(receive, limit)
                    if body is None:
                        await _too_large(send_wrapper, None, limit)
                        return
                    receive = _replay(body, receive)
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - started[0]
            key = (endpoint, scope["method"], status)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (service.requests.labels(*key), service.latency.labels(endpoint),
                                              service.errors.labels(endpoint, status) if status >= 400 else None)
            series[0].inc()
            series[1].observe(seconds)
            if series[2] is not None:
                series[2].inc()


def _content_length(scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_limited(receive, limit: int) -> bytes | None:
    """The whole body of a request without Content-Length, or None once it exceeds `limit`."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that gives `body` once, then waits on the real one (for the client's disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _too_large(send, length: int | None, limit: int) -> None:
    size = f"{length:,} bytes" if length is not None else "more than that"
    body = json.dumps({"error_code": "PAYLOAD_TOO_LARGE",
                       "message": f"request body too large: {size}; the limit is {limit:,} bytes "
                                  "([serving] max_body_bytes): send fewer rows per request"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
