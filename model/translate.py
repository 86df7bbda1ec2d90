"""Apply a generator to images of any size, with the spec's pre- and post-processing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as functional
from PIL import Image
from torch import nn

from model.checkpoint import load_generator
from model.processing import decode_output, encode_input, pad_to_multiple, prepare_input
from model.spec import GeneratorSpec
from model.tiling import translate_tiled

RESIZE_MODES = ("pad", "fit")


def fit_to_training_size(batch: torch.Tensor, spec: GeneratorSpec) -> torch.Tensor:
    """Resize (N, C, H, W) inputs to the training size (label maps nearest-neighbour)."""
    size = (spec.train_size, spec.train_size)
    if spec.input_kind == "label_map":
        return functional.interpolate(batch, size=size, mode="nearest")
    return functional.interpolate(batch, size=size, mode="bilinear", antialias=True)


def restore_size(output: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, h, w) outputs back to ``size``."""
    if tuple(output.shape[-2:]) == tuple(size):
        return output
    return functional.interpolate(output, size=size, mode="bilinear", antialias=True).clamp(-1, 1)


class Translator:
    """A loaded generator plus its spec: image in, translated image out, same size."""

    def __init__(
        self,
        generator: nn.Module,
        spec: GeneratorSpec,
        device: str | torch.device,
        tile_size: int = 0,
        tile_overlap: int = 64,
    ):
        self.generator = generator
        self.spec = spec
        self.device = torch.device(device)
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", **options) -> Translator:
        generator, spec = load_generator(path, device)
        return cls(generator, spec, device, **options)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) with H, W multiples of the spec's -> (N, C_out, H, W) on the CPU."""
        return self.generator(batch.to(self.device)).float().cpu()

    def run_tensor(self, batch: torch.Tensor, resize: str = "pad") -> torch.Tensor:
        """(N, C, H, W) encoded inputs of one size -> (N, C_out, H, W) outputs.

        ``pad`` reflect-pads to the spec's multiple and crops back (tiling large inputs when
        ``tile_size`` is set); ``fit`` resizes to the training size and back.
        """
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be 'pad' or 'fit', not {resize!r}")
        size = tuple(batch.shape[-2:])
        if resize == "fit":
            return restore_size(self.forward(fit_to_training_size(batch, self.spec)), size)
        if self.tile_size and max(size) > self.tile_size:
            return torch.cat(
                [
                    translate_tiled(
                        self.forward,
                        item[None],
                        self.tile_size,
                        self.tile_overlap,
                        self.spec.pad_multiple,
                    )
                    for item in batch
                ]
            )
        padded, _ = pad_to_multiple(batch, self.spec.pad_multiple)
        return self.forward(padded)[..., : size[0], : size[1]]

    def translate_array(self, array: np.ndarray, resize: str = "pad") -> np.ndarray:
        """Canonical input array (see ``prepare_input``) -> uint8 RGB output array."""
        output = self.run_tensor(encode_input(array, self.spec).unsqueeze(0), resize)
        return decode_output(output[0], self.spec, array)

    def translate(self, image: Image.Image, resize: str = "pad", tolerance: int = 0) -> Image.Image:
        array = prepare_input(image, self.spec, tolerance)
        return Image.fromarray(self.translate_array(array, resize))
