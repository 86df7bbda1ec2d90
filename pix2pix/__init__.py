"""pix2pix from Python: load a model and translate images, or train, export and evaluate.

    import pix2pix

    translator = pix2pix.load("models/gray2color")  # a model folder, run directory or checkpoint
    translator("photo.jpg").save("colorized.png")  # a path in, a PIL image out
    outputs = translator([image, array])  # a list in, a list out, run as batches

A translator takes a PIL image (out: a PIL image), a uint8 NumPy array of shape (H, W),
(H, W, 1), (H, W, 3) or (H, W, 4), as ``np.asarray`` gives for an image (out: a uint8
(H, W, 3) RGB array), an image file's path (out: a PIL image) or a list of them (out: a list).
The output has the input's size; large images run as tiles. ``translator.spec`` says what
the model expects: ``input_kind`` (photo, grayscale or label_map), ``palette`` (class id,
name and color, for label maps), ``train_size``. Label maps are (H, W) class ids or an RGB
image in the palette's colors.

``train``, ``export`` and ``evaluate`` do what the ``pix2pix`` verbs of the same names do and
raise the errors the command line reports: ``ConfigError``, ``DataError``, ``TrainingError``,
``CheckpointError``, ``SpecError`` and ``InputError`` (all importable from here). Importing
this package imports no torch; a model that runs on ONNX Runtime never imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pix2pix.api import evaluate, export, load, train

if TYPE_CHECKING:
    from model.errors import CheckpointError, InputError, SpecError
    from model.spec import GeneratorSpec
    from model.translate import Translator
    from training.config import Config, ConfigError
    from training.errors import DataError, TrainingError

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "GeneratorSpec",
    "InputError",
    "SpecError",
    "TrainingError",
    "Translator",
    "evaluate",
    "export",
    "load",
    "train",
]

# Types and errors are found on first use, so that importing pix2pix stays cheap.
_LAZY = {
    "CheckpointError": "model.errors",
    "InputError": "model.errors",
    "SpecError": "model.errors",
    "GeneratorSpec": "model.spec",
    "Translator": "model.translate",
    "Config": "training.config",
    "ConfigError": "training.config",
    "DataError": "training.errors",
    "TrainingError": "training.errors",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pix2pix' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
