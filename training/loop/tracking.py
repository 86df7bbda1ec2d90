"""Experiment trackers: a run's curves, sample grids and config in TensorBoard, MLflow or W&B.

``train.trackers`` names them. Each gets the same things at the same points of the loop (rank 0
only): the numeric values of every log record as ``train/<key>`` and ``val/<key>`` scalars,
keyed as in ``metrics.jsonl``; each sample grid as the image ``samples``; at the start the
resolved config, as text and as hyperparameters. Everything they receive is already on the
host, so tracking never waits for the device.

A resumed run continues the same curves: it starts again from its checkpoint's step, and the
steps after it that the stopped run had already logged are replaced (TensorBoard) or kept and
not logged twice (MLflow, W&B). MLflow and W&B runs are found again by the ids kept in the run
directory's ``trackers.json``; everything else about them (server, experiment or project,
offline mode) comes from their own environment variables.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from model.atomic_files import write_text_atomic
from training.config import TRACKERS, Config, ConfigError
from training.loop.monitor import COLLAPSED, OK, WINNING

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
IDS_FILENAME = "trackers.json"
SAMPLES_TAG = "samples"
# D_state as a curve: below zero D has collapsed, above it D wins outright.
D_STATE_VALUES = {COLLAPSED: -1.0, OK: 0.0, WINNING: 1.0}
# The module each tracker imports, and how to install it when it is missing: tensorboard is a
# dependency of the project, the others are its extras.
REQUIREMENTS = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "mlflow": (
        "mlflow",
        "install the extra pix2pix[mlflow] (pip install -e '.[mlflow]' in a checkout)",
    ),
    "wandb": (
        "wandb",
        "install the extra pix2pix[wandb] (pip install -e '.[wandb]' in a checkout)",
    ),
}


def record_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A ``metrics.jsonl`` record's numbers as ``<kind>/<key>`` scalars; D_state as a number."""
    scalars = {}
    for key, value in record.items():
        if key == "D_state":
            value = D_STATE_VALUES[value]
        if key in ("kind", "step") or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        scalars[f"{record['kind']}/{key}"] = float(value)
    return scalars


def flat_config(config: Config) -> dict[str, str | int | float | bool]:
    """The config as ``section.key`` hyperparameters; lists as comma-separated text."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in config.to_dict().items():
        for name, item in value.items() if isinstance(value, dict) else [("", value)]:
            flat[f"{key}.{name}" if name else key] = (
                ",".join(item) if isinstance(item, list) else item
            )
    return flat


class Tracker(ABC):
    """One tracking backend; the trainer calls it on rank 0 only, in this order: ``start``,
    then ``scalars`` and ``image`` as the run logs, ``flush`` before each checkpoint, ``close``."""

    @abstractmethod
    def start(self, config: Config, step: int) -> None:
        """Open the run's record: a new one at step 0, the same one again when resumed from
        a checkpoint at ``step``."""

    @abstractmethod
    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    @abstractmethod
    def image(self, step: int, name: str, path: Path) -> None:
        """The PNG at ``path`` (a sample grid already written to the run directory)."""

    @abstractmethod
    def flush(self) -> None:
        """Everything logged so far to its store, so that a run killed after the next
        checkpoint lost nothing before it."""

    @abstractmethod
    def close(self, succeeded: bool) -> None: ...


def use_fast_checksums() -> bool:
    """Let TensorBoard's event writer checksum records with google-crc32c's C code.

    Without TensorFlow, TensorBoard computes each record's CRC32C in pure Python, about 0.2 s a
    megabyte: a 2 MB sample grid holds its writer thread, and with it the interpreter, for 0.4 s.
    The replacement is checked against TensorBoard's own function first; when google-crc32c
    has no C code here, or the writer is not laid out as expected, or the two disagree,
    TensorBoard's own stays. True when the fast one is in use.
    """
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer

    try:
        import google_crc32c
    except ImportError:
        return False
    if google_crc32c.implementation != "c" or not hasattr(record_writer, "masked_crc32c"):
        return False

    def masked_crc32c(data: bytes) -> int:
        # TensorBoard's masking of the CRC: rotated right by 15 bits, plus a constant.
        crc = google_crc32c.value(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    sample = bytes(range(256)) * 3 + b"pix2pix"
    if masked_crc32c(sample) != pywrap_tensorflow.masked_crc32c(sample):
        logger.warning("google-crc32c disagrees with TensorBoard's checksum; using TensorBoard's")
        return False
    record_writer.masked_crc32c = masked_crc32c
    return True


class TensorBoardTracker(Tracker):
    """Event files in ``runs/<name>/tensorboard``: ``tensorboard --logdir runs`` shows every run."""

    def start(self, config: Config, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        use_fast_checksums()
        log_dir = config.run_dir / TENSORBOARD_DIR
        if step == 0:
            # Left by a run stopped before its first checkpoint, which starts afresh.
            shutil.rmtree(log_dir, ignore_errors=True)
        fresh = not any(log_dir.glob("events.out.tfevents.*"))
        # Resumed, the run logs again the steps after its checkpoint; readers drop what the
        # stopped run had logged from the first of them on.
        purge_step = step + 1 if step else None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=20)
        if fresh:
            self._write_config(config)
        logger.info(
            "watch it live: tensorboard --logdir %s (this run: %s)", config.runs_dir, log_dir
        )

    def _write_config(self, config: Config) -> None:
        from torch.utils.tensorboard.summary import hparams

        # Indented four spaces, the TOML shows as code in the text dashboard's Markdown.
        toml = "".join(f"    {line}\n" for line in config.to_toml().splitlines())
        self.writer.add_text("config", toml, 0)
        for summary in hparams(flat_config(config), {"val/val_l1": 0.0}):
            self.writer.file_writer.add_summary(summary, 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, step: int, name: str, path: Path) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        # The PNG's own bytes: the grid is not decoded and encoded again.
        with Image.open(path) as picture:
            (width, height), bands = picture.size, len(picture.getbands())
        encoded = Summary.Image(
            height=height, width=width, colorspace=bands, encoded_image_string=path.read_bytes()
        )
        summary = Summary(value=[Summary.Value(tag=name, image=encoded)])
        self.writer.file_writer.add_summary(summary, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, succeeded: bool) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """A run in the MLflow experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``pix2pix``) of the
    store that ``MLFLOW_TRACKING_URI`` names; the config as parameters and ``config.toml``, the
    run directory as the tag ``run_dir``, the sample grids as ``samples/step_*.png``."""

    def start(self, config: Config, step: int) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self.run_id = read_ids(config.run_dir).get("mlflow") if step else None
        # Each metric's last logged step: a resumed run skips those it had already logged.
        self.logged: dict[str, int] = {}
        if self.run_id is None:
            self._create(config)
        else:
            self.client.update_run(self.run_id, status="RUNNING")
            for key in self.client.get_run(self.run_id).data.metrics:
                history = self.client.get_metric_history(self.run_id, key)
                self.logged[key] = max(metric.step for metric in history)
        logger.info("MLflow run %s at %s", self.run_id, self.client.tracking_uri)

    def _create(self, config: Config) -> None:
        from mlflow.entities import Param

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "pix2pix")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )
        tags = {"run_dir": str(config.run_dir.resolve())}
        run = self.client.create_run(experiment_id, run_name=config.name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(key, str(value)) for key, value in flat_config(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        self.client.log_text(self.run_id, config.to_toml(), "config.toml")
        write_id(config.run_dir, "mlflow", self.run_id)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, value, now, step)
            for key, value in values.items()
            if step > self.logged.get(key, -1)
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def image(self, step: int, name: str, path: Path) -> None:
        # The file itself, as an artifact named by its step (a resumed run's copy of a step
        # replaces the first): MLflow's log_image would encode the grid again, about as long
        # as validation took to write it.
        self.client.log_artifact(self.run_id, str(path), artifact_path=name)

    def flush(self) -> None:
        """Nothing waits: each ``log_batch`` has stored its points when it returns."""

    def close(self, succeeded: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if succeeded else "FAILED")


class WandbTracker(Tracker):
    """A W&B run in ``WANDB_PROJECT`` (default ``pix2pix``), its local files in ``WANDB_DIR``
    (default the run directory); the config, and the run directory as ``run_dir``, as its
    config. ``WANDB_MODE=offline`` keeps it local until ``wandb sync``."""

    def start(self, config: Config, step: int) -> None:
        import wandb

        run_id = read_ids(config.run_dir).get("wandb") if step else None
        if run_id is None:
            run_id = uuid.uuid4().hex[:12]
            write_id(config.run_dir, "wandb", run_id)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "pix2pix"),
            name=config.name,
            id=run_id,
            resume="allow",
            dir=os.environ.get("WANDB_DIR", str(config.run_dir)),
            config={**config.to_dict(), "run_dir": str(config.run_dir.resolve())},
        )
        # W&B takes steps in increasing order only: the steps a resumed run logs again are
        # left as the stopped run logged them.
        self.first_step = self.run.step if step else 0
        logger.info("W&B run %s (%s)", run_id, self.run.settings.mode)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if step >= self.first_step:
            self.run.log(values, step=step)

    def image(self, step: int, name: str, path: Path) -> None:
        import wandb

        if step >= self.first_step:
            self.run.log({name: wandb.Image(str(path))}, step=step)

    def flush(self) -> None:
        """Nothing waits here: each ``log`` has handed its points to W&B's own process."""

    def close(self, succeeded: bool) -> None:
        self.run.finish(exit_code=0 if succeeded else 1)


TRACKER_CLASSES: dict[str, type[Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MLflowTracker,
    "wandb": WandbTracker,
}
assert tuple(TRACKER_CLASSES) == TRACKERS == tuple(REQUIREMENTS)


def build_trackers(names: Sequence[str], active: bool = True) -> list[Tracker]:
    """The trackers ``names`` asks for, checked installed (on every rank: a missing one stops
    the run before it trains) and built where ``active`` (rank 0)."""
    for name in names:
        module, install = REQUIREMENTS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"train.trackers asks for {name}, which is not installed: {install} "
                f"(or leave {name} out of train.trackers)"
            )
    return [TRACKER_CLASSES[name]() for name in names] if active else []


def read_ids(run_dir: Path) -> dict[str, str]:
    """The MLflow and W&B run ids a run directory keeps, to continue the same runs."""
    path = run_dir / IDS_FILENAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_id(run_dir: Path, tracker: str, run_id: str) -> None:
    ids = read_ids(run_dir) | {tracker: run_id}
    write_text_atomic(run_dir / IDS_FILENAME, json.dumps(ids, indent=2) + "\n")
