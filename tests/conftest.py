"""Shared fixtures: tiny datasets on disk and tiny configs, so the suite runs fast on 2 cores."""

from __future__ import annotations

import functools
import json
import operator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import Config, load_config, set_value

torch.set_num_threads(2)

TINY_OVERRIDES = {
    "generator.num_downs": "5",
    "generator.base_width": "8",
    "discriminator.base_width": "8",
    "data.load_size": "36",
    "data.crop_size": "32",
    "data.num_workers": "0",
    "train.batch_size": "2",
    "train.log_every": "5",
    "train.sample_every": "1000",
    "train.save_every": "1000",
}


def tiny_config(root: Path, runs: Path, name: str = "tiny", **overrides: str) -> Config:
    """A config for a 32 px, 8-wide model on the dataset at ``root``."""
    config = load_config(None, {"data.root": str(root), "runs_dir": str(runs), "name": name})
    for key, value in {**TINY_OVERRIDES, **overrides}.items():
        set_value(config, key, value)
    return config.validate()


# A run of two epochs, each step logged and a checkpoint every 2 steps: what the tests that
# resume a run in the middle (``train_with_a_break``) and read every step's stats train.
LOGGED_SHORT_RUN = {
    "train.log_every": "1",
    "train.save_every": "2",
    "train.epochs": "1",
    "train.epochs_decay": "1",
}


def train_with_a_break(root: Path, runs: Path, stop: int, **overrides: str) -> Path:
    """Train the run "split" to step ``stop``, resume it from its checkpoint in a new Trainer to
    the end; returns its last checkpoint folder (to compare with a run trained straight)."""
    from model.checkpoint import latest_checkpoint
    from training.loop.trainer import Trainer

    first = tiny_config(root, runs, name="split", **overrides, **{"train.max_steps": str(stop)})
    Trainer(first, progress=False).train()
    resumed = Trainer(
        tiny_config(root, runs, name="split", **overrides), resume=True, progress=False
    )
    assert resumed.step == stop
    resumed.train()
    return latest_checkpoint(first.run_dir / "checkpoints")


PALETTE = [
    {"id": 0, "name": "sky", "color": [90, 150, 230]},
    {"id": 1, "name": "grass", "color": [60, 170, 60]},
    {"id": 2, "name": "rock", "color": [120, 110, 100]},
]


def palette_image(ids: np.ndarray) -> Image.Image:
    image = Image.fromarray(ids.astype(np.uint8), "P")
    colors = functools.reduce(operator.iadd, (entry["color"] for entry in PALETTE), [])
    image.putpalette(colors + [0] * (768 - len(colors)))  # full palette: no bit-depth packing
    return image


def write_label_dataset(root: Path, counts=(6, 2, 2), size: int = 40, seed: int = 0) -> Path:
    """A folders-layout label dataset: blocky label maps and noisy photos colored by class."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "palette.json").write_text(json.dumps(PALETTE))
    colors = np.array([entry["color"] for entry in PALETTE], dtype=np.int16)
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        (root / split / "A").mkdir(parents=True, exist_ok=True)
        (root / split / "B").mkdir(parents=True, exist_ok=True)
        for index in range(count):
            ids = np.zeros((size, size), dtype=np.uint8)
            horizon = int(rng.integers(size // 4, 3 * size // 4))
            ids[horizon:] = 1
            x, y = rng.integers(0, size - 10, 2)
            ids[y : y + 10, x : x + 10] = 2
            photo = colors[ids] + rng.integers(-12, 12, (size, size, 3))
            palette_image(ids).save(root / split / "A" / f"{index:04d}.png")
            Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(
                root / split / "B" / f"{index:04d}.png"
            )
    return root


@pytest.fixture
def label_dataset(tmp_path: Path) -> Path:
    return write_label_dataset(tmp_path / "labels")


@pytest.fixture(scope="session")
def synth_labels(tmp_path_factory) -> Path:
    """The built-in synthetic landscapes at 64 px (shared, read-only)."""
    from training.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth") / "labels"
    write_synthetic_dataset(root, n=40, size=64, seed=3, task="labels")
    return root


@pytest.fixture(scope="session")
def synth_color(tmp_path_factory) -> Path:
    from training.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth") / "color"
    write_synthetic_dataset(root, n=12, size=64, seed=4, task="color")
    return root


# -- served models and a real server ------------------------------------------------------------


# What the tiny label-map model says it was trained on (config `description`, spec extra).
DESCRIPTION = "Untrained: three levels of width 4, for tests."


def write_tiny_models(root: Path) -> Path:
    """Untrained 3-level generators: a label-map model, a photo model and a Lab colorizer."""
    from model.checkpoint import save_model_folder
    from model.networks import build_generator, init_weights
    from model.spec import GeneratorArchitecture, GeneratorSpec, LabelClass

    architecture = GeneratorArchitecture(num_downs=3, base_width=4, norm="batch", dropout=True)
    palette = tuple(
        LabelClass(entry["id"], entry["name"], tuple(entry["color"])) for entry in PALETTE
    )
    specs = {
        "labels": GeneratorSpec(
            architecture, 3, 3, input_kind="label_map", palette=palette, one_hot=True
        ),
        "photo": GeneratorSpec(architecture, 3, 3),
        "gray": GeneratorSpec(architecture, 1, 2, input_kind="grayscale", color_space="lab"),
    }
    torch.manual_seed(0)
    for name, spec in specs.items():
        about = {"extra": {"description": DESCRIPTION}} if name == "labels" else {}
        spec = GeneratorSpec.from_dict(
            spec.to_dict() | {"train_size": 32, "pad_multiple": 8, "task": name} | about
        )
        generator = build_generator(spec.architecture, spec.in_channels, spec.out_channels)
        init_weights(generator)
        save_model_folder(root / name, generator.eval(), spec)
    return root


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A real uvicorn process serving the app on 127.0.0.1."""

    def __init__(self, models: Path, env: dict[str, str] | None = None, log: Path | None = None):
        import os
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "PIX2PIX_MODELS_DIR": str(models), **(env or {})}
        self.log_path = log
        self.log = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "info",
            ],
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not start in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except Exception:
            self.process.kill()
        if self.log_path:
            self.log.close()


@pytest.fixture(scope="session")
def live_server(tiny_models, tmp_path_factory):
    """Base URL of a real uvicorn serving the tiny models (batching on, small limits)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    server = LiveServer(
        tiny_models,
        env={"PIX2PIX_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024), "PIX2PIX_MAX_WAIT_MS": "30"},
        log=log,
    )
    server.log_file = log
    yield server.url
    server.stop()
