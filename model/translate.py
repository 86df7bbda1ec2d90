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


class Translator:
    """A loaded generator plus its spec: image in, translated image out, same size."""

    def __init__(self, generator: nn.Module, spec: GeneratorSpec, device: str | torch.device):
        self.generator = generator
        self.spec = spec
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Translator:
        generator, spec = load_generator(path, device)
        return cls(generator, spec, device)

    @torch.inference_mode()
    def run_tensor(self, batch: torch.Tensor, resize: str = "pad") -> torch.Tensor:
        """(N, C, H, W) encoded inputs of one size -> (N, C_out, H, W) outputs.

        ``pad`` reflect-pads to the spec's multiple and crops back; ``fit`` resizes to the
        training size and back (label maps with nearest-neighbour, images bilinearly).
        """
        batch = batch.to(self.device)
        height, width = batch.shape[-2:]
        if resize == "fit":
            size = (self.spec.train_size, self.spec.train_size)
            mode = "nearest" if self.spec.input_kind == "label_map" else "bilinear"
            resized = functional.interpolate(
                batch, size=size, mode=mode, **({} if mode == "nearest" else {"antialias": True})
            )
            resized, _ = pad_to_multiple(resized, self.spec.pad_multiple)
            output = self.generator(resized)[..., : size[0], : size[1]]
            return functional.interpolate(
                output, size=(height, width), mode="bilinear", antialias=True
            ).clamp(-1, 1)
        if resize != "pad":
            raise ValueError(f"resize must be 'pad' or 'fit', not {resize!r}")
        padded, _ = pad_to_multiple(batch, self.spec.pad_multiple)
        return self.generator(padded)[..., :height, :width]

    def translate_array(self, array: np.ndarray, resize: str = "pad") -> np.ndarray:
        """Canonical input array (see ``prepare_input``) -> uint8 RGB output array."""
        output = self.run_tensor(encode_input(array, self.spec).unsqueeze(0), resize)
        return decode_output(output[0], self.spec, array)

    def translate(self, image: Image.Image, resize: str = "pad", tolerance: int = 0) -> Image.Image:
        array = prepare_input(image, self.spec, tolerance)
        return Image.fromarray(self.translate_array(array, resize))
