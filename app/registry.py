"""The model registry: every model folder under the models directory, loaded or failed."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.batching import MicroBatcher
from app.settings import Settings
from model.errors import CheckpointError, SpecError
from model.runtime import Runtime, load_model
from model.spec import GeneratorSpec

logger = logging.getLogger(__name__)

# Model names are folder names; anything else never reaches the file system.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class ServedModel:
    """One model as the service sees it: ready with a translator, or unavailable with a reason."""

    name: str
    folder: Path
    spec: GeneratorSpec | None = None
    runtime: Runtime | None = None
    batcher: MicroBatcher | None = None
    error: str | None = None
    load_seconds: float = 0.0
    runtime_timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.runtime is not None and self.error is None

    @property
    def runtime_name(self) -> str:
        return self.runtime.name if self.runtime is not None else "none"


class ModelRegistry:
    """Loads every sub-folder of ``models_dir`` at start; failures are kept with their reason."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.models: dict[str, ServedModel] = {}

    def load_all(self) -> None:
        root = Path(self.settings.models_dir)
        if not root.is_dir():
            logger.error("models directory %s does not exist; serving no models", root)
            return
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if not MODEL_NAME.match(folder.name):
                logger.warning("skipping %s: not a usable model name", folder)
                continue
            self.models[folder.name] = self.load_one(folder)

    def load_one(self, folder: Path) -> ServedModel:
        served = ServedModel(name=folder.name, folder=folder)
        start = time.perf_counter()
        try:
            # Loading times each candidate runtime on a warm-up batch, so the first request
            # does not pay for lazy initialisation either.
            loaded = load_model(
                folder,
                runtime=self.settings.runtime,
                device=self.settings.device,
                threads=self.settings.threads,
            )
            served.spec, served.runtime = loaded.spec, loaded.runtime
            served.runtime_timings_ms = loaded.timings_ms
        except (CheckpointError, SpecError, OSError, RuntimeError) as error:
            served.error = str(error)
            logger.error("model %s is unavailable: %s", folder.name, error)
        served.load_seconds = time.perf_counter() - start
        if served.ready:
            logger.info("model %s loaded in %.2f s", folder.name, served.load_seconds)
        return served

    def get(self, name: str) -> ServedModel | None:
        if not MODEL_NAME.match(name):
            return None
        return self.models.get(name)

    @property
    def all_ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.models.values())
