"""Int8 ONNX export: the generator's convolutions on the CPU's integer dot-product units.

Three steps, each checked:

1. An inference graph equal to the generator in fp32: batch norm folded into the convolution
   before it, and every 4x4 stride-2 transposed convolution rewritten as one 2x2 convolution
   with four times the outputs (one group per output-pixel phase) followed by DepthToSpace.
   ONNX Runtime has int8 kernels for convolutions but none for transposed ones, which carry
   two thirds of the U-Net's FLOPs; after the rewrite every layer runs as ``QLinearConv``.
   A ``resize`` decoder's nearest 2x + 3x3 convolution stays as it is: its one 3x3 kernel is
   quantized once and slides over every output pixel. Rewritten as four 2x2 phase kernels it
   ran twice as fast in int8, but each phase kernel rounds its own way, so flat regions got a
   different offset per output phase: a 2-pixel grid (a painted 256 px facade through the
   facades demo scored 7.2 dB of checkerboard contrast that way, 3.6 dB as it is now).
2. Static quantization with ONNX Runtime (QDQ, int8 weights per output channel, uint8
   activations), calibrated on the caller's input images.
3. A fidelity check on held-out inputs: PSNR of the int8 output against fp32, in 8-bit image
   levels, must reach ``min_psnr`` (40 dB by default) or nothing is written.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from torch.nn.utils import parametrize

from model.errors import CheckpointError
from model.networks import (
    BatchNorm,
    DownBlock,
    ResizeConv,
    SpatiallyAdaptiveNorm,
    UNetGenerator,
    UpBlock,
)

logger = logging.getLogger(__name__)

QUANTIZATION_KEY = "pix2pix.quantization"  # ONNX metadata; runtimes report "onnx-int8"

# Phases of a 4x4 stride-2 padding-1 transposed convolution: output pixel (2i + a, 2j + b)
# sums input rows i - 1 + a .. i + a and columns j - 1 + b .. j + b through these kernel taps.
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))
_TAPS = {0: [3, 1], 1: [2, 0]}
# With padding 1 the 2x2 convolution yields (H+1) x (W+1) positions; phase 0 takes the first
# H rows, phase 1 the last H.
_WINDOW = {0: slice(None, -1), 1: slice(1, None)}


class _DepthToSpace(torch.autograd.Function):
    """(N, 4C, H, W) with channel index (a * 2 + b) * C + c -> (N, C, 2H, 2W): ONNX's
    DepthToSpace in DCR mode, which PyTorch's pixel_shuffle (CRD) does not export."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        x = x.view(batch, 2, 2, channels // 4, height, width).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(batch, channels // 4, 2 * height, 2 * width)

    @staticmethod
    def symbolic(graph, x):
        return graph.op("DepthToSpace", x, blocksize_i=2, mode_s="DCR")


class PhaseConvTranspose(nn.Module):
    """A 4x4 stride-2 padding-1 ``ConvTranspose2d`` as one 2x2 convolution with a group of
    outputs per output-pixel phase (in ``_PHASES`` order), then DepthToSpace."""

    def __init__(self, layer: nn.ConvTranspose2d):
        super().__init__()
        if (
            layer.kernel_size != (4, 4)
            or layer.stride != (2, 2)
            or layer.padding != (1, 1)
            or layer.output_padding != (0, 0)
            or layer.groups != 1
            or layer.dilation != (1, 1)
        ):
            raise ValueError(f"only 4x4 stride-2 padding-1 transposed convs are rewritten: {layer}")
        weight = layer.weight.detach()  # (in, out, 4, 4)
        kernels = [
            weight[:, :, _TAPS[a]][:, :, :, _TAPS[b]].permute(1, 0, 2, 3) for a, b in _PHASES
        ]
        self.out_channels = layer.out_channels
        self.weight = nn.Parameter(torch.cat(kernels).contiguous(), requires_grad=False)
        self.bias = None
        if layer.bias is not None:
            self.bias = nn.Parameter(layer.bias.detach().repeat(4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = functional.conv2d(x, self.weight, self.bias, padding=1)
        size = self.out_channels
        phases = [
            y[:, index * size : (index + 1) * size, _WINDOW[a], _WINDOW[b]]
            for index, (a, b) in enumerate(_PHASES)
        ]
        return _DepthToSpace.apply(torch.cat(phases, dim=1))


def _fold_batch_norm(conv: nn.Conv2d | nn.ConvTranspose2d, norm: nn.BatchNorm2d) -> None:
    """Scale ``conv``'s output channels so that conv(x) == norm(old_conv(x)) in eval mode."""
    scale = 1.0 / torch.sqrt(norm.running_var + norm.eps)
    shift = -norm.running_mean * scale
    if norm.affine:  # a SPADE block's batch norm has no scale and shift of its own
        weight = norm.weight.detach()
        scale, shift = scale * weight, shift * weight + norm.bias.detach()
    shape = (-1, 1, 1, 1) if isinstance(conv, nn.Conv2d) else (1, -1, 1, 1)
    with torch.no_grad():
        conv.weight.mul_(scale.view(shape))
        bias = conv.bias.detach() * scale + shift if conv.bias is not None else shift
    conv.bias = nn.Parameter(bias.clone())


def inference_graph(generator: UNetGenerator) -> UNetGenerator:
    """An eval-mode copy with batch norm folded and transposed convs rewritten as phase
    convolutions (same outputs in fp32 up to rounding); ``generator`` is untouched. Resize
    convs stay (see the module docstring).

    A SPADE block's batch norm (without affine parameters) folds into the conv before it
    alike; its modulation stays as it is: 3x3 convolutions, quantized like the others, and a
    multiply-add on 8-bit activations (only the nearest resize of the input label map runs in
    float). Group and instance norm, and batch norm at each image's own statistics (inference
    mode ``sample``), depend on each input and stay; ONNX Runtime has no int8
    kernel for them, so they compute in float between 8-bit activations.
    """
    graph = copy.deepcopy(generator).eval()
    for layer in graph.modules():  # demodulated convs: their computed weights, as parameters
        if parametrize.is_parametrized(layer):
            # Not remove_parametrizations, which deletes the property from the parametrized
            # class: the deep copy shares that class with ``generator``.
            values = {name: getattr(layer, name).detach() for name in layer.parametrizations}
            layer.__class__ = parametrize.type_before_parametrizations(layer)
            del layer.parametrizations
            for name, value in values.items():
                layer.register_parameter(name, nn.Parameter(value))
    for block in graph.modules():
        if not isinstance(block, DownBlock | UpBlock):
            continue
        conv = block.conv.conv if isinstance(block.conv, ResizeConv) else block.conv
        # A SPADE block holds its batch norm one level down.
        owner = block.norm if isinstance(block.norm, SpatiallyAdaptiveNorm) else block
        # Per-sample statistics (inference mode sample) depend on each input: no folding.
        if isinstance(owner.norm, BatchNorm) and not owner.norm.per_sample:
            _fold_batch_norm(conv, owner.norm)
            owner.norm = nn.Identity()
    for parent in list(graph.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ConvTranspose2d):
                setattr(parent, name, PhaseConvTranspose(child))
    return graph


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """PSNR in dB between two network outputs in [-1, 1], compared as 8-bit image levels."""
    levels = [np.clip(np.round((array + 1.0) * 127.5), 0, 255) for array in (reference, other)]
    mse = float(np.mean((levels[0] - levels[1]) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    float_tail: bool = False,
    spade: bool = False,
) -> None:
    """Static int8 quantization of ``fp32_path`` calibrated on ``calibration`` (N, C, H, W).

    ``float_tail`` keeps every node after the last convolution in fp32: an ``ab_bins`` head
    (``model.networks.heads``) divides its logits by a temperature below 1 and takes a softmax,
    which magnifies 8-bit rounding. Quantized, the facades colorizer reached 37.6 dB against
    fp32; with its head in fp32, 55.6 dB.

    ``spade`` quantizes the convolutions only, and not the output one: SPADE's modulation
    (x * (1 + gamma) + beta) on 8-bit operands, and the output layer on 8-bit weights, cost the
    facades demo 9.8 dB (31.0 dB against fp32, under the export's 40; 34.0 with the modulation in
    float, 40.8 with the output convolution too) for 8% less CPU time per image.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": sample[None]} for sample in calibration])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        excluded = []
        if float_tail or spade:
            excluded = _float_nodes(prepared, tail=float_tail, output_conv=spade)
        quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            op_types_to_quantize=["Conv"] if spade else None,
        )
    import onnx

    model = onnx.load(str(out_path))
    onnx.helper.set_model_props(model, {QUANTIZATION_KEY: "int8"})
    onnx.save(model, str(out_path))


def _float_nodes(path: Path, tail: bool, output_conv: bool) -> list[str]:
    """Names of the nodes to keep in fp32: with ``tail`` those after the graph's last Conv (in
    its topological order), with ``output_conv`` that Conv itself, the generator's output."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    last = max(index for index, node in enumerate(nodes) if node.op_type == "Conv")
    first = last if output_conv else last + 1
    end = len(nodes) if tail else last + 1
    return [node.name for node in nodes[first:end]]


def split_calibration(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Calibrate on three quarters of the inputs, check fidelity on the rest (at least one)."""
    if len(inputs) < 2:
        raise CheckpointError(
            f"int8 export needs at least 2 calibration images (got {len(inputs)}): some "
            "calibrate the activation ranges, the others check the result"
        )
    held_out = max(1, len(inputs) // 4)
    return inputs[:-held_out], inputs[-held_out:]


def check_fidelity(reference, exported, inputs: np.ndarray, min_psnr: float) -> float:
    """PSNR of ``exported`` against ``reference`` on ``inputs``; raises below ``min_psnr``."""
    value = psnr(reference(inputs), exported(inputs))
    if value < min_psnr:
        raise CheckpointError(
            f"int8 model reaches only {value:.1f} dB PSNR against fp32 on {len(inputs)} "
            f"held-out calibration image(s) (limit {min_psnr:.0f} dB); nothing was written. "
            "Calibrate on more, and more typical, images or export without --int8"
        )
    logger.info("int8 fidelity: %.1f dB PSNR against fp32 on %d images", value, len(inputs))
    return value
