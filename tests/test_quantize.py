"""Int8 ONNX export: the exact fp32 rewrite, faithful quantization, and clear refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from model.checkpoint import save_model_folder
from model.errors import CheckpointError
from model.export import export_model
from model.networks import ResizeConv, UNetGenerator, init_weights
from model.quantize import PhaseConvTranspose, inference_graph, psnr
from model.runtime import load_model
from model.spec import GeneratorArchitecture, GeneratorSpec
from pix2pix.cli import main


def _generator(norm: str, seed: int = 0, upsample: str = "transpose") -> UNetGenerator:
    torch.manual_seed(seed)
    generator = UNetGenerator(3, 3, num_downs=5, base_width=8, norm=norm, upsample=upsample)
    init_weights(generator, gain=0.1)  # 5x the paper's init: outputs vary like a trained model's
    generator.train()
    with torch.no_grad():  # running statistics, as training would leave them
        for _ in range(5):
            generator(torch.rand(4, 3, 64, 64) * 2 - 1)
    return generator.eval()


def _smooth_images(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Photo-like inputs: a few blurred blobs per channel, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (count, 3, height // 8, width // 8)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    spec = GeneratorSpec(
        GeneratorArchitecture(num_downs=5, base_width=8), 3, 3, train_size=64, pad_multiple=32
    )
    folder = tmp_path_factory.mktemp("int8") / "model"
    save_model_folder(folder, _generator("batch"), spec)
    return folder


@pytest.mark.numeric
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_inference_graph_equals_the_generator(norm):
    generator = _generator(norm, seed=1).double()  # float64: the rewrite is exact algebra
    graph = inference_graph(generator)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in graph.modules())
    assert sum(isinstance(m, PhaseConvTranspose) for m in graph.modules()) == 5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in graph.modules())
    for height, width in [(64, 96), (32, 160)]:
        x = torch.rand(2, 3, height, width, dtype=torch.float64) * 2 - 1
        with torch.no_grad():
            expected, actual = generator(x), graph(x)
        assert expected.std() > 0.05  # not a constant image: the comparison means something
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)
    assert generator.training is False and any(
        isinstance(m, torch.nn.ConvTranspose2d) for m in generator.modules()
    )  # the original is untouched


@pytest.mark.numeric
def test_int8_export_is_faithful_smaller_and_all_integer(model_folder, tmp_path):
    calibration = _smooth_images(12, 64, 64, seed=0)
    result = export_model(
        model_folder, tmp_path / "int8", "onnx", int8=True, calibration=calibration
    )
    fp32 = export_model(model_folder, tmp_path / "fp32", "onnx")
    # Activations in 8 bits lose up to half a step of their range at every layer: measured 48
    # dB on held-out images (ONNX Runtime's VNNI kernels, AVX-512 CPUs). 40 dB (RMS error 1% of
    # the range) is the export's own acceptance line and what a user would call faithful.
    assert result.psnr is not None and result.psnr >= 40.0
    assert result.bytes < 0.5 * fp32.bytes
    spec = json.loads((result.folder / "spec.json").read_text())
    assert spec["extra"]["export"]["int8"] is True
    assert sorted(p.name for p in result.folder.iterdir()) == ["generator.onnx", "spec.json"]

    graph = onnx.load(str(result.folder / "generator.onnx")).graph
    operators = {node.op_type for node in graph.node}
    assert "ConvTranspose" not in operators and "BatchNormalization" not in operators
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "DepthToSpace"} <= operators
    convs = [node for node in graph.node if node.op_type == "Conv"]
    producers = {output: node.op_type for node in graph.node for output in node.output}
    assert all(producers.get(node.input[1]) == "DequantizeLinear" for node in convs)

    # Served like any ONNX model, any size: faithful on images it was not calibrated on.
    reference = load_model(model_folder, runtime="torch").runtime
    loaded = load_model(result.folder, runtime="onnx")
    assert loaded.runtime.name == "onnx-int8"
    batch = _smooth_images(3, 96, 64, seed=7)
    assert psnr(reference(batch), loaded.runtime(batch)) >= 40.0


def test_int8_export_refuses_what_it_cannot_do(model_folder, tmp_path):
    images = _smooth_images(8, 64, 64, seed=0)
    cases = [
        ({"format": "safetensors", "int8": True, "calibration": images}, "onnx only"),
        ({"format": "onnx", "int8": True, "calibration": images, "half": True}, "--half"),
        ({"format": "onnx", "int8": True}, "calibration images"),
        ({"format": "onnx", "int8": True, "calibration": images[:1]}, "at least 2"),
        (
            {"format": "onnx", "int8": True, "calibration": images, "inference_mode": "train"},
            "cannot carry test-time dropout",
        ),
        (
            {"format": "onnx", "int8": True, "calibration": images, "min_psnr": 200.0},
            "dB PSNR against fp32",
        ),
    ]
    for arguments, message in cases:
        out = tmp_path / "out"
        with pytest.raises(CheckpointError, match=message):
            export_model(model_folder, out, **arguments)
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_cli_int8_export_calibrates_on_a_folder_of_images(model_folder, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for index, array in enumerate(_smooth_images(6, 80, 48, seed=2)):
        pixels = np.round((array.transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{index}.png")
    out = tmp_path / "cli-int8"
    command = ["export", str(model_folder), "--format", "onnx", "--int8", "--out", str(out)]
    assert main([*command, "--calibration", str(images)]) == 0
    assert "dB" in capsys.readouterr().out
    assert (out / "generator.onnx").is_file()

    assert main(command) == 1  # a model folder has no dataset to calibrate on
    assert "--calibration DIR" in capsys.readouterr().err
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main([*command, "--calibration", str(images)]) == 1
    assert "broken.png" in capsys.readouterr().err


# -- the resize decoder ------------------------------------------------------------------------


@pytest.mark.numeric
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_inference_graph_keeps_resize_convs_with_their_batch_norm_folded(norm):
    generator = _generator(norm, seed=2, upsample="resize").double()
    graph = inference_graph(generator)
    assert sum(isinstance(m, ResizeConv) for m in graph.modules()) == 5
    assert not any(
        isinstance(m, PhaseConvTranspose | torch.nn.BatchNorm2d) for m in graph.modules()
    )
    for height, width in [(64, 96), (32, 160)]:
        x = torch.rand(2, 3, height, width, dtype=torch.float64) * 2 - 1
        with torch.no_grad():
            expected, actual = generator(x), graph(x)
        assert expected.std() > 0.05
        # Batch norm folded into the convolution before it: float64 rounding only, where a
        # wrong fold moves outputs by 1e-2 or more.
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def resize_folder(tmp_path_factory):
    architecture = GeneratorArchitecture(num_downs=5, base_width=8, upsample="resize")
    spec = GeneratorSpec(architecture, 3, 3, train_size=64, pad_multiple=32)
    folder = tmp_path_factory.mktemp("int8-resize") / "model"
    save_model_folder(folder, _generator("batch", upsample="resize"), spec)
    return folder


@pytest.mark.numeric
def test_int8_export_of_a_resize_decoder_is_faithful_and_all_integer(resize_folder, tmp_path):
    calibration = _smooth_images(12, 64, 64, seed=0)
    result = export_model(
        resize_folder, tmp_path / "int8", "onnx", int8=True, calibration=calibration
    )
    assert result.psnr is not None and result.psnr >= 40.0  # the same line as transposed convs
    graph = onnx.load(str(result.folder / "generator.onnx")).graph
    operators = {node.op_type for node in graph.node}
    # The nearest 2x + 3x3 conv stays: one int8 kernel for every output pixel.
    assert "BatchNormalization" not in operators and "DepthToSpace" not in operators
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Resize"} <= operators
    producers = {output: node.op_type for node in graph.node for output in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert all(producers.get(node.input[1]) == "DequantizeLinear" for node in convs)
    reference = load_model(resize_folder, runtime="torch").runtime
    loaded = load_model(result.folder, runtime="onnx")
    assert loaded.runtime.name == "onnx-int8" and loaded.spec.architecture.upsample == "resize"
    batch = _smooth_images(3, 96, 64, seed=7)
    assert psnr(reference(batch), loaded.runtime(batch)) >= 40.0

    # No grid: away from the borders a flat input gives every output phase (pixel (2i + a,
    # 2j + b) for a, b in 0, 1) the same mean, as in fp32. Written as four 2x2 phase kernels
    # quantized apart, this model's phases drifted 0.19 levels apart.
    flat = np.full((1, 3, 256, 256), 0.3, dtype=np.float32)
    for output in (reference(flat), loaded.runtime(flat)):
        inner = (output[0, :, 64:192, 64:192] + 1.0) * 127.5
        phases = np.stack([inner[:, a::2, b::2].mean(axis=(1, 2)) for a in (0, 1) for b in (0, 1)])
        assert np.abs(phases - phases.mean(axis=0)).max() <= 0.01
