"""The pix2pix networks: the U-Net generator and the conditional PatchGAN discriminator."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional
from torch.nn.utils import parametrizations, parametrize

from model.fast_paths import convolution, dense_gradient
from model.spec import GeneratorArchitecture

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


def _conv_bias(norm: str) -> bool:
    # Batch norm's shift makes a conv bias redundant; instance norm without affine and no norm
    # at all need it. This also reproduces the reference implementation's parameter counts.
    return norm != "batch"


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


class DownBlock(nn.Module):
    """Encoder step: [LeakyReLU] -> 4x4 conv stride 2 -> [norm]."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, *, first: bool, last: bool):
        super().__init__()
        use_norm = not first and not last
        self.activation = nn.Identity() if first else nn.LeakyReLU(0.2, inplace=True)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=_conv_bias(norm)
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
            upsampling(upsample, in_channels, out_channels, bias=_conv_bias(norm)), norm
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
        bias = _conv_bias(norm)
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


def build_discriminator(
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


def spectral_normalize(module: nn.Module) -> nn.Module:
    """Every convolution in ``module`` divided by its largest singular value (Miyato et al.
    2018), estimated by one power iteration per forward in training mode.

    Apply it after ``init_weights``: afterwards ``weight`` is computed from
    ``parametrizations.weight.original``, and initializing it would write into a temporary.
    """
    for layer in list(module.modules()):
        if isinstance(layer, nn.Conv2d):
            parametrizations.spectral_norm(layer)
    return module


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """The paper's init: conv weights N(0, 0.02), norm weights N(1, 0.02), biases zero (a
    demodulated conv's stored weight, which only its direction matters for)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            if parametrize.is_parametrized(layer, "weight"):
                nn.init.normal_(layer.parametrizations.weight.original, 0.0, gain)
            else:
                nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif (
            isinstance(layer, nn.BatchNorm2d | nn.InstanceNorm2d | nn.GroupNorm)
            and layer.weight is not None
        ):
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)


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
        # Imported here: color_bins builds on this module's U-Net.
        from model.color_bins import BinnedColorGenerator

        return BinnedColorGenerator(
            **shape, grid=architecture.ab_grid, temperature=architecture.temperature
        )
    return UNetGenerator(
        in_channels=in_channels, out_channels=out_channels, spade=architecture.spade, **shape
    )


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
