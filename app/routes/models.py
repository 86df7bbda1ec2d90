"""/v1/models: list the models and translate images with them."""

from __future__ import annotations

import asyncio
import time
from enum import StrEnum

import numpy as np
from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

from app.batching import QueueFull
from app.dependencies import (
    get_image_workers,
    get_model,
    get_registry,
    get_settings,
    require_api_key,
)
from app.errors import ApiError, ErrorResponse
from app.imaging import encode_image, load_upload, open_upload
from app.registry import ModelRegistry, ServedModel
from app.scheduling import Ticket
from app.settings import Settings
from app.workers import ImageWorkers
from model.choices import IMAGE_FORMAT_NAMES, IMAGE_FORMATS, RESIZE_MODES
from model.errors import InputError
from model.plan import TranslationPlan, plan_translation
from model.processing import decode_output, encode_input, prepare_input

router = APIRouter(prefix="/v1", tags=["models"])


# Enums for FastAPI's validation and the OpenAPI page, made from the shared choice lists.
OutputFormat = StrEnum("OutputFormat", [(name, name) for name in IMAGE_FORMAT_NAMES])
ResizeMode = StrEnum("ResizeMode", [(name, name) for name in RESIZE_MODES])


class PaletteEntry(BaseModel):
    id: int
    name: str
    color: tuple[int, int, int]


class ExampleInfo(BaseModel):
    name: str = Field(description="what the example shows")
    url: str = Field(description="where to GET its file (PNG, JPEG or WebP)")


class ModelInfo(BaseModel):
    name: str
    task: str | None
    input_kind: str | None
    color_space: str | None
    in_channels: int | None
    out_channels: int | None
    palette: list[PaletteEntry]
    palette_tolerance: int | None = Field(
        description="how far (per channel, 0..255) an uploaded label map's colors may stray "
        "from the palette and still be read as the nearest palette color, as in training"
    )
    description: str | None = Field(
        description="what the model was trained on and how, as its training config says"
    )
    scenes: list[ExampleInfo] = Field(
        description="label maps in the palette to start painting from (label-map models)"
    )
    examples: list[ExampleInfo] = Field(
        description="inputs to try, of the kind the model takes (label maps or photos)"
    )
    train_size: int | None
    pad_multiple: int | None
    inference_mode: str | None
    runtime: str
    version: str | None = Field(
        description="short content hash of the weights, spec and example files being served"
    )
    status: str
    error: str | None = Field(
        description="why the model is unavailable, or why a newer version in its folder was "
        "refused while this one keeps serving"
    )
    load_seconds: float


class ModelList(BaseModel):
    models: list[ModelInfo]


class RefusedModel(BaseModel):
    name: str
    error: str


class ReloadResult(BaseModel):
    added: list[str]
    replaced: list[str]
    removed: list[str]
    failed: list[RefusedModel]
    unchanged: list[str]


def example_url(served: ServedModel, file_name: str) -> str:
    return f"/v1/models/{served.name}/examples/{file_name}"


def describe(served: ServedModel) -> ModelInfo:
    spec = served.spec
    listed = {
        kind: [
            ExampleInfo(name=example.name, url=example_url(served, example.file_name))
            for example in served.examples
            if example.kind == kind
        ]
        for kind in ("scene", "example")
    }
    return ModelInfo(
        name=served.name,
        task=spec.task if spec else None,
        input_kind=spec.input_kind if spec else None,
        color_space=spec.color_space if spec else None,
        in_channels=spec.in_channels if spec else None,
        out_channels=spec.out_channels if spec else None,
        palette=[
            PaletteEntry(id=c.id, name=c.name, color=c.color)
            for c in (spec.palette if spec else ())
        ],
        palette_tolerance=spec.palette_tolerance if spec else None,
        description=(str(spec.extra.get("description") or "") or None) if spec else None,
        scenes=listed["scene"],
        examples=listed["example"],
        train_size=spec.train_size if spec else None,
        pad_multiple=spec.pad_multiple if spec else None,
        inference_mode=spec.inference_mode if spec else None,
        runtime=served.runtime_name,
        version=served.version,
        status="ready" if served.ready else "unavailable",
        error=served.error,
        load_seconds=round(served.load_seconds, 3),
    )


@router.get("/models", response_model=ModelList, summary="List the served models")
async def list_models(registry: ModelRegistry = Depends(get_registry)) -> ModelList:
    # On the event loop, where the registry changes, so the listing is never half a swap.
    return ModelList(models=[describe(m) for m in registry.models.values()])


@router.get(
    "/models/{name}/examples/{file_name}",
    response_class=FileResponse,
    summary="Download one of a model's scenes or examples",
    description="Only the files that the model's spec lists under `scenes` and `examples` "
    "(their URLs are in GET /v1/models); any other name is 404.",
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        404: {"model": ErrorResponse, "description": "no such model, or no such listed file"},
    },
)
async def example_file(
    name: str, file_name: str, registry: ModelRegistry = Depends(get_registry)
) -> FileResponse:
    served = registry.get(name)
    if served is None:
        raise ApiError(404, "model_not_found", f"no model named {name!r}; see GET /v1/models")
    # Looked up among the listed files, never joined to a path: nothing else can be named.
    example = next((e for e in served.examples if e.file_name == file_name), None)
    if example is None:
        listed = ", ".join(e.file_name for e in served.examples) or "none"
        raise ApiError(
            404,
            "example_not_found",
            f"model {name!r} lists no example file {file_name[:100]!r} (it lists: {listed})",
        )
    if not example.path.is_file():  # removed since the model was loaded
        raise ApiError(404, "example_not_found", f"{example.file_name} is no longer on disk")
    return FileResponse(example.path, media_type=example.media_type)


ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        401: "API key missing or wrong (only when PIX2PIX_API_KEY is set)",
        404: "no such model",
        413: "upload too large, or too many pixels",
        415: "the upload is not an image",
        422: "corrupt image, label map with unknown classes/colors, or a bad field",
        503: "the model's queue is full (see Retry-After) or the model is unavailable",
    }.items()
}
IMAGE_RESPONSE = {
    200: {
        "content": {
            entry.media_type: {"schema": {"type": "string", "format": "binary"}}
            for entry in IMAGE_FORMATS
        },
        "description": "the translated image, the same size as the input",
        "headers": {
            "X-Model": {"description": "model that produced it", "schema": {"type": "string"}},
            "X-Model-Version": {
                "description": "version (content hash) of the model that produced it",
                "schema": {"type": "string"},
            },
            "X-Inference-Ms": {
                "description": "time spent in the network",
                "schema": {"type": "number"},
            },
        },
    }
}


@router.post(
    "/models/reload",
    response_model=ReloadResult,
    summary="Scan the models folder now: add, replace and remove models",
    description="For file systems without change events, or with PIX2PIX_WATCH_MODELS=false. "
    "Answers once the scan is done; a new version that fails to load is listed under "
    "`failed` and the old one keeps serving.",
    responses={401: ERRORS[401]},
    dependencies=[Depends(require_api_key)],
)
async def reload_models(registry: ModelRegistry = Depends(get_registry)) -> ReloadResult:
    report = await registry.reload()
    return ReloadResult(
        added=report.added,
        replaced=report.replaced,
        removed=report.removed,
        failed=[RefusedModel(name=name, error=error) for name, error in report.failed.items()],
        unchanged=report.unchanged,
    )


@router.post(
    "/models/{name}/translate",
    summary="Translate an uploaded image",
    response_class=Response,
    responses={**IMAGE_RESPONSE, **ERRORS},
    dependencies=[Depends(require_api_key)],
)
async def translate(
    request: Request,
    image: UploadFile = File(..., description="the input image (or label map)"),
    format: OutputFormat = Query(OutputFormat.png, description="output image format"),
    resize: ResizeMode = Query(
        ResizeMode.pad,
        description="pad: keep any size (padded to the network's multiple, cropped back); "
        "fit: resize to the training size and back",
    ),
    served: ServedModel = Depends(get_model),
    settings: Settings = Depends(get_settings),
    workers: ImageWorkers = Depends(get_image_workers),
) -> Response:
    spec = served.spec
    assert spec is not None and served.batcher is not None
    arrived = time.perf_counter()
    data = await image.read()
    # Image work runs on the image workers, never on the event loop. The header is read first,
    # as the smallest work there is, so that the rest is scheduled by the image's size.
    opened = await workers.run(Ticket(1, arrived), 1, _open, data, settings)
    width, height = opened.size
    ticket = Ticket(width * height, arrived)
    request.state.input_size = f"{width}x{height}"
    request.state.model_version = served.version
    array, plan = await workers.run(
        ticket, ticket.pixels, _prepare, opened, spec, settings, resize.value, image.filename
    )
    try:
        batch_size, inference_ms = await _run(served, plan, settings, workers, ticket)
    except QueueFull as error:
        raise ApiError(
            503,
            "queue_full",
            f"{error}; retry shortly",
            headers={"Retry-After": str(settings.retry_after_s)},
        ) from None
    request.state.batch_size = batch_size
    request.state.inference_ms = round(inference_ms, 2)
    body, media_type = await workers.run(
        ticket, ticket.pixels, _finish, plan, spec, array, format.value
    )
    return Response(
        content=body,
        media_type=media_type,
        headers={
            "X-Model": served.name,
            "X-Model-Version": served.version or "unknown",
            "X-Inference-Ms": f"{inference_ms:.2f}",
        },
    )


def _open(data: bytes, settings: Settings) -> Image.Image:
    """Upload bytes -> the image with its header read and checked, its pixels not yet."""
    return open_upload(data, settings.max_side, settings.max_pixels)


def _prepare(opened: Image.Image, spec, settings: Settings, resize: str, filename: str | None):
    """An opened upload -> (canonical input array, its translation plan).

    Label colors are read within the spec's palette tolerance, as the model was trained.
    """
    decoded = load_upload(opened)
    try:
        array = prepare_input(decoded, spec)
    except InputError as error:
        named = f"{filename}: {error}" if filename else str(error)
        raise ApiError(422, "invalid_input", named) from None
    encoded = encode_input(array, spec)
    plan = plan_translation(encoded, spec, resize, settings.tile_size, settings.tile_overlap)
    return array, plan


def _blend(plan: TranslationPlan, indices: range, outputs: list[np.ndarray]) -> None:
    for index, output in zip(indices, outputs, strict=True):
        plan.add(index, output)


def _finish(plan: TranslationPlan, spec, array: np.ndarray, format_name: str):
    """The plan's assembled output -> encoded image bytes at the input's size."""
    image = Image.fromarray(decode_output(plan.result(), spec, array))
    return encode_image(image, format_name)


async def _run(
    served: ServedModel,
    plan: TranslationPlan,
    settings: Settings,
    workers: ImageWorkers,
    ticket: Ticket,
) -> tuple[int, float]:
    """The plan's crops through the micro-batcher; returns (largest batch, network ms)."""
    assert served.batcher is not None
    total_ms, largest = 0.0, 0
    # A bounded number of crops in flight keeps one huge image from filling the queue.
    step = max(1, settings.max_batch)
    for start in range(0, len(plan.boxes), step):
        indices = range(start, min(start + step, len(plan.boxes)))
        results = await asyncio.gather(
            *(served.batcher.submit(plan.crop(i), ticket) for i in indices)
        )
        outputs = [result.output for result in results]
        pixels = len(indices) * plan.tile[0] * plan.tile[1]
        await workers.run(ticket, pixels, _blend, plan, indices, outputs)
        largest = max(largest, *(r.batch_size for r in results))
        total_ms += max(r.inference_ms for r in results)
    return largest, total_ms
