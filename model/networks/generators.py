"""The generators: the pix2pix U-Net, its encoder and decoder blocks, the U-Net that predicts
color bins, and ``build_generator`` that makes the one a spec's architecture names."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from model.color_bins import AB_GRID, ab_bins
from model.fast_paths import convolution, dense_gradient
from model.networks.heads import TEMPERATURE, AnnealedMean
from model.networks.normalization import (
    SpatiallyAdaptiveNorm,
    conv_bias,
    demodulate,
    norm_layer,
)
from model.networks.upsampling import upsampling
from model.spec import GeneratorArchitecture


class DownBlock(nn.Module):
    """Encoder step: [LeakyReLU] -> 4x4 conv stride 2 -> [norm]."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, *, first: bool, last: bool):
        super().__init__()
        use_norm = not first and not last
        self.activation = nn.Identity() if first else nn.LeakyReLU(0.2, inplace=True)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=conv_bias(norm)
        )
        self.norm = norm_layer(norm, out_channels) if use_norm else nn.Identity()
        if use_norm:
            demodulate(self.conv, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(convolution(self.conv, self.activation(x)))


class UpBlock(nn.Module):
    """Decoder step: ReLU -> 2x upsampling conv (see ``upsampling``) -> norm -> [dropout 0.5].

    With ``label_channels`` the norm is a ``SpatiallyAdaptiveNorm`` driven by the label map
    that ``forward`` then takes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str,
        *,
        dropout: bool,
        upsample: str = "transpose",
        label_channels: int = 0,
    ):
        super().__init__()
        self.activation = nn.ReLU(inplace=True)
        self.conv = demodulate(
            upsampling(upsample, in_channels, out_channels, bias=conv_bias(norm)), norm
        )
        if label_channels:
            self.norm = SpatiallyAdaptiveNorm(norm, out_channels, label_channels)
        else:
            self.norm = norm_layer(norm, out_channels)
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor, label_map: torch.Tensor | None = None) -> torch.Tensor:
        x = convolution(self.conv, self.activation(x))
        x = self.norm(x) if label_map is None else self.norm(x, label_map)
        return self.dropout(x)


class UNetGenerator(nn.Module):
    """The pix2pix U-Net: an encoder-decoder with skip connections between mirrored layers.

    With ``num_downs`` = 8 and ``base_width`` = 64 the encoder is C64-C128-C256-C512-C512-C512-
    C512-C512 and a 256x256 input reaches a 1x1 bottleneck; ``num_downs`` = 7 suits 128 px.
    Inputs must have sides divisible by ``2 ** num_downs``. ``upsample`` chooses the decoder's
    upsampling layers: the paper's transposed convolutions or ``ResizeConv``. With ``spade``
    the input (a one-hot label map, or an image) also modulates every decoder block's
    normalization (``SpatiallyAdaptiveNorm``); the forward pass keeps it for them.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_downs: int = 8,
        base_width: int = 64,
        norm: str = "batch",
        dropout: bool = True,
        upsample: str = "transpose",
        spade: bool = False,
    ):
        super().__init__()
        if num_downs < 1:
            raise ValueError(f"num_downs must be at least 1, got {num_downs}")
        widths = [base_width * min(2**level, 8) for level in range(num_downs)]
        self.num_downs = num_downs
        self.spade = spade

        self.encoder = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(widths):
            self.encoder.append(
                DownBlock(previous, width, norm, first=level == 0, last=level == num_downs - 1)
            )
            previous = width

        # Decoder blocks run from the bottleneck outwards. The innermost one receives only the
        # bottleneck; every other one receives its input concatenated with the mirrored skip.
        self.decoder = nn.ModuleList()
        for level in reversed(range(1, num_downs)):
            inner = widths[level] if level == num_downs - 1 else widths[level] * 2
            depth_from_bottom = num_downs - 1 - level
            self.decoder.append(
                UpBlock(
                    inner,
                    widths[level - 1],
                    norm,
                    dropout=dropout and depth_from_bottom < 3,
                    upsample=upsample,
                    label_channels=in_channels if spade else 0,
                )
            )
        # What the output layer takes: the outermost decoder level with its skip.
        self.outer_width = widths[0] * 2 if num_downs > 1 else widths[0]
        self.output = nn.Sequential(
            nn.ReLU(inplace=True),
            upsampling(upsample, self.outer_width, out_channels, bias=True),
            nn.Tanh(),
        )

    @property
    def multiple(self) -> int:
        return 2**self.num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label_map = x if self.spade else None
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck feeds the decoder directly
        for block in self.decoder:
            x = torch.cat([skips.pop(), dense_gradient(block(x, label_map))], dim=1)
        return self.output(x)


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


def build_generator(architecture: GeneratorArchitecture, in_channels: int, out_channels: int):
    """The generator described by a spec's architecture (weights uninitialized)."""
    shape = {
        "num_downs": architecture.num_downs,
        "base_width": architecture.base_width,
        "norm": architecture.norm,
        "dropout": architecture.dropout,
        "upsample": architecture.upsample,
    }
    if architecture.head == "ab_bins":
        return BinnedColorGenerator(
            **shape, grid=architecture.ab_grid, temperature=architecture.temperature
        )
    return UNetGenerator(
        in_channels=in_channels, out_channels=out_channels, spade=architecture.spade, **shape
    )
