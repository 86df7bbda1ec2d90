"""The networks' normalizations: ``norm_layer`` by name, batch norm with per-sample statistics,
weight demodulation, and SPADE's spatially-adaptive normalization."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional
from torch.nn.utils import parametrize

from model.networks.upsampling import ResizeConv

# Hidden channels of a SPADE block's shared convolution (at most; narrower levels use their
# own width). On the 128 px demo U-Net (num_downs 7, width 32, 7.57M parameters) the paper's
# 128 adds 29% to the parameters, 64 adds 15%.
SPADE_HIDDEN = 64


def group_count(channels: int) -> int:
    """Group norm's groups for ``channels``: Wu and He's 32, but at least 4 channels a group (so
    narrow layers do not degenerate into instance norm), and always a divisor of ``channels``."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


def norm_layer(kind: str, channels: int, *, affine: bool = True) -> nn.Module:
    """The normalization named by ``kind``; instance norm has no affine params, like the paper.
    ``affine=False`` drops batch and group norm's scale and shift too (for SPADE). ``demod``
    normalizes the weights of the convolution before it (see ``Demodulated``), not the
    activations, so it has no layer here."""
    if kind == "batch":
        return BatchNorm(channels, affine=affine)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels, affine=affine)
    if kind in ("demod", "none"):
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (expected batch, instance, group, demod or none)")


class BatchNorm(nn.BatchNorm2d):
    """Batch norm that can normalize each sample by its own statistics at inference.

    With ``per_sample`` (see ``use_sample_statistics``) it normalizes every image over its own
    pixels and applies the learned scale and shift: batch norm in training mode at batch size
    1, which is what a generator trained at batch 1 saw in every step, and what the pix2pix
    paper runs at test time. Unlike training mode it never mixes the images of a batch (a
    served image's output does not depend on the crops batched with it) and never touches the
    running statistics. The parameters and buffers are batch norm's, so checkpoints load
    either way.
    """

    per_sample = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_sample:
            return functional.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        return super().forward(x)


def use_sample_statistics(module: nn.Module, enabled: bool) -> None:
    """Switch every ``BatchNorm`` in ``module`` to per-sample statistics, or back."""
    for layer in module.modules():
        if isinstance(layer, BatchNorm):
            layer.per_sample = enabled


class Demodulated(nn.Module):
    """Weight demodulation without a style (StyleGAN2, Karras et al. 2020): every output
    channel's filter scaled to an L2 norm of sqrt(2), so for uncorrelated inputs the convolution
    keeps the second moment that the ReLU before it halved.

    It replaces normalizing the activations, per sample (instance norm) or per batch (batch
    norm): nothing depends on the other pixels of the image, so a bright region cannot drag a
    layer's statistics (the "droplet" blobs StyleGAN2 traced to instance norm), and training
    and serving compute the same thing at any batch size. A parametrization of ``weight``:
    everything that reads the layer's weight reads the demodulated one.
    """

    def __init__(self, transposed: bool):
        super().__init__()
        # Conv2d weights are (out, in, kh, kw), ConvTranspose2d weights (in, out, kh, kw).
        self.fan_in = (0, 2, 3) if transposed else (1, 2, 3)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * weight.square().sum(self.fan_in, keepdim=True).add(1e-8).rsqrt() * 2**0.5


def demodulate(layer: nn.Module, norm: str) -> nn.Module:
    """``layer`` (a conv, transposed conv or ``ResizeConv``) with demodulated weights when
    ``norm`` is ``demod``; as it is otherwise."""
    if norm == "demod":
        conv = layer.conv if isinstance(layer, ResizeConv) else layer
        transposed = isinstance(conv, nn.ConvTranspose2d)
        parametrize.register_parametrization(conv, "weight", Demodulated(transposed))
    return layer


def conv_bias(norm: str) -> bool:
    """Whether a convolution followed by the norm ``norm`` has a bias of its own.

    Batch norm's shift makes a conv bias redundant; instance norm without affine and no norm
    at all need it. This also reproduces the reference implementation's parameter counts.
    """
    return norm != "batch"


class SpatiallyAdaptiveNorm(nn.Module):
    """SPADE (Park et al., "Semantic Image Synthesis with Spatially-Adaptive Normalization",
    2019): a normalization without affine parameters, then a scale and shift per pixel and
    channel, computed from the label map at this map's size: the one-hot map, or the
    generator's input image where that is what carries the layout (a color-coded label image).

    A plain norm's learned shift is one number per channel, and normalization washes out what
    a flat label region said; here the label map decides at every decoder level, as
    x * (1 + gamma) + beta, with gamma and beta from a shared 3x3 conv + ReLU and one 3x3 conv
    each. The label map is resized by nearest neighbour, so one-hot stays one-hot.
    """

    def __init__(self, kind: str, channels: int, label_channels: int):
        super().__init__()
        if kind == "none":
            raise ValueError("SPADE modulates normalized features: it needs a norm, not 'none'")
        # With demod the features arrive normalized by the conv's weights; nothing to add here.
        hidden = min(SPADE_HIDDEN, channels)
        self.norm = norm_layer(kind, channels, affine=False)
        self.shared = nn.Sequential(
            nn.Conv2d(label_channels, hidden, kernel_size=3, padding=1), nn.ReLU(inplace=True)
        )
        self.gamma = nn.Conv2d(hidden, channels, kernel_size=3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        label_map = functional.interpolate(label_map, size=x.shape[-2:], mode="nearest")
        features = self.shared(label_map)
        return self.norm(x) * (1 + self.gamma(features)) + self.beta(features)
