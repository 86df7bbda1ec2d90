"""Model folders on disk: which files a generator travels as, found without importing torch.

A *model folder* holds ``spec.json`` and at least one weights file: ``generator.safetensors``
(PyTorch), ``generator.onnx`` (ONNX Runtime) or ``generator.torchscript.pt`` (TorchScript).
A run directory points at its newest checkpoint (itself a model folder) through
``checkpoints/latest``, a one-line file replaced atomically.
"""

from __future__ import annotations

from pathlib import Path

from model.errors import CheckpointError, SpecError
from model.spec import SPEC_FILENAME, GeneratorSpec

GENERATOR_WEIGHTS = "generator.safetensors"
GENERATOR_ONNX = "generator.onnx"
GENERATOR_TORCHSCRIPT = "generator.torchscript.pt"
WEIGHT_FILES = (GENERATOR_WEIGHTS, GENERATOR_ONNX, GENERATOR_TORCHSCRIPT)
CHECKPOINTS_DIR = "checkpoints"
LATEST_POINTER = "latest"


def has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def latest_checkpoint(checkpoints: Path) -> Path:
    pointer = checkpoints / LATEST_POINTER
    name = pointer.read_text(encoding="utf-8").strip()
    folder = checkpoints / name
    if not name or "/" in name or not (folder / GENERATOR_WEIGHTS).is_file():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a complete checkpoint")
    return folder


def resolve_model_folder(path: str | Path) -> Path:
    """A model folder, a checkpoint folder, or a run directory -> the folder holding weights."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if has_weights(path):
        return path
    pointer = path / CHECKPOINTS_DIR / LATEST_POINTER
    if pointer.is_file():
        return latest_checkpoint(path / CHECKPOINTS_DIR)
    if (path / CHECKPOINTS_DIR).is_dir():
        raise CheckpointError(f"{path}: the run has no checkpoint yet ({pointer} is missing)")
    raise CheckpointError(
        f"{path}: not a model folder ({SPEC_FILENAME} + one of {', '.join(WEIGHT_FILES)}) "
        "or a run directory"
    )


def load_spec(path: str | Path) -> GeneratorSpec:
    folder = resolve_model_folder(path)
    try:
        return GeneratorSpec.load(folder / SPEC_FILENAME)
    except SpecError as error:
        raise CheckpointError(str(error)) from error
