"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from app.dependencies import get_registry
from app.registry import ModelRegistry

router = APIRouter(tags=["health"])


class Alive(BaseModel):
    status: str


class ModelReadiness(BaseModel):
    ready: bool
    error: str | None = Field(
        description="why the model is unavailable, or why a newer version was refused"
    )


class Readiness(BaseModel):
    ready: bool
    models: dict[str, ModelReadiness]


@router.get("/healthz", response_model=Alive, summary="The process is alive")
async def healthz() -> Alive:
    # On the event loop: a plain function would wait for a thread-pool slot like other work.
    return Alive(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Models are loaded",
    responses={503: {"model": Readiness, "description": "no model is ready"}},
)
async def readyz(registry: ModelRegistry = Depends(get_registry)):
    # On the event loop, where the registry changes, so the answer is never half a swap.
    readiness = Readiness(
        ready=any(m.ready for m in registry.models.values()),
        models={
            name: ModelReadiness(ready=m.ready, error=m.error)
            for name, m in registry.models.items()
        },
    )
    # Ready while at least one model serves; broken ones are listed with their reason.
    return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
