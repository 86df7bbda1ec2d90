"""The discriminators: the conditional PatchGAN, pix2pixHD's multi-scale PatchGAN, OASIS's
semantic (segmenting) discriminator, and ``build_discriminator`` that makes one by name."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from model.networks.normalization import conv_bias, demodulate, norm_layer


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: classifies overlapping patches of concat(A, B) as real or fake.

    ``n_layers`` sets the receptive field: 0 is the 1x1 PixelGAN, 1 gives 16x16 patches,
    3 the paper's 70x70 (C64-C128-C256-C512), 5 the 286x286 ImageGAN at 256 px.
    The output is one logit per patch (no sigmoid; the loss applies it).
    """

    def __init__(
        self, in_channels: int = 6, base_width: int = 64, n_layers: int = 3, norm: str = "batch"
    ):
        super().__init__()
        bias = conv_bias(norm)
        if n_layers == 0:
            layers: list[nn.Module] = [
                nn.Conv2d(in_channels, base_width, kernel_size=1),
                nn.LeakyReLU(0.2, inplace=True),
                demodulate(nn.Conv2d(base_width, base_width * 2, kernel_size=1, bias=bias), norm),
                norm_layer(norm, base_width * 2),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(base_width * 2, 1, kernel_size=1, bias=bias),
            ]
            self.model = nn.Sequential(*layers)
            return
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        conv = functools.partial(nn.Conv2d, kernel_size=4, padding=1)
        layers = [conv(in_channels, base_width, stride=2), nn.LeakyReLU(0.2, inplace=True)]
        width = base_width
        for layer in range(1, n_layers + 1):
            next_width = base_width * min(2**layer, 8)
            stride = 2 if layer < n_layers else 1
            layers += [
                demodulate(conv(width, next_width, stride=stride, bias=bias), norm),
                norm_layer(norm, next_width),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = next_width
        layers.append(conv(width, 1, stride=1))
        self.model = nn.Sequential(*layers)

    def forward(
        self, condition: torch.Tensor, image: torch.Tensor, features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-patch logits; with ``features``, (logits, every LeakyReLU's output) for
        pix2pixHD's feature matching."""
        pair = torch.cat([condition, image], dim=1)
        if not features:
            return self.model(pair)
        activations = []
        for layer in self.model:
            pair = layer(pair)
            if isinstance(layer, nn.LeakyReLU):
                activations.append(pair)  # in place on its input, and nothing later writes it
        return pair, activations


class MultiScaleDiscriminator(nn.Module):
    """pix2pixHD's multi-scale PatchGAN: ``num_scales`` PatchDiscriminators of one shape, each
    with its own weights; the k-th judges concat(A, B) average-pooled k times by 2.

    The coarser scales see more of the image per patch at the same depth, which is what keeps
    large structures coherent; the full-resolution one keeps the detail. ``forward`` returns
    a list with each scale's output, finest first.
    """

    def __init__(self, num_scales: int = 2, **patch_discriminator):
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be at least 1, got {num_scales}")
        self.scales = nn.ModuleList(
            PatchDiscriminator(**patch_discriminator) for _ in range(num_scales)
        )

    def forward(self, condition: torch.Tensor, image: torch.Tensor, features: bool = False):
        outputs = []
        for scale, discriminator in enumerate(self.scales):
            if scale:  # pooling is per channel: pooling A and B apart pools their concat
                condition, image = _half(condition), _half(image)
            outputs.append(discriminator(condition, image, features=features))
        if not features:
            return outputs
        return [logits for logits, _ in outputs], [layers for _, layers in outputs]


def _half(x: torch.Tensor) -> torch.Tensor:
    return functional.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)


class SemanticDiscriminator(nn.Module):
    """A discriminator that segments (OASIS, Schoenfeld et al. 2021): a small U-Net that reads
    an image alone and labels every pixel with one of ``num_classes`` classes of the label
    map, or with one more class, "fake" (the last logit).

    Trained to label real photos by their maps and every generated pixel fake, it tells the
    generator per pixel which class a region does not look like yet (OASIS's case against a
    conditional PatchGAN, whose one logit per patch can read the class from its own input).
    The encoder halves the size ``levels`` times by stride-2 4x4 convolutions (widths
    ``base_width`` x 1, 2, 4, 8, ...); the decoder doubles it back by bilinear upsampling,
    concatenates the encoder's map of that size and mixes them by a 3x3 convolution. No
    normalization: apply :func:`spectral_normalize` after the init, as OASIS.
    Needs sides divisible by 2 ** ``levels``.
    """

    def __init__(self, in_channels: int, num_classes: int, base_width: int = 16, levels: int = 4):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        widths = [base_width * min(2**level, 8) for level in range(levels + 1)]
        self.levels = levels
        self.stem = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.down = nn.ModuleList(
            nn.Conv2d(widths[level], widths[level + 1], kernel_size=4, stride=2, padding=1)
            for level in range(levels)
        )
        self.up = nn.ModuleList(
            nn.Conv2d(widths[level + 1] + widths[level], widths[level], kernel_size=3, padding=1)
            for level in reversed(range(levels))
        )
        self.head = nn.Conv2d(widths[0], num_classes + 1, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits (N, num_classes + 1, H, W); the last channel is "fake"."""
        size = image.shape[-2:]
        if size[0] % 2**self.levels or size[1] % 2**self.levels:
            raise ValueError(
                f"the semantic discriminator needs sides divisible by {2**self.levels}, "
                f"got {tuple(size)}"
            )
        x = functional.leaky_relu(self.stem(image), 0.2)
        skips = []
        for layer in self.down:
            skips.append(x)
            x = functional.leaky_relu(layer(x), 0.2)
        for layer, skip in zip(self.up, reversed(skips), strict=True):
            x = functional.interpolate(x, size=skip.shape[-2:], mode="bilinear")
            x = functional.leaky_relu(layer(torch.cat([x, skip], dim=1)), 0.2)
        return self.head(x)


def patch_discriminator(
    in_channels: int,
    base_width: int = 64,
    n_layers: int = 3,
    norm: str = "batch",
    num_scales: int = 1,
) -> nn.Module:
    """One PatchDiscriminator (the paper's, whose checkpoints keep their keys), or with
    ``num_scales`` > 1 a MultiScaleDiscriminator of them (weights uninitialized)."""
    shape = {"in_channels": in_channels, "base_width": base_width, "n_layers": n_layers}
    if num_scales == 1:
        return PatchDiscriminator(**shape, norm=norm)
    return MultiScaleDiscriminator(num_scales, **shape, norm=norm)


# Every discriminator by name, each made from its input channels and its own keyword options.
DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {
    "patch": patch_discriminator,
    "semantic": SemanticDiscriminator,
}


def build_discriminator(in_channels: int, *, kind: str = "patch", **options: Any) -> nn.Module:
    """The discriminator named by ``kind`` for inputs of ``in_channels`` (weights uninitialized).

    - ``patch`` (the default): ``patch_discriminator``'s options ``base_width`` (64),
      ``n_layers`` (3), ``norm`` ("batch") and ``num_scales`` (1); it reads concat(A, B), so
      ``in_channels`` counts both.
    - ``semantic``: ``SemanticDiscriminator``'s ``num_classes`` (required), ``base_width`` (16)
      and ``levels`` (4); it reads the image alone. Apply ``spectral_normalize`` after
      ``init_weights``.

    For example ``build_discriminator(in_channels=6, n_layers=3, num_scales=2)``, or
    ``build_discriminator(in_channels=3, kind="semantic", num_classes=35, base_width=16)``.
    An option that the kind does not take, or a required one left out, is an error.
    """
    if kind not in DISCRIMINATORS:
        known = ", ".join(repr(name) for name in DISCRIMINATORS)
        raise ValueError(f"unknown discriminator kind {kind!r} (known kinds: {known})")
    builder = DISCRIMINATORS[kind]
    parameters = list(inspect.signature(builder).parameters.values())[1:]
    accepted = [parameter.name for parameter in parameters]
    unexpected = sorted(set(options) - set(accepted))
    if unexpected:
        raise ValueError(
            f"the {kind!r} discriminator does not take {', '.join(unexpected)} "
            f"(it takes {', '.join(accepted)})"
        )
    missing = [
        parameter.name
        for parameter in parameters
        if parameter.default is inspect.Parameter.empty and parameter.name not in options
    ]
    if missing:
        raise ValueError(f"the {kind!r} discriminator needs {', '.join(missing)}")
    return builder(in_channels, **options)
