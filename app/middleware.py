"""ASGI middleware: upload size limit while streaming, request ids, metrics and access logs."""

from __future__ import annotations

import json
import logging
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body
from app.metrics import Metrics

logger = logging.getLogger("app.access")


class UploadTooLarge(HTTPException):
    """Raised from ``receive`` when a streaming body passes the limit."""

    def __init__(self, limit: int):
        super().__init__(413, f"the upload is larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Refuses bodies over ``limit`` bytes: at once from Content-Length, else mid-stream.

    The body is never read whole before the check, so an oversized upload costs at most
    ``limit`` bytes of buffering.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(send, 413, "payload_too_large", UploadTooLarge(self.limit).detail)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise UploadTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AccessMiddleware:
    """Request id in and out, one structured log line and the metrics of every request."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")[:64]
        request_id = incoming if incoming.isprintable() and incoming else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.latency.labels(template).observe(seconds)
            state = scope.get("state", {})
            # Only names the registry knows get here, so the label set stays bounded.
            if "model" in state:
                self.metrics.model_requests.labels(state["model"], str(status)).inc()
            record = {
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "latency_ms": round(seconds * 1000, 2),
            }
            for key in ("model", "model_version", "input_size", "batch_size", "inference_ms"):
                if key in state:
                    record[key] = state[key]
            if template not in ("/healthz", "/metrics"):
                logger.info(json.dumps(record))
