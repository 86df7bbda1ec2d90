"""Checkpoint I/O: model folders (weights + spec) written atomically and loaded safely.

A *model folder* holds ``spec.json`` and ``generator.safetensors``. A training checkpoint is a
model folder with extra files beside it, so any checkpoint can be served or exported as it is.
A run directory points at its newest checkpoint through ``checkpoints/latest``, a one-line file
replaced atomically, so a killed run never leaves a corrupt "latest".
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from model.errors import CheckpointError
from model.networks import build_generator
from model.spec import SPEC_FILENAME, GeneratorSpec, SpecError, write_text_atomic

logger = logging.getLogger(__name__)

GENERATOR_WEIGHTS = "generator.safetensors"
CHECKPOINTS_DIR = "checkpoints"
LATEST_POINTER = "latest"


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata=None) -> None:
    """safetensors file via temp file + fsync + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        save_file(contiguous, temp_name, metadata=metadata)
        with open(temp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def state_dict_for_saving(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict without the prefixes of DDP or torch.compile wrappers."""
    module = getattr(module, "module", module)
    module = getattr(module, "_orig_mod", module)
    return dict(module.state_dict())


def save_model_folder(
    folder: str | Path, generator: nn.Module, spec: GeneratorSpec, dtype: torch.dtype | None = None
) -> Path:
    """Write ``generator.safetensors`` and ``spec.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = state_dict_for_saving(generator)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_tensors_atomic(tensors, folder / GENERATOR_WEIGHTS)
    spec.save(folder / SPEC_FILENAME)
    return folder


def resolve_model_folder(path: str | Path) -> Path:
    """A model folder, a checkpoint folder, or a run directory -> the folder holding weights."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if (path / GENERATOR_WEIGHTS).is_file():
        return path
    pointer = path / CHECKPOINTS_DIR / LATEST_POINTER
    if pointer.is_file():
        return latest_checkpoint(path / CHECKPOINTS_DIR)
    if (path / CHECKPOINTS_DIR).is_dir():
        raise CheckpointError(f"{path}: the run has no checkpoint yet ({pointer} is missing)")
    raise CheckpointError(
        f"{path}: not a model folder ({GENERATOR_WEIGHTS} + {SPEC_FILENAME}) or a run directory"
    )


def latest_checkpoint(checkpoints: Path) -> Path:
    pointer = checkpoints / LATEST_POINTER
    name = pointer.read_text(encoding="utf-8").strip()
    folder = checkpoints / name
    if not name or "/" in name or not (folder / GENERATOR_WEIGHTS).is_file():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a complete checkpoint")
    return folder


def publish_latest(checkpoints: Path, name: str) -> None:
    write_text_atomic(checkpoints / LATEST_POINTER, name + "\n")


def write_checkpoint_folder(checkpoints: Path, name: str, writer) -> Path:
    """Build a checkpoint in a hidden temp folder with ``writer(folder)``, then rename it in.

    A folder of the same name is replaced only after the new one is complete.
    """
    checkpoints.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=checkpoints))
    try:
        writer(temp)
        final = checkpoints / name
        if final.exists():
            stale = final.with_name(f".{name}.old")
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            os.replace(temp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(temp, final)
        return final
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def load_spec(path: str | Path) -> GeneratorSpec:
    folder = resolve_model_folder(path)
    try:
        return GeneratorSpec.load(folder / SPEC_FILENAME)
    except SpecError as error:
        raise CheckpointError(str(error)) from error


def load_generator(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, GeneratorSpec]:
    """Rebuild the generator from a model folder, checkpoint or run directory.

    Returns it in fp32 on ``device``, in the mode the spec asks for at inference.
    """
    folder = resolve_model_folder(path)
    spec = load_spec(folder)
    weights = folder / GENERATOR_WEIGHTS
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
    set_inference_mode(generator, spec)
    return generator, spec


def set_inference_mode(generator: nn.Module, spec: GeneratorSpec) -> None:
    """Eval mode, or the paper's test-time behaviour (dropout and batch statistics) if asked."""
    generator.train(spec.inference_mode == "train")
    generator.requires_grad_(False)
