"""Request dependencies: settings, the model registry, and the API-key check."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator

from fastapi import Depends, Request

from app.errors import ApiError
from app.registry import ModelRegistry, ServedModel
from app.settings import Settings
from app.workers import ImageWorkers


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def get_image_workers(request: Request) -> ImageWorkers:
    return request.app.state.image_workers


def require_api_key(request: Request, settings: Settings = Depends(get_settings)) -> None:
    """When PIX2PIX_API_KEY is set, accept ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``."""
    expected = settings.api_key
    if not expected:
        return
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    # compare_digest takes the same time wherever the strings differ.
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required (X-API-Key or Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def get_model(
    name: str, request: Request, registry: ModelRegistry = Depends(get_registry)
) -> AsyncIterator[ServedModel]:
    """The version of ``name`` served now, held until the request is done with it.

    Async, so the look-up and the lease happen on the event loop in one step: a swap can
    never retire the version between the two.
    """
    served = registry.get(name)
    if served is None:
        raise ApiError(404, "model_not_found", f"no model named {name!r}; see GET /v1/models")
    request.state.model = name
    if not served.ready:
        raise ApiError(503, "model_unavailable", f"model {name!r} is unavailable: {served.error}")
    with served.lease():
        yield served
