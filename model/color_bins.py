"""Colorization as classification: the in-gamut ab bins and the head that decodes bin logits.

Zhang, Isola and Efros ("Colorful Image Colorization", 2016) predict, at every pixel, a
distribution over quantized ab values instead of regressing ab: a regression loss is minimised
by the mean of the plausible colors, which for most objects is a desaturated brown. A generator
whose spec names ``head = "ab_bins"`` ends in ``AnnealedMean``, which turns its bin logits back
into the two ab channels of a plain Lab generator, so export, serving and evaluation see the
same contract as for the regression head.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from model.networks import UNetGenerator
from model.processing import AB_SCALE, rgb_to_lab

# The paper's grid spacing (Lab units) and decoding temperature.
AB_GRID = 10
TEMPERATURE = 0.38


@functools.cache
def _surface_ab() -> np.ndarray:
    """ab (N, 2) float32 of every 8-bit sRGB color on the surface of the RGB cube.

    The surface reaches every ab that the whole cube reaches: from a color inside, the colors
    with the same ab and rising L form a curve through RGB that is unbounded (L -> inf means
    Y -> inf), so it leaves the cube through the surface with its ab unchanged.
    """
    levels = np.arange(256, dtype=np.uint8)
    square = np.stack(np.meshgrid(levels, levels, indexing="ij"), axis=-1).reshape(-1, 2)
    faces = [np.insert(square, axis, value, axis=1) for axis in range(3) for value in (0, 255)]
    return rgb_to_lab(np.concatenate(faces)[None])[0, :, 1:]


@functools.cache
def _bins(grid: int) -> tuple[np.ndarray, np.ndarray]:
    cells = np.unique(np.rint(_surface_ab() / grid).astype(np.int64), axis=0)
    return cells, (cells * grid).astype(np.float32)


def ab_bins(grid: int = AB_GRID) -> np.ndarray:
    """Centers (Q, 2) in Lab units of the cells of an ab grid that sRGB colors fall in.

    Cells of side ``grid`` are centered on its multiples; a cell is kept when some sRGB color
    (at any L) quantizes to it, as the paper keeps "in-gamut" bins. For ``grid`` 10 that is
    261 bins, spanning a in -90..100 and b in -110..90; the paper reports 313 without saying
    how its gamut was drawn. About one center in ten, on the gamut's edge, is itself just
    outside it; ``lab_to_rgb`` clips what decodes there.
    """
    return _bins(grid)[1].copy()


def bin_lookup(grid: int = AB_GRID) -> tuple[np.ndarray, int]:
    """A table from grid cell to bin index (-1 outside the gamut) and the cell of its [0, 0].

    ``table[round(a / grid) + offset, round(b / grid) + offset]`` is the bin of (a, b); the
    table has a margin of one cell all round, so neighbours of edge cells can be looked up.
    """
    cells = _bins(grid)[0]
    offset = int(np.abs(cells).max()) + 1
    table = np.full((2 * offset + 1, 2 * offset + 1), -1, dtype=np.int64)
    table[cells[:, 0] + offset, cells[:, 1] + offset] = np.arange(len(cells))
    return table, offset


class AnnealedMean(nn.Module):
    """Bin logits (N, Q, H, W) -> ab (N, 2, H, W) scaled as the spec's ab (Lab / AB_SCALE).

    The mean of the bin centers under softmax(logits / T): T = 1 is the distribution's mean
    (smooth but desaturated, like regression), T -> 0 its mode (vivid but blotchy); the paper's
    T = 0.38 sits between. The centers are a buffer, so the weights carry their own bins.
    """

    def __init__(self, centers: torch.Tensor, temperature: float = TEMPERATURE):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.register_buffer("centers", (centers.float() / AB_SCALE).contiguous())  # (Q, 2)

    def forward(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        temperature = self.temperature if temperature is None else temperature
        # Bins last: for channels_last logits that is their memory order, so the softmax and
        # the product run on contiguous rows without a copy. Softmax in fp32: bf16 logits over
        # T < 1 lose the small differences that decide.
        scores = logits.permute(0, 2, 3, 1).float()
        probabilities = functional.softmax(scores / temperature, dim=-1)
        return (probabilities @ self.centers).permute(0, 3, 1, 2)


class BinnedColorGenerator(UNetGenerator):
    """The U-Net predicting one logit per ab bin at half resolution, decoded by ``AnnealedMean``
    and upsampled bilinearly to the input's size.

    The logits come from the decoder's last level through a 1x1 convolution (``classifier``),
    in place of the plain U-Net's full-resolution output layer: with 261 outputs that layer
    alone cost twice the rest of a 128 px, width-16 U-Net. Chroma carries little fine detail
    (JPEG stores it at half resolution too, and Zhang et al. predict at a quarter); the sharp
    edges come from L.

    ``forward(x)`` returns ab, like any Lab generator; ``forward(x, logits=True)`` returns the
    bin logits (N, Q, H/2, W/2) that training's classification loss needs, asked through
    ``forward`` so that DDP and torch.compile wrappers see the call; ``decode`` turns them into
    the ab that ``forward`` returns.
    """

    def __init__(self, grid: int = AB_GRID, temperature: float = TEMPERATURE, **shape):
        """``shape``: the U-Net's keyword arguments but its channels (L in, ab out)."""
        super().__init__(in_channels=1, out_channels=2, **shape)
        centers = torch.from_numpy(ab_bins(grid))
        self.output = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(self.outer_width, len(centers), kernel_size=1)
        self.head = AnnealedMean(centers, temperature)

    @property
    def num_bins(self) -> int:
        return self.head.centers.shape[0]

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Bin logits at half resolution -> ab at full resolution."""
        ab = self.head(logits)
        return functional.interpolate(ab, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        features = super().forward(x).permute(0, 2, 3, 1)
        # The 1x1 convolution as a product over channels-last rows: oneDNN's 1x1 convolution
        # with hundreds of outputs fell back to a slow kernel, and the bins come out last,
        # where the softmax wants them.
        weight = self.classifier.weight.flatten(1)
        scores = functional.linear(features, weight, self.classifier.bias).permute(0, 3, 1, 2)
        return scores if logits else self.decode(scores)
