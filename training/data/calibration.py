"""Network inputs for int8 calibration, read from a dataset or a folder of input images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from model.errors import CheckpointError, InputError
from model.model_folders import load_spec
from model.plan import fit_to_training_size
from model.processing import encode_input, list_images, prepare_input
from training.config import load_config
from training.data.datasets import PairedDataset, data_config_for


def calibration_inputs(
    source: str | Path, root: str | Path | None, count: int, purpose: str = "--int8"
) -> np.ndarray:
    """The first ``count`` inputs of a dataset's train (else val, test) split, or of a folder of
    input images, prepared by the spec of the model at ``source``; by default the dataset the
    run at ``source`` was trained on. ``purpose`` names the option in errors."""
    spec = load_spec(source)
    run_config = Path(source) / "config.toml"
    # A run's label colors are read as it read them in training (JPEG-ed maps need a tolerance);
    # a model folder's as its spec says.
    tolerance: int | None = None
    if run_config.is_file():
        trained_on = load_config(run_config).data
        tolerance = trained_on.palette_tolerance
        root = trained_on.root if root is None else root
    if root is None:
        raise CheckpointError(
            f"{purpose} needs calibration images: --calibration DIR (a dataset root or a folder "
            "of input images)"
        )
    root = Path(root)
    splits = [split for split in ("train", "val", "test") if (root / split).is_dir()]
    if splits:
        config = data_config_for(spec, root, splits[0], tolerance)
        dataset = PairedDataset(config, splits[0], spec, False)
        items = [dataset[index]["A"].numpy() for index in range(min(count, len(dataset)))]
        return np.stack(items) if items else np.zeros((0, spec.in_channels, 1, 1), np.float32)
    if not root.is_dir():
        raise CheckpointError(f"{root}: calibration folder not found")
    arrays = []
    for path in list_images(root)[:count]:
        try:
            with Image.open(path) as image:
                array = encode_input(prepare_input(image, spec, tolerance), spec)
        except (OSError, InputError) as error:
            raise CheckpointError(f"{path}: cannot use it for calibration ({error})") from error
        arrays.append(fit_to_training_size(array[None], spec)[0])
    if not arrays:
        raise CheckpointError(f"{root}: no images to calibrate on")
    return np.stack(arrays)
