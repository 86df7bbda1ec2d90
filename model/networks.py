"""The pix2pix networks: the U-Net generator and the conditional PatchGAN discriminator."""

from __future__ import annotations

import functools
import sys

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional

from model.spec import GeneratorArchitecture

# Training-time shortcuts for the U-Net's innermost levels (see ``_matmul_allowed``): on small
# feature maps oneDNN's strided and transposed convolutions reach a few GFLOP/s in the backward
# pass, while the same product written as unfold/fold around one GEMM runs near the matmul
# peak. Limits measured on the paper generator (bench/train.py, 2 CPU cores): a transposed
# conv gains up to an 8x8 input at any batch size, a strided conv up to an 8x8 output while
# the GEMM has at most 256 rows (batch x output pixels).
MATMUL_MAX_PIXELS = 64
MATMUL_MAX_ROWS = 256


def _matmul_allowed(module: nn.Module, x: torch.Tensor) -> bool:
    """Only while training with autograd on the CPU (GPU convolution libraries handle small
    maps well); inference, tracing and export keep the standard operators, so exported graphs
    and runtimes are unchanged."""
    return (
        module.training
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dim() == 4
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.onnx.is_in_onnx_export()
    )


def _sole_owner(tensor: torch.Tensor) -> bool:
    """True when no other tensor (a view saved by an autograd graph, a caller's reference)
    shares ``tensor``'s memory, so overwriting it in place cannot change anything else."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return False
    # One reference from ``tensor`` itself, one from the storage object made for the query.
    return use_count(tensor.untyped_storage()._cdata) <= 2


class _CastWeight(torch.autograd.Function):
    """``weight.to(dtype)`` as autocast does it, through buffers the layer keeps (see
    ``_GemmLayer``); same values and gradients."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, layer: _GemmLayer, dtype: torch.dtype):
        ctx.layer = layer
        copy = layer._weight_copy(weight, dtype)
        # A fresh view per call: the cached copy itself never becomes an autograd output.
        return copy.as_strided(copy.size(), copy.stride())

    @staticmethod
    @once_differentiable  # the gradient is written with copy_: no double backward through it
    def backward(ctx, grad: torch.Tensor):
        return ctx.layer._weight_gradient(grad), None, None


class _GemmLayer:
    """Buffers for the unfold/fold + GEMM training path of ``DownConv`` and ``UpConv``.

    Under autocast every forward pass cast the weight (up to 8.4M parameters) into a new
    bf16 tensor and every backward pass cast its gradient into a new fp32 one. glibc hands
    out blocks that large as fresh pages: 11,000-13,000 page faults per step for the paper
    generator. The layer instead casts into the bf16 copy it kept from the last call (unless
    something still holds that copy) and writes the gradient into the one
    ``release_gradients`` handed back: no faults, and the step at batch 1 ~10 ms (3%) faster.
    """

    weight: torch.Tensor

    def _gemm_weight(self, x: torch.Tensor) -> torch.Tensor:
        weight, device = self.weight, x.device.type
        if not weight.requires_grad or not torch.is_autocast_enabled(device):
            return weight
        dtype = torch.get_autocast_dtype(device)
        if dtype == weight.dtype or torch.compiler.is_compiling():
            return weight
        return _CastWeight.apply(weight, self, dtype)

    def _weight_copy(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Cast at every call: optimizers may update weights without a version bump (fused Adam).
        copy = self.__dict__.get("_gemm_copy")
        if copy is None or not _same_layout(copy, weight, dtype) or not _sole_owner(copy):
            copy = torch.empty_like(weight, dtype=dtype)
            self.__dict__["_gemm_copy"] = copy
        return copy.copy_(weight)

    def _weight_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        spare = self.__dict__.pop("_gemm_grad", None)
        # Overwritten only if nothing else kept the released gradient: neither the tensor (two
        # references: ``spare`` and getrefcount's argument) nor a view of its memory.
        if (
            spare is not None
            and sys.getrefcount(spare) <= 2
            and _same_layout(spare, weight, weight.dtype)
            and _sole_owner(spare)
        ):
            return spare.copy_(grad)
        return grad.to(weight.dtype)


def _same_layout(tensor: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> bool:
    return (
        tensor.dtype == dtype
        and tensor.shape == like.shape
        and tensor.stride() == like.stride()
        and tensor.device == like.device
    )


def release_gradients(module: nn.Module) -> None:
    """``zero_grad(set_to_none=True)`` for every parameter of ``module``; layers on the GEMM
    training path keep their released weight gradient to write the next one into."""
    for layer in module.modules():
        used = isinstance(layer, _GemmLayer) and "_gemm_copy" in layer.__dict__
        if used and layer.weight.grad is not None:
            layer.__dict__["_gemm_grad"] = layer.weight.grad
    for parameter in module.parameters():
        parameter.grad = None


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalization named by ``kind``; instance norm has no affine params, like the paper."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (expected batch, instance or none)")


def _conv_bias(norm: str) -> bool:
    # Batch norm's shift makes a conv bias redundant; instance norm without affine and no norm
    # at all need it. This also reproduces the reference implementation's parameter counts.
    return norm != "batch"


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias.to(y.dtype).view(1, -1, 1, 1)


class DownConv(_GemmLayer, nn.Conv2d):
    """4x4 stride-2 convolution (padding 1); same parameters and results as ``nn.Conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool):
        super().__init__(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _matmul_allowed(self, x):
            return super().forward(x)
        batch, channels, height, width = x.shape
        rows, columns = height // 2, width // 2
        if rows * columns > MATMUL_MAX_PIXELS or batch * rows * columns > MATMUL_MAX_ROWS:
            return super().forward(x)
        # Patches and weights both in (kh, kw, channel) order: for channels-last weights
        # the weight matrix is a view, and its gradient comes back in the weight's own layout.
        patches = functional.pad(x, (1, 1, 1, 1)).unfold(2, 4, 2).unfold(3, 4, 2)
        patches = patches.permute(0, 2, 3, 4, 5, 1).reshape(batch * rows * columns, 16 * channels)
        weight = self._gemm_weight(x).permute(0, 2, 3, 1).reshape(self.out_channels, -1)
        y = (patches @ weight.t()).view(batch, rows, columns, -1).permute(0, 3, 1, 2)
        return _add_bias(y, self.bias)  # channels-last, like the rows of the product


class UpConv(_GemmLayer, nn.ConvTranspose2d):
    """4x4 stride-2 transposed convolution (padding 1); same parameters and results as
    ``nn.ConvTranspose2d``."""

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool):
        super().__init__(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=bias)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None or not _matmul_allowed(self, x):
            return super().forward(x, output_size)
        batch, channels, height, width = x.shape
        if height * width > MATMUL_MAX_PIXELS:
            return super().forward(x, output_size)
        pixels = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
        weight = self._gemm_weight(x).permute(0, 2, 3, 1).reshape(channels, -1)  # (in, 16*out)
        # Each input pixel scatters a 4x4 patch per output channel; fold sums the overlaps.
        patches = (pixels @ weight).view(batch, height * width, 4, 4, self.out_channels)
        patches = patches.permute(0, 4, 2, 3, 1).reshape(batch, -1, height * width)
        y = functional.fold(patches, (2 * height, 2 * width), 4, padding=1, stride=2)
        if x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return _add_bias(y, self.bias)


class _DenseGrad(torch.autograd.Function):
    """Identity whose backward hands on a densely laid-out gradient.

    The gradient of ``torch.cat`` reaches each input as a channel slice, which is neither
    contiguous nor channels-last; batch norm's backward takes a slow generic path on such
    strides (measured 72 ms instead of 2 ms at 4x64x128x128), so one copy here pays off.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = x.is_contiguous(memory_format=torch.channels_last)
        # Not ``view_as``: at batch 1 it rewrites the batch stride, after which ``torch.cat``
        # no longer sees channels-last and the whole decoder ran NCHW (335 vs 381 ms a step).
        return x.as_strided(x.size(), x.stride(), x.storage_offset())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        return grad.contiguous(memory_format=layout)


def _dense_grad(x: torch.Tensor) -> torch.Tensor:
    if not x.requires_grad or torch.jit.is_tracing() or torch.jit.is_scripting():
        return x
    return _DenseGrad.apply(x)


class DownBlock(nn.Module):
    """Encoder step: [LeakyReLU] -> 4x4 conv stride 2 -> [norm]."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, *, first: bool, last: bool):
        super().__init__()
        use_norm = not first and not last
        self.activation = nn.Identity() if first else nn.LeakyReLU(0.2, inplace=True)
        self.conv = DownConv(in_channels, out_channels, bias=_conv_bias(norm))
        self.norm = norm_layer(norm, out_channels) if use_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(self.activation(x)))


class UpBlock(nn.Module):
    """Decoder step: ReLU -> 4x4 transposed conv stride 2 -> norm -> [dropout 0.5]."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, *, dropout: bool):
        super().__init__()
        self.activation = nn.ReLU(inplace=True)
        self.conv = UpConv(in_channels, out_channels, bias=_conv_bias(norm))
        self.norm = norm_layer(norm, out_channels)
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.conv(self.activation(x))))


class UNetGenerator(nn.Module):
    """The pix2pix U-Net: an encoder-decoder with skip connections between mirrored layers.

    With ``num_downs`` = 8 and ``base_width`` = 64 the encoder is C64-C128-C256-C512-C512-C512-
    C512-C512 and a 256x256 input reaches a 1x1 bottleneck; ``num_downs`` = 7 suits 128 px.
    Inputs must have sides divisible by ``2 ** num_downs``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_downs: int = 8,
        base_width: int = 64,
        norm: str = "batch",
        dropout: bool = True,
    ):
        super().__init__()
        if num_downs < 1:
            raise ValueError(f"num_downs must be at least 1, got {num_downs}")
        widths = [base_width * min(2**level, 8) for level in range(num_downs)]
        self.num_downs = num_downs

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
                UpBlock(inner, widths[level - 1], norm, dropout=dropout and depth_from_bottom < 3)
            )
        outer_input = widths[0] * 2 if num_downs > 1 else widths[0]
        self.output = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(outer_input, out_channels, kernel_size=4, stride=2, padding=1),
            nn.Tanh(),
        )

    @property
    def multiple(self) -> int:
        return 2**self.num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck feeds the decoder directly
        for block in self.decoder:
            x = torch.cat([skips.pop(), _dense_grad(block(x))], dim=1)
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
                nn.Conv2d(base_width, base_width * 2, kernel_size=1, bias=bias),
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
                conv(width, next_width, stride=stride, bias=bias),
                norm_layer(norm, next_width),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = next_width
        layers.append(conv(width, 1, stride=1))
        self.model = nn.Sequential(*layers)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([condition, image], dim=1))


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """The paper's init: conv weights N(0, 0.02), norm weights N(1, 0.02), biases zero."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d | nn.InstanceNorm2d) and layer.weight is not None:
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)


def build_generator(architecture: GeneratorArchitecture, in_channels: int, out_channels: int):
    """The generator described by a spec's architecture (weights uninitialized)."""
    return UNetGenerator(
        in_channels=in_channels,
        out_channels=out_channels,
        num_downs=architecture.num_downs,
        base_width=architecture.base_width,
        norm=architecture.norm,
        dropout=architecture.dropout,
    )


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
