"""Training fast paths for the U-Net, kept apart from the network definitions.

The networks ask for them at two seams and know nothing else about them:
``convolution(layer, x)`` runs each encoder and decoder convolution, and ``dense_gradient(x)``
marks a decoder output before the skip concatenation. Both give the same outputs and gradients
as the stock operators; inference, tracing and export always get the stock operators, so
exported graphs and runtimes are unchanged. Why each pays off is in docs/performance.md.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

# On small feature maps oneDNN's strided and transposed convolutions reach a few GFLOP/s in the
# backward pass, while the same product written as unfold/fold around one GEMM runs near the
# matmul peak. Limits measured on the paper generator (bench/train.py, 2 CPU cores): a
# transposed conv gains up to an 8x8 input at any batch size, a strided conv up to an 8x8
# output while the GEMM has at most 256 rows (batch x output pixels).
MATMUL_MAX_PIXELS = 64
MATMUL_MAX_ROWS = 256


def convolution(layer: nn.Conv2d | nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, run as unfold/fold around one GEMM when ``layer`` is a 4x4 stride-2
    (transposed) convolution training on a small map on the CPU. The GEMM form reads the
    layer's parameters but does not call it, so hooks on ``layer`` see only the stock calls."""
    if _gemm_allowed(layer, x):
        batch, _, height, width = x.shape
        pixels = (height // 2) * (width // 2)
        if isinstance(layer, nn.ConvTranspose2d):
            if height * width <= MATMUL_MAX_PIXELS:
                return _transposed_gemm(layer, x)
        elif pixels <= MATMUL_MAX_PIXELS and batch * pixels <= MATMUL_MAX_ROWS:
            return _strided_gemm(layer, x)
    return layer(x)


def _gemm_allowed(layer: nn.Module, x: torch.Tensor) -> bool:
    """Only while training with autograd on the CPU (GPU convolution libraries handle small
    maps well), and only for the one layer shape the GEMM forms below are written for."""
    return (
        layer.training
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dim() == 4
        and isinstance(layer, nn.Conv2d | nn.ConvTranspose2d)
        and layer.kernel_size == (4, 4)
        and layer.stride == (2, 2)
        and layer.padding == (1, 1)
        and layer.dilation == (1, 1)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and layer.output_padding == (0, 0)
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.onnx.is_in_onnx_export()
    )


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias.to(y.dtype).view(1, -1, 1, 1)


def _strided_gemm(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.shape
    rows, columns = height // 2, width // 2
    # Patches and weights both in (kh, kw, channel) order: for channels-last weights the
    # weight matrix is a view, and its gradient comes back in the weight's own layout.
    patches = functional.pad(x, (1, 1, 1, 1)).unfold(2, 4, 2).unfold(3, 4, 2)
    patches = patches.permute(0, 2, 3, 4, 5, 1).reshape(batch * rows * columns, 16 * channels)
    weight = layer.weight.permute(0, 2, 3, 1).reshape(layer.out_channels, -1)
    y = (patches @ weight.t()).view(batch, rows, columns, -1).permute(0, 3, 1, 2)
    return _add_bias(y, layer.bias)  # channels-last, like the rows of the product


def _transposed_gemm(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    weight = layer.weight.permute(0, 2, 3, 1).reshape(channels, -1)  # (in, 16 * out)
    # Each input pixel scatters a 4x4 patch per output channel; fold sums the overlaps.
    patches = (pixels @ weight).view(batch, height * width, 4, 4, layer.out_channels)
    patches = patches.permute(0, 4, 2, 3, 1).reshape(batch, -1, height * width)
    y = functional.fold(patches, (2 * height, 2 * width), 4, padding=1, stride=2)
    if x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)
    return _add_bias(y, layer.bias)


def dense_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x``, whose gradient is handed back densely laid out.

    The gradient of ``torch.cat`` reaches each input as a channel slice, which is neither
    contiguous nor channels-last; batch norm's backward takes a slow generic path on such
    strides (72 ms instead of 2 ms at 4x64x128x128), so one copy here pays off.
    """
    if not x.requires_grad or torch.jit.is_tracing() or torch.jit.is_scripting():
        return x
    return _DenseGradient.apply(x)


class _DenseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = x.is_contiguous(memory_format=torch.channels_last)
        # Not ``view_as``: at batch 1 it rewrites the batch stride, after which ``torch.cat``
        # no longer sees channels-last and the whole decoder runs NCHW.
        return x.as_strided(x.size(), x.stride(), x.storage_offset())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        return grad.contiguous(memory_format=layout)
