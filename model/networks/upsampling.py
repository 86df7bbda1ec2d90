"""The decoder's 2x upsampling layers: the paper's transposed convolution, or ``ResizeConv``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from model.fast_paths import convolution


class ResizeConv(nn.Module):
    """2x nearest-neighbour upsampling, then a 3x3 convolution: the decoder's alternative to a
    4x4 stride-2 transposed convolution, with the same channel counts.

    A transposed convolution gives each of the four pixels of a 2x2 output cell its own 2x2
    kernel; where those kernels' sums drift apart, even a flat region comes out as a 2-pixel
    grid. Here every output pixel reads a 3x3 window of input copies, so the four sum the same
    weights and a flat input stays flat (Odena et al., "Deconvolution and Checkerboard
    Artifacts", 2016).
    """

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convolution(self.conv, functional.interpolate(x, scale_factor=2, mode="nearest"))


def upsampling(kind: str, in_channels: int, out_channels: int, *, bias: bool) -> nn.Module:
    """The layer that doubles a decoder map: ``transpose`` or ``resize`` (see ``ResizeConv``)."""
    if kind == "transpose":
        return nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=bias
        )
    if kind == "resize":
        return ResizeConv(in_channels, out_channels, bias=bias)
    raise ValueError(f"unknown upsample {kind!r} (expected transpose or resize)")
