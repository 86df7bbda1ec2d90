"""Models change while the service runs: added, replaced, refused and removed under load.

A real uvicorn on 127.0.0.1 watches its models folder; a few client threads keep requests
flowing while a deploy renames a new folder (or a symlink) over the old one. Every request
must succeed, and each client must see the old version, then the new one, never back.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import LiveServer

KEY = "reload-key"
# Quiet time before a change is loaded; short, so the tests wait little.
DEBOUNCE_MS = "200"
# Requests sent from the start of a deploy until the stream stops, at least.
DURING_SWAP = 200


def write_photo_model(folder: Path, seed: int) -> Path:
    """A tiny RGB->RGB generator; another seed gives other weights, so another version."""
    from model.checkpoint import save_model_folder
    from model.networks import build_generator, init_weights
    from model.spec import GeneratorArchitecture, GeneratorSpec

    architecture = GeneratorArchitecture(num_downs=3, base_width=4, norm="batch", dropout=True)
    spec = GeneratorSpec.from_dict(
        GeneratorSpec(architecture, 3, 3).to_dict()
        | {"train_size": 32, "pad_multiple": 8, "task": "photo"}
    )
    torch.manual_seed(seed)
    generator = build_generator(spec.architecture, spec.in_channels, spec.out_channels)
    init_weights(generator)
    save_model_folder(folder, generator.eval(), spec)
    return folder


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("versions")
    return {name: write_photo_model(root / name, seed) for name, seed in (("v1", 1), ("v2", 2))}


def png(seed: int = 0, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def translate(url: str, model: str, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/{model}/translate",
        files={"image": ("input.png", png(), "image/png")},
        timeout=60,
        **kwargs,
    )


def listed(url: str) -> dict[str, dict]:
    return {m["name"]: m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["models"]}


def wait_for(condition, timeout: float = 60.0, what: str = "the change"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Outcome:
    worker: int
    sent: float
    done: float
    status: int  # -1: no HTTP answer at all
    version: str | None


class Stream:
    """A few client threads, each sending one request after another until told to stop."""

    def __init__(self, url: str, model: str, workers: int = 3, limit: int = 4000):
        self.url, self.model, self.limit = url, model, limit
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.body = png()
        self.threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True)
            for index in range(workers)
        ]

    def __enter__(self) -> Stream:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stopping.is_set() and len(self.outcomes) < self.limit:
                sent = time.monotonic()
                try:
                    response = client.post(
                        f"{self.url}/v1/models/{self.model}/translate",
                        files={"image": ("input.png", self.body, "image/png")},
                    )
                    status, version = response.status_code, response.headers.get("x-model-version")
                except httpx.HTTPError:
                    status, version = -1, None
                with self.lock:
                    self.outcomes.append(Outcome(worker, sent, time.monotonic(), status, version))

    def snapshot(self) -> list[Outcome]:
        with self.lock:
            return list(self.outcomes)

    def sent_since(self, moment: float) -> list[Outcome]:
        return [o for o in self.snapshot() if o.sent >= moment]

    def run_until(self, condition, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.snapshot()) < self.limit:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(
            f"stream stopped before its goal: {len(self.snapshot())} requests, "
            f"statuses {sorted({o.status for o in self.snapshot()})}"
        )


def switched_once(stream: Stream, old, new) -> None:
    """Each client saw ``old`` answers, then ``new`` ones, never back; none saw anything else."""
    outcomes = stream.snapshot()
    for worker in range(len(stream.threads)):
        seen = [o for o in outcomes if o.worker == worker]
        marks = [(o.status, o.version) for o in seen]
        assert set(marks) <= {old, new}, set(marks) - {old, new}
        switch = marks.index(new) if new in marks else len(marks)
        assert all(mark == old for mark in marks[:switch]), f"worker {worker} flapped"
        assert all(mark == new for mark in marks[switch:]), f"worker {worker} flapped"
    # Across clients: nothing sent after the first new answer came back gets an old one.
    first_new = min(o.done for o in outcomes if (o.status, o.version) == new)
    late = [o for o in outcomes if o.sent > first_new]
    assert all((o.status, o.version) == new for o in late)


def steady_swap(stream: Stream, deploy, new) -> int:
    """Run ``deploy`` mid-stream; returns how many requests were sent from the deploy on."""
    stream.run_until(lambda: len(stream.snapshot()) >= 30)
    deployed_at = time.monotonic()
    deploy()

    def enough() -> bool:
        after = stream.sent_since(deployed_at)
        tail = [(o.status, o.version) for o in stream.snapshot()[-20:]]
        return len(after) >= DURING_SWAP and len(tail) == 20 and set(tail) == {new}

    stream.run_until(enough)
    return len(stream.sent_since(deployed_at))


@pytest.fixture
def served(versions, tmp_path):
    """A models folder with photo at v1, served by a watching uvicorn."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(versions["v1"], models / "photo")
    server = LiveServer(
        models,
        env={"PIX2PIX_RELOAD_DEBOUNCE_MS": DEBOUNCE_MS, "PIX2PIX_RUNTIME": "torch"},
        log=tmp_path / "server.log",
    )
    server.models = models
    yield server
    server.stop()


def version_of(folder: Path) -> str:
    from model.model_folders import model_version

    return model_version(folder)


def stage(source: Path, models: Path, name: str) -> Path:
    """Copy a model into a hidden folder beside the served ones, as a deploy would."""
    staged = models / f".{name}-new"
    shutil.copytree(source, staged)
    return staged


def test_the_version_is_a_content_hash_of_weights_and_spec(versions, tmp_path):
    copy = shutil.copytree(versions["v1"], tmp_path / "copy")
    assert version_of(copy) == version_of(versions["v1"]) != version_of(versions["v2"])
    assert len(version_of(copy)) == 12 and int(version_of(copy), 16) >= 0
    spec = json.loads((copy / "spec.json").read_text())
    (copy / "spec.json").write_text(json.dumps(spec | {"task": "renamed"}))
    assert version_of(copy) != version_of(versions["v1"])


def test_versions_show_in_the_listing_the_header_and_the_metrics(served, versions):
    v1 = version_of(versions["v1"])
    assert listed(served.url)["photo"]["version"] == v1
    response = translate(served.url, "photo")
    assert response.status_code == 200 and response.headers["x-model-version"] == v1
    assert translate(served.url, "nope").status_code == 404
    text = httpx.get(f"{served.url}/metrics").text
    assert f'pix2pix_model_version_info{{model="photo",version="{v1}"}} 1.0' in text
    assert 'pix2pix_model_requests_total{model="photo",status="200"}' in text
    assert 'pix2pix_queue_wait_seconds_bucket{le="0.005",model="photo"}' in text
    assert 'pix2pix_inference_seconds_count{model="photo"}' in text
    # Unknown names never become labels.
    assert 'model="nope"' not in text


def test_a_folder_renamed_over_the_old_one_is_swapped_in_without_a_failed_request(served, versions):
    models = served.models
    v1, v2 = version_of(versions["v1"]), version_of(versions["v2"])
    staged = stage(versions["v2"], models, "photo")

    def deploy() -> None:
        # A directory cannot be renamed over a non-empty one: move the old away first.
        os.rename(models / "photo", models / ".photo-old")
        os.rename(staged, models / "photo")
        shutil.rmtree(models / ".photo-old")

    with Stream(served.url, "photo") as stream:
        during = steady_swap(stream, deploy, (200, v2))
    assert during >= DURING_SWAP
    assert all(o.status == 200 for o in stream.snapshot())
    switched_once(stream, (200, v1), (200, v2))
    assert listed(served.url)["photo"]["version"] == v2
    assert listed(served.url)["photo"]["error"] is None
    text = httpx.get(f"{served.url}/metrics").text
    assert 'pix2pix_model_reloads_total{model="photo",outcome="replaced"} 1.0' in text
    assert f'version="{v1}"' not in text


def test_a_symlink_swap_is_swapped_in_without_a_failed_request(versions, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "photo").symlink_to(versions["v1"], target_is_directory=True)
    server = LiveServer(models, env={"PIX2PIX_RELOAD_DEBOUNCE_MS": DEBOUNCE_MS})
    v1, v2 = version_of(versions["v1"]), version_of(versions["v2"])

    def deploy() -> None:
        (models / ".photo-next").symlink_to(versions["v2"], target_is_directory=True)
        os.replace(models / ".photo-next", models / "photo")

    try:
        with Stream(server.url, "photo") as stream:
            during = steady_swap(stream, deploy, (200, v2))
        assert during >= DURING_SWAP
        assert all(o.status == 200 for o in stream.snapshot())
        switched_once(stream, (200, v1), (200, v2))
    finally:
        server.stop()


def test_a_model_added_to_the_folder_is_served_without_a_restart(served, versions):
    models = served.models
    assert translate(served.url, "sketch").status_code == 404
    with Stream(served.url, "photo", workers=2) as stream:
        os.rename(stage(versions["v2"], models, "sketch"), models / "sketch")
        version = wait_for(lambda: listed(served.url).get("sketch", {}).get("version"))
    assert version == version_of(versions["v2"])
    response = translate(served.url, "sketch")
    assert response.status_code == 200 and response.headers["x-model-version"] == version
    assert {o.status for o in stream.snapshot()} == {200}


@pytest.mark.parametrize("damage", ["corrupt weights", "bad spec"])
def test_a_broken_replacement_is_refused_while_the_old_version_keeps_serving(
    served, versions, damage
):
    models = served.models
    v1, v2 = version_of(versions["v1"]), version_of(versions["v2"])
    staged = stage(versions["v1"], models, "photo")
    if damage == "corrupt weights":
        weights = staged / "generator.safetensors"
        weights.write_bytes(weights.read_bytes()[:100] + b"\0garbage")
        reason = "cannot read weights"
    else:
        spec = json.loads((staged / "spec.json").read_text())
        spec["architecture"]["num_downs"] = 99
        (staged / "spec.json").write_text(json.dumps(spec))
        reason = "num_downs"

    def refused() -> dict | None:
        photo = listed(served.url)["photo"]
        return photo if photo["error"] else None

    with Stream(served.url, "photo", workers=2) as stream:
        stream.run_until(lambda: len(stream.snapshot()) >= 20)
        os.rename(models / "photo", models / ".photo-old")
        os.rename(staged, models / "photo")
        photo = wait_for(refused, what="the refusal")
        sent = len(stream.snapshot())
        stream.run_until(lambda: len(stream.snapshot()) >= sent + 50)
    assert {(o.status, o.version) for o in stream.snapshot()} == {(200, v1)}
    assert photo["status"] == "ready" and photo["version"] == v1
    assert str(models / "photo") in photo["error"] and reason in photo["error"]
    assert f"still serving version {v1}" in photo["error"]
    ready = httpx.get(f"{served.url}/readyz").json()
    assert ready["ready"] is True
    assert ready["models"]["photo"]["ready"] is True
    assert ready["models"]["photo"]["error"] == photo["error"]
    assert 'outcome="failed"' in httpx.get(f"{served.url}/metrics").text

    # A good version deployed after the broken one replaces it and clears the error.
    staged = stage(versions["v2"], models, "photo")
    shutil.rmtree(models / "photo")
    os.rename(staged, models / "photo")
    wait_for(lambda: listed(served.url)["photo"]["version"] == v2, what="v2")
    assert listed(served.url)["photo"]["error"] is None
    assert httpx.get(f"{served.url}/readyz").json()["models"]["photo"]["error"] is None
    assert translate(served.url, "photo").headers["x-model-version"] == v2


def test_a_broken_new_model_is_listed_with_its_error(served, versions):
    models = served.models
    staged = stage(versions["v1"], models, "broken")
    (staged / "generator.safetensors").write_bytes(b"not weights")
    os.rename(staged, models / "broken")
    broken = wait_for(lambda: listed(served.url).get("broken"), what="the broken model")
    assert broken["status"] == "unavailable" and "cannot read weights" in broken["error"]
    assert str(models / "broken") in broken["error"]
    response = translate(served.url, "broken")
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
    assert httpx.get(f"{served.url}/readyz").json()["models"]["broken"]["ready"] is False


def test_a_removed_model_answers_404_once_it_is_gone(served, versions):
    models = served.models
    v1 = version_of(versions["v1"])
    with Stream(served.url, "photo") as stream:
        stream.run_until(lambda: len(stream.snapshot()) >= 30)
        shutil.rmtree(models / "photo")
        stream.run_until(lambda: [o.status for o in stream.snapshot()[-10:]] == [404] * 10)
    switched_once(stream, (200, v1), (404, None))
    assert "photo" not in listed(served.url)
    assert "photo" not in httpx.get(f"{served.url}/readyz").json()["models"]
    text = httpx.get(f"{served.url}/metrics").text
    assert 'pix2pix_model_ready{model="photo"}' not in text
    assert 'pix2pix_model_reloads_total{model="photo",outcome="removed"} 1.0' in text


def test_the_reload_endpoint_applies_changes_and_needs_the_key(versions, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(versions["v1"], models / "photo")
    server = LiveServer(
        models,
        env={
            "PIX2PIX_WATCH_MODELS": "false",
            "PIX2PIX_API_KEY": KEY,
            "PIX2PIX_RELOAD_DEBOUNCE_MS": DEBOUNCE_MS,
        },
    )
    v1, v2 = version_of(versions["v1"]), version_of(versions["v2"])
    key = {"X-API-Key": KEY}
    try:
        staged = stage(versions["v2"], models, "photo")
        shutil.rmtree(models / "photo")
        os.rename(staged, models / "photo")
        shutil.copytree(versions["v1"], models / "extra")
        time.sleep(1.0)  # with the watcher off, nothing changes on its own
        assert listed(server.url)["photo"]["version"] == v1 and "extra" not in listed(server.url)
        assert translate(server.url, "photo", headers=key).headers["x-model-version"] == v1

        refused = httpx.post(f"{server.url}/v1/models/reload", timeout=60)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        wrong = httpx.post(f"{server.url}/v1/models/reload", headers={"X-API-Key": "no"})
        assert wrong.status_code == 401
        reloaded = httpx.post(f"{server.url}/v1/models/reload", headers=key, timeout=60)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json() == {
            "added": ["extra"],
            "replaced": ["photo"],
            "removed": [],
            "failed": [],
            "unchanged": [],
        }
        assert translate(server.url, "photo", headers=key).headers["x-model-version"] == v2
        assert translate(server.url, "extra", headers=key).headers["x-model-version"] == v1

        shutil.rmtree(models / "extra")
        again = httpx.post(
            f"{server.url}/v1/models/reload", headers={"Authorization": f"Bearer {KEY}"}
        ).json()
        assert again["removed"] == ["extra"] and again["unchanged"] == ["photo"]
        assert translate(server.url, "extra", headers=key).status_code == 404
    finally:
        server.stop()


# -- in-flight requests finish on the version they started on ---------------------------------


def run_registry(models: Path, scenario, debounce_ms: int = 50) -> None:
    from app.registry import ModelRegistry
    from app.settings import Settings

    settings = Settings(
        models_dir=str(models),
        device="cpu",
        runtime="torch",
        watch_models=False,
        reload_debounce_ms=debounce_ms,
    )

    async def main() -> None:
        registry = ModelRegistry(settings)
        await registry.start()
        try:
            await scenario(registry)
        finally:
            await registry.stop()

    asyncio.run(main())


def crop() -> np.ndarray:
    return np.zeros((3, 32, 32), dtype=np.float32)


async def stopped(served, timeout: float = 10.0) -> bool:
    """Whether the version's batcher was stopped (it lets go of its runtime) in time."""
    deadline = time.monotonic() + timeout
    while served.ready and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return not served.ready


def test_a_replaced_version_finishes_its_requests_then_stops(versions, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(versions["v1"], models / "photo")

    async def scenario(registry) -> None:
        old = registry.get("photo")
        with old.lease():
            shutil.rmtree(models / "photo")
            shutil.copytree(versions["v2"], models / "photo")
            assert (await registry.reload()).replaced == ["photo"]
            new = registry.get("photo")
            assert new is not old and new.version == version_of(versions["v2"])
            # The old version still runs what was routed to it.
            result = await old.batcher.submit(crop())
            assert result.output.shape == (3, 32, 32) and old.ready
            await asyncio.sleep(0.1)
            assert old.ready
        assert await stopped(old) and new.ready

    run_registry(models, scenario)


def test_a_removed_model_finishes_its_requests_then_stops(versions, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(versions["v1"], models / "photo")

    async def scenario(registry) -> None:
        old = registry.get("photo")
        with old.lease():
            shutil.rmtree(models / "photo")
            assert (await registry.reload()).removed == ["photo"]
            assert registry.get("photo") is None
            assert (await old.batcher.submit(crop())).output.shape == (3, 32, 32)
            await asyncio.sleep(0.1)
            assert old.ready
        assert await stopped(old)

    run_registry(models, scenario)


def test_a_folder_missing_for_a_moment_mid_deploy_is_not_removed(versions, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(versions["v1"], models / "photo")

    async def scenario(registry) -> None:
        os.rename(models / "photo", models / ".photo-old")
        scan = asyncio.create_task(registry.reload())
        await asyncio.sleep(0.1)  # the scan sees the name gone, then waits the quiet time
        os.rename(models / ".photo-old", models / "photo")
        report = await scan
        assert report.removed == [] and report.unchanged == ["photo"]
        assert registry.get("photo").ready

    run_registry(models, scenario, debounce_ms=1000)
