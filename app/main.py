"""The FastAPI application factory: registry, batchers, routes, errors and the web page."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from app.errors import ApiError, error_body
from app.lifecycle import (
    Drain,
    DrainMiddleware,
    claim_the_only_worker,
    warn_if_uvicorn_cancels_first,
)
from app.memory import configure_malloc
from app.metrics import Metrics
from app.middleware import AccessMiddleware, BodyLimitMiddleware
from app.registry import ModelRegistry
from app.routes import health, models
from app.settings import Settings
from app.workers import ImageWorkers, cpu_count, lower_thread_priority
from model.runtime import torch_available

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# Multipart framing around the file adds a little to the body.
MULTIPART_OVERHEAD = 64 * 1024

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


def _configure_logging() -> None:
    """Give the service's loggers a handler unless the host program configured one."""
    service = logging.getLogger("app")
    if not service.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        service.addHandler(handler)
        service.setLevel(logging.INFO)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as typed JSON (``error_body``) with its status code; nothing unexpected
    leaks a traceback to the client."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(error.code, error.message), status_code=error.status, headers=error.headers
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(error.status_code, "error")
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        return JSONResponse(
            error_body(code, message), status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        return JSONResponse(error_body("invalid_request", problems), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


def _lifespan(
    settings: Settings, registry: ModelRegistry, image_workers: ImageWorkers, drain: Drain
):
    """Start: one worker only, the drain's signals, the threads and every model; stop: the
    reverse, once uvicorn has answered (or the drain refused) every request in flight."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        only_worker = claim_the_only_worker()
        warn_if_uvicorn_cancels_first(settings.drain_timeout_s)
        loop = asyncio.get_running_loop()
        drain.watch_signals(loop)
        # Work sent to threads with asyncio.to_thread (loading models, hashing their files)
        # runs below the event loop's priority too, and so do the threads those start, such
        # as ONNX Runtime's.
        loop.set_default_executor(
            ThreadPoolExecutor(thread_name_prefix="service", initializer=lower_thread_priority)
        )
        image_workers.start()
        # Loads every model, starts their batchers and watches the folder for changes.
        await registry.start()
        yield
        await registry.stop()
        await image_workers.stop()
        drain.stop_watching()
        if only_worker is not None:
            only_worker.close()

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    _configure_logging()
    configure_malloc()
    if settings.threads and torch_available():
        import torch

        torch.set_num_threads(settings.threads)
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics)
    image_workers = ImageWorkers(
        settings.image_threads or cpu_count(), on_depth=metrics.image_queue_depth.set
    )

    drain = Drain(settings.drain_timeout_s)

    app = FastAPI(
        title="pix2pix",
        version="0.1.0",
        summary="Paired image-to-image translation: upload an image, get its translation.",
        lifespan=_lifespan(settings, registry, image_workers, drain),
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.image_workers = image_workers
    app.state.drain = drain

    app.include_router(models.router)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    _add_error_handlers(app)

    # Innermost: its 503 passes through CORS, the access log and the request id.
    app.add_middleware(DrainMiddleware, drain=drain, retry_after_s=settings.retry_after_s)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["X-Model", "X-Model-Version", "X-Inference-Ms", "X-Request-ID"],
        )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(AccessMiddleware, metrics=metrics)
    return app
