"""The bundled demo models (models/): small, self-describing, no grid on painted input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pix2pix
from training.evaluation.metrics import checkerboard_contrast

MODELS = Path(__file__).resolve().parent.parent / "models"
TRAINED_ON_REAL_PHOTOS = ("facades", "gray2color")


@pytest.mark.parametrize("name", ["labels2photo", *TRAINED_ON_REAL_PHOTOS])
def test_demo_model_is_small_and_translates_at_twice_its_training_size(name):
    folder = MODELS / name
    assert sum(path.stat().st_size for path in folder.iterdir()) < 10_000_000
    translator = pix2pix.load(folder)
    assert translator.runtime.name == "onnx"
    size = 2 * translator.spec.train_size
    if translator.spec.input_kind == "label_map":
        example = np.zeros((size, size), np.uint8)
    else:
        example = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    assert np.asarray(translator(example)).shape == (size, size, 3)
    if name in TRAINED_ON_REAL_PHOTOS:  # the web page says what each was trained on
        assert "Trained on" in translator.spec.extra["description"]


def painted_facade(spec) -> np.ndarray:
    """A 256 px facade painted in flat class regions, as on the web page."""
    ids = {label.name: label.id for label in spec.palette}
    painted = np.full((256, 256), ids["background"], np.uint8)
    painted[40:, 20:236] = ids["facade"]
    painted[40:52, 20:236] = ids["cornice"]
    for row in range(4):
        for column in range(5):
            y, x = 70 + 42 * row, 34 + 42 * column
            painted[y : y + 26, x : x + 16] = ids["window"]
            painted[y + 26 : y + 29, x - 2 : x + 18] = ids["sill"]
    painted[214:220, 20:236] = ids["molding"]
    painted[220:, 110:146] = ids["door"]
    return painted


def test_painted_facade_comes_back_without_a_grid():
    translator = pix2pix.load(MODELS / "facades")
    photo = np.asarray(translator(painted_facade(translator.spec)), dtype=np.float32) / 255
    contrast = checkerboard_contrast(torch.from_numpy(photo).permute(2, 0, 1)[None]).item()
    # Real facade photos score about 2 dB; a grid at the edge of visibility adds 7 to 18 dB
    # (the int8 export of this model scored 9.2 dB and showed a dotted sky).
    assert contrast < 5.0, f"checkerboard contrast {contrast:.1f} dB"
    assert photo.std() > 0.1  # a picture, not a flat field


def painted_landscape(spec) -> np.ndarray:
    """A 256 px landscape painted in flat class regions: sky, a cloud, mountains, a lake, grass,
    trees and a road, as on the web page."""
    ids = {label.name: label.id for label in spec.palette}
    painted = np.full((256, 256), ids["grass"], np.uint8)
    painted[:110] = ids["sky"]
    painted[20:45, 40:120] = ids["cloud"]
    columns = np.arange(256)
    ridge = 80 + (20 * np.abs(((columns % 64) - 32) / 32)).astype(int)
    for column, top in zip(columns, ridge, strict=True):
        painted[top:110, column] = ids["mountain"]
    painted[110:140] = ids["water"]
    painted[140:146] = ids["sand"]
    for x in (30, 70, 190):
        painted[160:215, x : x + 24] = ids["tree"]
    painted[150:, 120:150] = ids["road"]
    return painted


def test_painted_landscape_comes_back_without_a_grid():
    translator = pix2pix.load(MODELS / "labels2photo")
    photo = np.asarray(translator(painted_landscape(translator.spec)), dtype=np.float32) / 255
    contrast = checkerboard_contrast(torch.from_numpy(photo).permute(2, 0, 1)[None]).item()
    # The resize decoder's painted scenes score 3 to 6 dB; transposed convolutions' column grid
    # scored 11 to 20 dB on the same scenes.
    assert contrast < 8.0, f"checkerboard contrast {contrast:.1f} dB"
    assert photo.std() > 0.1
