"""Service settings, read from PIX2PIX_* environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.plan import TILE_OVERLAP, TILE_SIZE


class Settings(BaseSettings):
    """Every setting can be set as an environment variable, e.g. ``PIX2PIX_MAX_BATCH=16``."""

    model_config = SettingsConfigDict(env_prefix="PIX2PIX_", extra="ignore")

    models_dir: str = Field("models", description="folder with one sub-folder per model")
    api_key: str | None = Field(None, description="when set, translate requires this key")
    cors_origins: list[str] = Field(default_factory=list, description="allowed CORS origins")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    runtime: str = Field(
        "auto",
        description="auto (time the candidates at load, keep the fastest), torch, torch-bf16, "
        "torch-fp16, torch-compile, torchscript or onnx",
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, description="largest accepted upload")
    max_side: int = Field(4096, description="largest accepted image side, in pixels")
    max_pixels: int = Field(4096 * 4096, description="largest accepted width x height")
    max_batch: int = Field(8, description="largest micro-batch run at once")
    max_batch_pixels: int = Field(
        512 * 512,
        description="largest micro-batch in input pixels (a larger crop runs alone), so a "
        "small request never waits long behind a batch of large tiles; 0 = no limit",
    )
    max_wait_ms: float = Field(10.0, description="how long a request waits for batch-mates")
    queue_size: int = Field(64, description="pending requests per model before 503")
    tile_size: int = Field(TILE_SIZE, description="images larger than this are translated in tiles")
    tile_overlap: int = Field(TILE_OVERLAP, description="overlap between tiles, blended smoothly")
    threads: int = Field(
        0,
        description="inference threads per model (0: half the CPUs, at least one, with ONNX "
        "Runtime; torch's own default with torch runtimes)",
    )
    image_threads: int = Field(
        0,
        description="threads that decode, prepare, blend and encode images of any size (0 = "
        "one per CPU); one more takes only images up to 256x256",
    )
    retry_after_s: int = Field(1, description="Retry-After seconds sent with 503")
    drain_timeout_s: float = Field(
        7.0,
        gt=0,
        description="seconds the requests in flight get to finish after SIGTERM; what is "
        "unfinished then is answered 503 with Retry-After. Keep it below uvicorn's "
        "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN and the orchestrator's grace period (docker stop: "
        "10 s, Kubernetes: 30 s), with time left to shut down",
    )
    watch_models: bool = Field(
        True,
        description="reload model folders when they change on disk (off: POST /v1/models/reload)",
    )
    reload_debounce_ms: int = Field(
        500,
        description="quiet time after the last change in the models folder before reloading; "
        "also how long a vanished folder may stay gone mid-deploy before it stops serving",
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
