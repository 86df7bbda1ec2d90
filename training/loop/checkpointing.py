"""A run's checkpoints: the servable model folder plus all that resumes training exactly.

A checkpoint folder holds ``generator.safetensors`` + ``spec.json`` (a model folder that export,
evaluate and serve read), each discriminator's weights under its name
(``discriminator.safetensors``, ``semantic_discriminator.safetensors``), with an EMA the raw
generator in ``generator_raw.safetensors``, and ``training_state.pt``: the step, optimizers,
schedulers, scalers, every rank's RNG, the pool's RNG and the monitor. Folders are written
whole and published atomically (``model.checkpoint``); ``step_*`` folders older than the newest
are removed, ``epoch_*`` ones kept.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from model.checkpoint import (
    GENERATOR_WEIGHTS,
    CheckpointError,
    publish_latest,
    save_tensors_atomic,
    state_dict_for_saving,
    write_checkpoint_folder,
)
from model.spec import SPEC_FILENAME, GeneratorSpec
from training.errors import TrainingError
from training.loop.distributed import DistributedContext
from training.loop.networks import DISCRIMINATOR_OPTIONS

logger = logging.getLogger(__name__)

RAW_GENERATOR_WEIGHTS = "generator_raw.safetensors"  # with train.ema_decay only
TRAINING_STATE = "training_state.pt"


def weights_file(network: str) -> str:
    """The file a discriminator's weights take in a checkpoint, by its name."""
    return f"{network}.safetensors"


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, read back."""

    generator: dict[str, torch.Tensor]  # the servable weights (the average, if kept)
    raw_generator: dict[str, torch.Tensor] | None  # the weights training continues from
    discriminators: dict[str, dict[str, torch.Tensor]]
    state: dict


def write(
    checkpoints: Path,
    name: str,
    step: int,
    servable: nn.Module,
    raw: nn.Module | None,
    discriminators: dict[str, nn.Module],
    spec: GeneratorSpec,
    state: dict,
) -> Path:
    """Write checkpoint ``name`` whole, point ``latest`` at it, drop older ``step_*`` ones."""

    def write_folder(folder: Path) -> None:
        save_tensors_atomic(state_dict_for_saving(servable), folder / GENERATOR_WEIGHTS)
        if raw is not None:
            save_tensors_atomic(state_dict_for_saving(raw), folder / RAW_GENERATOR_WEIGHTS)
        for network, module in discriminators.items():
            save_tensors_atomic(state_dict_for_saving(module), folder / weights_file(network))
        spec.save(folder / SPEC_FILENAME)
        torch.save(state, folder / TRAINING_STATE)

    try:
        folder = write_checkpoint_folder(checkpoints, name, write_folder)
        publish_latest(checkpoints, name)
    except OSError as error:
        pointer = checkpoints / "latest"
        kept = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
        raise CheckpointError(
            f"{checkpoints / name}: cannot write the checkpoint ({error}); stopped at step "
            f"{step}. "
            + (f"The previous checkpoint {kept} is kept." if kept else "No checkpoint yet.")
        ) from error
    for old in checkpoints.glob("step_*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    logger.debug("checkpoint %s written", folder)
    return folder


def read(folder: Path, discriminators: tuple[str, ...], spec: GeneratorSpec) -> Checkpoint:
    """Read a checkpoint for a run that trains ``discriminators`` with ``spec``; refuses one
    written by another config, and names the file it cannot read."""
    saved = {path.name.removesuffix(".safetensors") for path in folder.glob("*.safetensors")}
    for name in sorted(saved.symmetric_difference(discriminators) - {"generator", "generator_raw"}):
        option = DISCRIMINATOR_OPTIONS.get(name, "the config")
        raise TrainingError(
            f"{folder}: the checkpoint was trained {'with' if name in saved else 'without'} a "
            f"{name.replace('_', ' ')} ({option}); resume with the run's own config.toml"
        )
    try:
        generator = load_file(str(folder / GENERATOR_WEIGHTS))
        raw_path = folder / RAW_GENERATOR_WEIGHTS
        raw = load_file(str(raw_path)) if raw_path.is_file() else None
        weights = {name: load_file(str(folder / weights_file(name))) for name in discriminators}
        state = torch.load(folder / TRAINING_STATE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, SafetensorError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{folder}: cannot read checkpoint ({error})") from error
    # The palette tolerance only says how served label maps are read: a checkpoint whose spec
    # does not record it resumes under any.
    saved_spec = GeneratorSpec.load(folder / SPEC_FILENAME)
    saved_spec = dataclasses.replace(saved_spec, palette_tolerance=spec.palette_tolerance)
    if saved_spec.to_dict() != spec.to_dict():
        raise TrainingError(
            f"{folder}: the checkpoint's spec differs from this config's; resume with the "
            "run's own config.toml"
        )
    return Checkpoint(generator, raw, weights, state)


def load_generators(
    folder: Path, checkpoint: Checkpoint, generator: nn.Module, average: nn.Module | None
) -> None:
    """The raw weights into ``generator`` and the servable ones into the ``average``.

    A checkpoint with an average holds the raw weights beside it; one without has only the raw
    weights, from which a newly switched-on average starts.
    """
    servable, raw = checkpoint.generator, checkpoint.raw_generator
    generator.load_state_dict(servable if raw is None else raw)
    if average is not None:
        average.load_state_dict(servable)
        if raw is None:
            logger.warning("%s has no moving average; it starts from these weights", folder)
    elif raw is not None:
        logger.warning("train.ema_decay is 0: the moving average in %s is dropped", folder)


def training_state(step: int, resumable: dict, pool_random, device: torch.device) -> dict:
    """What resumes the loop exactly: the step, the ``state_dict`` of each of ``resumable``
    (optimizers, schedulers, scalers, the monitor) by its name, this process's RNG and the
    history pool's."""
    state = {"step": step, **{name: part.state_dict() for name, part in resumable.items()}}
    state["rng"] = rng_state(device)
    state["pool_rng"] = pool_random.get_state() if pool_random is not None else None
    return state


def restore_training_state(state: dict, resumable: dict, pool_random) -> None:
    """Load each of ``resumable`` from ``state`` (as :func:`training_state` wrote it)."""
    for name, part in resumable.items():
        # A checkpoint with one scaler for both networks holds it as "scaler"; one written
        # without a monitor leaves it fresh.
        saved = "scaler" if name.startswith("scaler") and name not in state else name
        if saved != "monitor" or saved in state:
            part.load_state_dict(state[saved])
    if state.get("pool_rng") is not None and pool_random is not None:
        pool_random.set_state(state["pool_rng"])


def rng_state(device: torch.device) -> dict:
    """This process's RNG (its dropout stream)."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(state: dict, dist: DistributedContext, device: torch.device) -> None:
    """Continue this rank's RNG from a checkpoint's; another world size cannot continue exactly."""
    rank, world_size = dist.rank, dist.world_size
    rng = state["rng"]
    ranks = state.get("rng_ranks") or [rng]
    if len(ranks) == world_size:
        rng = ranks[rank]
    else:
        logger.warning(
            "the checkpoint was written by %d processes, this run has %d: the dropout "
            "streams do not continue exactly",
            len(ranks),
            world_size,
        )
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
