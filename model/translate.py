"""The Python API: a runtime and its spec turn images of any size into translated images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from model.plan import TILE_OVERLAP, TILE_SIZE, plan_translation, run_plans
from model.processing import decode_output, encode_input, prepare_input
from model.spec import GeneratorSpec


class Translator:
    """A runtime plus its spec: images in, translated images out, same size, by the one plan.

    ``runtime`` maps (N, C, H, W) float32 with sides divisible by the spec's multiple to
    (N, C_out, H, W) float32 (see ``model.runtime``); it sees at most ``batch_size`` crops at
    a time. ``tile_size`` 0 never tiles.
    """

    def __init__(
        self,
        runtime: Callable[[np.ndarray], np.ndarray],
        spec: GeneratorSpec,
        tile_size: int = TILE_SIZE,
        tile_overlap: int = TILE_OVERLAP,
        batch_size: int = 8,
    ):
        self.runtime = runtime
        self.spec = spec
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.batch_size = batch_size

    @classmethod
    def load(
        cls, path: str | Path, runtime: str = "auto", device: str = "auto", **options
    ) -> Translator:
        from model.runtime import load_model

        loaded = load_model(path, runtime=runtime, device=device)
        return cls(loaded.runtime, loaded.spec, **options)

    def translate_arrays(self, arrays: Sequence[np.ndarray], resize: str = "pad") -> list:
        """Canonical input arrays (see ``prepare_input``) -> uint8 RGB output arrays; crops of
        one shape run together, so equal-sized inputs share batches."""
        plans = [
            plan_translation(
                encode_input(array, self.spec), self.spec, resize, self.tile_size, self.tile_overlap
            )
            for array in arrays
        ]
        run_plans(plans, self.runtime, self.batch_size)
        return [
            decode_output(plan.result(), self.spec, array)
            for plan, array in zip(plans, arrays, strict=True)
        ]

    def translate(self, image: Image.Image, resize: str = "pad", tolerance: int = 0) -> Image.Image:
        array = prepare_input(image, self.spec, tolerance)
        return Image.fromarray(self.translate_arrays([array], resize)[0])
