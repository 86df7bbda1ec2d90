"""The model registry: every model folder under the models directory, kept in step with it.

Each name maps to one loaded *version* of a model (a :class:`ServedModel` with its own runtime
and micro-batcher). A change on disk never edits a served version: the new one is loaded beside
it, its batcher started, and the name is pointed at it in one step on the event loop. Requests
hold a lease on the version they were routed to, so the old one finishes what it started and
is stopped once its last lease ends. A version that fails to load never replaces a working
one: the old one keeps serving and carries the error for ``/v1/models`` and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.batching import MicroBatcher
from app.memory import give_back_freed_memory
from app.metrics import Metrics
from app.settings import Settings
from app.workers import inference_threads
from model.errors import CheckpointError, SpecError
from model.example_inputs import ExampleInput, example_inputs
from model.model_folders import model_files, model_version, resolve_model_folder
from model.runtime import Runtime, load_model
from model.spec import GeneratorSpec

logger = logging.getLogger(__name__)

# Model names are folder names; anything else never reaches the file system.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOAD_ERRORS = (CheckpointError, SpecError, OSError, RuntimeError)
# A folder rewritten while it loads is loaded again, at most this many times in one scan.
LOAD_ATTEMPTS = 3


def fingerprint(folder: Path) -> tuple | None:
    """Where a model folder's files are and their identity, from stat calls only.

    Equal fingerprints mean the same files, so a scan re-hashes nothing unchanged; a folder
    renamed over the old one or a symlink pointed elsewhere changes it. None when the folder
    is not (yet) a loadable model folder.
    """
    try:
        resolved = resolve_model_folder(folder)
        files = []
        for file in model_files(resolved):
            stat = file.stat()
            files.append((file.name, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    except (CheckpointError, OSError):
        return None
    return os.path.realpath(resolved), tuple(files)


@dataclass
class ServedModel:
    """One version of a model: ready with a translator, or unavailable with a reason."""

    name: str
    folder: Path
    spec: GeneratorSpec | None = None
    runtime: Runtime | None = None
    batcher: MicroBatcher | None = None
    error: str | None = None
    load_seconds: float = 0.0
    runtime_timings_ms: dict[str, float] = field(default_factory=dict)
    # The scenes and examples its spec lists, each checked to be in its folder.
    examples: list[ExampleInput] = field(default_factory=list)
    version: str | None = None
    fingerprint: tuple | None = None
    # The files of a newer version that failed to load, so an unchanged failure is not retried.
    refused_fingerprint: tuple | None = None
    active: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def ready(self) -> bool:
        return self.runtime is not None

    @property
    def runtime_name(self) -> str:
        return self.runtime.name if self.runtime is not None else "none"

    @contextlib.contextmanager
    def lease(self) -> Iterator[ServedModel]:
        """Hold this version for one request: it is not stopped until every lease ends."""
        self.active += 1
        self.idle.clear()
        try:
            yield self
        finally:
            self.active -= 1
            if self.active == 0:
                self.idle.set()


@dataclass
class ReloadReport:
    """What one scan of the models directory changed."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)


class ModelRegistry:
    """Every usable sub-folder of ``models_dir``, loaded at start and whenever it changes.

    All changes to ``models`` happen on the event loop, under one lock; loading and hashing
    run on worker threads, so requests keep flowing while a new version loads.
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.models: dict[str, ServedModel] = {}
        self._serving = False
        self._lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task, ServedModel] = {}
        self._watcher: asyncio.Task | None = None
        self._stop_watching = asyncio.Event()
        self._warned: set[str] = set()

    # -- life cycle ----------------------------------------------------------------------------

    def load_all(self) -> None:
        """Load every model once, without batchers (for scripts and tests off the server)."""
        asyncio.run(self.reload())

    async def start(self) -> None:
        """Load every model, start their batchers and, if enabled, watch the folder."""
        self._serving = True
        self._stop_watching.clear()
        if self.settings.watch_models:
            # Watching before the first scan, so a change made while it loads is not missed.
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="watch-models"
            )
        await self.reload()
        logger.info(
            "serving %d model(s) from %s: %s",
            sum(m.ready for m in self.models.values()),
            self.settings.models_dir,
            ", ".join(f"{m.name}@{m.version}" for m in self.models.values()) or "none",
        )

    async def stop(self) -> None:
        self._stop_watching.set()
        if self._watcher is not None:
            # The watcher checks the event between steps; cancelling alone would leave its
            # thread waiting for the next change.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._watcher, timeout=5)
        async with self._lock:
            if self._retiring:
                # The server has finished its requests by now, unless its grace time ran out.
                await asyncio.wait(list(self._retiring), timeout=5)
            for task, served in list(self._retiring.items()):
                task.cancel()
                if served.batcher is not None:
                    await served.batcher.stop()
            for served in self.models.values():
                if served.batcher is not None:
                    await served.batcher.stop()
        self._serving = False

    async def _watch(self) -> None:
        root = Path(self.settings.models_dir)
        try:
            from watchfiles import awatch
        except ImportError:
            logger.error("not watching %s: watchfiles is not installed", root)
            return
        if not root.is_dir():
            logger.error("not watching %s: no such directory", root)
            return
        quiet = max(1, self.settings.reload_debounce_ms)
        logger.info("watching %s for model changes", root)
        try:
            # step: the quiet time that ends a burst of changes; debounce: the longest burst.
            async for _ in awatch(
                root,
                watch_filter=None,
                step=quiet,
                debounce=max(1600, 10 * quiet),
                stop_event=self._stop_watching,
                ignore_permission_denied=True,
            ):
                try:
                    await self.reload()
                except Exception:  # a bad scan must not end the watching
                    logger.exception("reloading models from %s failed", root)
        except OSError as error:  # e.g. out of inotify watches
            logger.error(
                "stopped watching %s (%s); reload with POST /v1/models/reload, or set "
                "WATCHFILES_FORCE_POLLING=true",
                root,
                error,
            )

    # -- scanning ------------------------------------------------------------------------------

    async def reload(self) -> ReloadReport:
        """Bring ``models`` in step with the folder: add, replace and remove models."""
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> ReloadReport:
        report = ReloadReport()
        present = await asyncio.to_thread(self._list_folders)
        missing = [name for name in self.models if name not in present]
        if missing and self._serving:
            # A deploy that moves the old folder away before renaming the new one in leaves
            # the name empty for a moment; only a folder still gone after the quiet time goes.
            await asyncio.sleep(self.settings.reload_debounce_ms / 1000.0)
            present = await asyncio.to_thread(self._list_folders)
            missing = [name for name in self.models if name not in present]
        for name in missing:
            self._remove(name)
            report.removed.append(name)
        for name, folder in present.items():
            await self._refresh(name, folder, report)
        if report.added or report.replaced or report.removed or report.failed:
            logger.info(
                "models reloaded: added %s, replaced %s, removed %s, failed %s",
                report.added or "-",
                report.replaced or "-",
                report.removed or "-",
                list(report.failed) or "-",
            )
        return report

    def _list_folders(self) -> dict[str, Path]:
        root = Path(self.settings.models_dir)
        if not root.is_dir():
            logger.error("models directory %s does not exist; serving no models", root)
            return {}
        folders = {}
        for folder in sorted(root.iterdir()):
            # Hidden folders are where deploys stage a new version before renaming it in.
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            if not MODEL_NAME.match(folder.name):
                if folder.name not in self._warned:
                    self._warned.add(folder.name)
                    logger.warning("skipping %s: not a usable model name", folder)
                continue
            folders[folder.name] = folder
        return folders

    async def _refresh(self, name: str, folder: Path, report: ReloadReport) -> None:
        current = self.models.get(name)
        seen = await asyncio.to_thread(fingerprint, folder)
        if (
            current is not None
            and seen is not None
            and seen in (current.fingerprint, current.refused_fingerprint)
        ):
            report.unchanged.append(name)
            return
        candidate, files = await asyncio.to_thread(self._load, folder, current)
        if candidate is None:  # the served content under new file identities
            assert current is not None
            current.fingerprint, current.refused_fingerprint, current.error = files, None, None
            report.unchanged.append(name)
            return
        if candidate.ready:
            self._serve(candidate)
            if current is None:
                report.added.append(name)
                self.metrics.reloads.labels(name, "added").inc()
            else:
                self._retire(current)
                report.replaced.append(name)
                self.metrics.reloads.labels(name, "replaced").inc()
                logger.info(
                    "model %s: version %s replaces %s", name, candidate.version, current.version
                )
            return
        error = candidate.error or "failed to load"
        if current is not None and current.ready:
            error = (
                f"{folder}: new version {candidate.version or '(unreadable)'} refused, still "
                f"serving version {current.version}: {error}"
            )
            current.refused_fingerprint = candidate.fingerprint
        if current is not None and current.error == error:
            report.unchanged.append(name)
            return
        if current is not None and current.ready:
            current.error = error
            logger.error("model %s: %s", name, error)
        else:
            self.models[name] = candidate
            self.metrics.model_ready.labels(name).set(0)
        report.failed[name] = error
        self.metrics.reloads.labels(name, "failed").inc()

    def _load(
        self, folder: Path, current: ServedModel | None
    ) -> tuple[ServedModel | None, tuple | None]:
        """On a worker thread: the folder's version and its fingerprint.

        None instead of a version when its content is the one ``current`` serves.
        """
        for _ in range(LOAD_ATTEMPTS):
            before = fingerprint(folder)
            try:
                version = model_version(folder)
            except (CheckpointError, OSError):
                version = None
            if current is not None and current.ready and version == current.version:
                return None, before
            served = self.load_one(folder)
            served.version, served.fingerprint = version, before
            if fingerprint(folder) == before:
                break
            logger.info("model %s changed while it loaded; loading it again", folder.name)
        return served, served.fingerprint

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
                threads=inference_threads(self.settings.threads),
                spinning=False,
            )
            # A listed example that is missing refuses the version, as a missing file would.
            served.examples = example_inputs(loaded.folder, loaded.spec)
            served.spec, served.runtime = loaded.spec, loaded.runtime
            served.runtime_timings_ms = loaded.timings_ms
        except LOAD_ERRORS as error:
            message = str(error)
            # Every reason names the folder, whichever layer raised it.
            served.error = message if str(folder) in message else f"{folder}: {message}"
            logger.error("model %s is unavailable: %s", folder.name, error)
        served.load_seconds = time.perf_counter() - start
        if served.ready:
            logger.info("model %s loaded in %.2f s", folder.name, served.load_seconds)
        return served

    # -- swapping ------------------------------------------------------------------------------

    def _serve(self, served: ServedModel) -> None:
        """Start the new version's batcher, then point the name at it (one dict assignment)."""
        if self._serving:
            served.batcher = self._make_batcher(served)
            served.batcher.start()
        name = served.name
        self.models[name] = served
        self.metrics.model_ready.labels(name).set(1)
        self.metrics.load_seconds.labels(name).set(served.load_seconds)
        self.metrics.show_version(name, served.version or "unknown")

    def _make_batcher(self, served: ServedModel) -> MicroBatcher:
        settings, metrics, name = self.settings, self.metrics, served.name
        assert served.runtime is not None

        def observe(batch_size: int, seconds: float) -> None:
            metrics.batch_size.labels(name).observe(batch_size)
            metrics.inference.labels(name).observe(seconds)

        return MicroBatcher(
            name,
            served.runtime,
            max_batch=settings.max_batch,
            max_batch_pixels=settings.max_batch_pixels,
            max_wait_ms=settings.max_wait_ms,
            queue_size=settings.queue_size,
            on_batch=observe,
            on_depth=metrics.queue_depth.labels(name).set,
            on_wait=metrics.queue_wait.labels(name).observe,
        )

    def _remove(self, name: str) -> None:
        served = self.models.pop(name)
        self.metrics.forget_model(name)
        self.metrics.reloads.labels(name, "removed").inc()
        logger.info("model %s removed (version %s)", name, served.version)
        self._retire(served)

    def _retire(self, served: ServedModel) -> None:
        """Stop a version no longer routed to, once the requests that hold it have finished."""
        if served.batcher is None:
            served.runtime = None
            return
        # Its depth is no longer the model's depth; the new version reports that.
        served.batcher.on_depth = None
        task = asyncio.get_running_loop().create_task(
            self._drain(served), name=f"retire-{served.name}"
        )
        self._retiring[task] = served
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def _drain(self, served: ServedModel) -> None:
        await served.idle.wait()
        assert served.batcher is not None
        await served.batcher.stop()
        # Its batcher and runtime were the last to hold the session, weights and buffers:
        # freed with them, their pages go back to the operating system.
        served.runtime, served.batcher = None, None
        await asyncio.to_thread(give_back_freed_memory)
        logger.info("model %s: version %s stopped", served.name, served.version)

    # -- lookups -------------------------------------------------------------------------------

    def get(self, name: str) -> ServedModel | None:
        if not MODEL_NAME.match(name):
            return None
        return self.models.get(name)
