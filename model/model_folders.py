"""Model folders on disk: which files a generator travels as, found without importing torch.

A *model folder* holds ``spec.json`` and at least one weights file, one per export format
(``model.export_formats``): ``generator.safetensors`` (PyTorch), ``generator.onnx`` (ONNX
Runtime) or ``generator.torchscript.pt`` (TorchScript).
A run directory points at its newest checkpoint (itself a model folder) through
``checkpoints/latest``, a one-line file replaced atomically.
A model folder may also ship example inputs in ``examples/``, listed in its spec (see
``model.example_inputs``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from model.errors import CheckpointError, SpecError
from model.export_formats import EXPORT_FORMATS, SAFETENSORS
from model.spec import SPEC_FILENAME, GeneratorSpec

GENERATOR_WEIGHTS = SAFETENSORS.weight_file  # what checkpoints hold and PyTorch loads
WEIGHT_FILES = tuple(entry.weight_file for entry in EXPORT_FORMATS)
CHECKPOINTS_DIR = "checkpoints"
LATEST_POINTER = "latest"
EXAMPLES_DIR = "examples"
VERSION_LENGTH = 12  # hex digits: 48 bits, ample to tell apart the versions of one model


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


def model_files(folder: Path) -> list[Path]:
    """The files that make a model folder what it is: its spec, every weights file present and
    the files in its ``examples/`` folder (so a new example is a new version to serve)."""
    files = [folder / name for name in (SPEC_FILENAME, *WEIGHT_FILES) if (folder / name).is_file()]
    examples = folder / EXAMPLES_DIR
    if examples.is_dir():
        files += sorted(path for path in examples.iterdir() if path.is_file())
    return files


def model_version(path: str | Path) -> str:
    """A short hex content hash of the files (``model_files``) of a model folder or run directory.

    Two folders with the same files have the same version wherever they live, so a copy
    deployed again is recognised as unchanged.
    """
    folder = resolve_model_folder(path)
    digest = hashlib.sha256()
    for file in model_files(folder):
        with open(file, "rb") as stream:
            # Name and length first, so no two different sets of files hash alike.
            name = file.relative_to(folder).as_posix()
            digest.update(f"{name}\0{os.fstat(stream.fileno()).st_size}\0".encode())
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:VERSION_LENGTH]
