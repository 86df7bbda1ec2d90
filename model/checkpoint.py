"""Checkpoint I/O: PyTorch weights written atomically (safetensors) and loaded safely.

A training checkpoint is a model folder (see ``model.model_folders``) with extra files beside
it, so any checkpoint can be served or exported as it is. The ``latest`` pointer is replaced
atomically, so a killed run never leaves a corrupt "latest".
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from model.atomic_files import make_readable, replace_folder, write_text_atomic
from model.errors import CheckpointError
from model.model_folders import (
    CHECKPOINTS_DIR,
    GENERATOR_WEIGHTS,
    LATEST_POINTER,
    latest_checkpoint,
    load_spec,
    resolve_model_folder,
)
from model.networks import build_generator, use_sample_statistics
from model.spec import SPEC_FILENAME, GeneratorSpec
from model.weights import save_tensors_atomic, save_weights, state_dict_for_saving

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINTS_DIR",
    "GENERATOR_WEIGHTS",
    "CheckpointError",
    "latest_checkpoint",
    "load_generator",
    "load_spec",
    "resolve_model_folder",
    "save_tensors_atomic",
    "state_dict_for_saving",
]


def save_model_folder(
    folder: str | Path, generator: nn.Module, spec: GeneratorSpec, dtype: torch.dtype | None = None
) -> Path:
    """Write ``generator.safetensors`` and ``spec.json`` into ``folder``."""
    folder = Path(folder)  # made by the first write, as every atomic write makes its folder
    save_weights(generator, folder / GENERATOR_WEIGHTS, dtype)
    spec.save(folder / SPEC_FILENAME)
    return folder


def publish_latest(checkpoints: Path, name: str) -> None:
    write_text_atomic(checkpoints / LATEST_POINTER, name + "\n")


def write_checkpoint_folder(checkpoints: Path, name: str, writer) -> Path:
    """Build a checkpoint in a hidden temp folder with ``writer(folder)``, then rename it in.

    A folder of the same name is replaced only after the new one is complete. Temp folders and
    files that a killed run left behind (never complete, never named by ``latest``) are removed
    first, so repeated kills do not fill the disk.
    """
    checkpoints.mkdir(parents=True, exist_ok=True)
    for leftover in checkpoints.glob(".*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=checkpoints))
    try:
        writer(temp)
        make_readable(temp)
        replace_folder(temp, checkpoints / name)
        return checkpoints / name
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def load_generator(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, GeneratorSpec]:
    """Rebuild the generator from a model folder, checkpoint or run directory.

    Returns it in fp32 on ``device``, frozen, in the mode the spec asks for at inference.
    """
    folder = resolve_model_folder(path)
    spec = load_spec(folder)
    weights = folder / GENERATOR_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {GENERATOR_WEIGHTS} (PyTorch weights) here")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights}: cannot read weights ({error})") from error
    generator = build_generator(spec.architecture, spec.in_channels, spec.out_channels)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        generator.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{weights}: weights do not match {SPEC_FILENAME}: {error}"
        ) from error
    generator.to(device)
    apply_inference_mode(generator, spec.inference_mode)
    generator.requires_grad_(False)
    return generator, spec


def apply_inference_mode(generator: nn.Module, mode: str) -> None:
    """Dropout on only in ``train`` mode; batch norm at running statistics in ``eval`` mode and
    at each image's own statistics otherwise."""
    generator.train(mode == "train")
    use_sample_statistics(generator, mode != "eval")


def apply_spec(generator: nn.Module, spec: GeneratorSpec) -> None:
    """Run a rebuilt generator as ``spec`` says at inference: its inference mode and, for the
    ab_bins head, its decoding temperature (both may differ from the weights' own spec)."""
    apply_inference_mode(generator, spec.inference_mode)
    if spec.architecture.head == "ab_bins":
        generator.head.temperature = spec.architecture.temperature
