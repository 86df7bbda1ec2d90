"""Apply a generator to images of any size, with the spec's pre- and post-processing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from model.processing import (
    decode_output,
    encode_input,
    pad_to_multiple,
    prepare_input,
    resize_batch,
)
from model.spec import GeneratorSpec
from model.tiling import translate_tiled

RESIZE_MODES = ("pad", "fit")


def fit_to_training_size(batch: np.ndarray, spec: GeneratorSpec) -> np.ndarray:
    """Resize (N, C, H, W) inputs to the training size (label maps nearest-neighbour)."""
    size = (spec.train_size, spec.train_size)
    return resize_batch(batch, size, nearest=spec.input_kind == "label_map")


def restore_size(output: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (N, C, h, w) outputs back to ``size``."""
    return np.clip(resize_batch(output, size), -1.0, 1.0)


class Translator:
    """A runtime plus its spec: image in, translated image out, same size.

    ``runtime`` maps (N, C, H, W) float32 with sides divisible by the spec's multiple to
    (N, C_out, H, W) float32 (see ``model.runtime``).
    """

    def __init__(
        self,
        runtime: Callable[[np.ndarray], np.ndarray],
        spec: GeneratorSpec,
        tile_size: int = 0,
        tile_overlap: int = 64,
    ):
        self.runtime = runtime
        self.spec = spec
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap

    @classmethod
    def load(
        cls, path: str | Path, runtime: str = "auto", device: str = "auto", **options
    ) -> Translator:
        from model.runtime import load_model

        loaded = load_model(path, runtime=runtime, device=device)
        return cls(loaded.runtime, loaded.spec, **options)

    def run_batch(self, batch: np.ndarray, resize: str = "pad") -> np.ndarray:
        """(N, C, H, W) encoded inputs of one size -> (N, C_out, H, W) outputs.

        ``pad`` reflect-pads to the spec's multiple and crops back (tiling large inputs when
        ``tile_size`` is set); ``fit`` resizes to the training size and back.
        """
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be 'pad' or 'fit', not {resize!r}")
        size = tuple(batch.shape[-2:])
        if resize == "fit":
            fitted, _ = pad_to_multiple(
                fit_to_training_size(batch, self.spec), self.spec.pad_multiple
            )
            output = self.runtime(fitted)[..., : self.spec.train_size, : self.spec.train_size]
            return restore_size(output, size)
        if self.tile_size and max(size) > self.tile_size:
            return np.concatenate(
                [
                    translate_tiled(
                        self.runtime,
                        item[None],
                        self.tile_size,
                        self.tile_overlap,
                        self.spec.pad_multiple,
                    )
                    for item in batch
                ]
            )
        padded, _ = pad_to_multiple(batch, self.spec.pad_multiple)
        return self.runtime(padded)[..., : size[0], : size[1]]

    def translate_array(self, array: np.ndarray, resize: str = "pad") -> np.ndarray:
        """Canonical input array (see ``prepare_input``) -> uint8 RGB output array."""
        output = self.run_batch(encode_input(array, self.spec)[None], resize)
        return decode_output(output[0], self.spec, array)

    def translate(self, image: Image.Image, resize: str = "pad", tolerance: int = 0) -> Image.Image:
        array = prepare_input(image, self.spec, tolerance)
        return Image.fromarray(self.translate_array(array, resize))
