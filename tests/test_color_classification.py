"""Colorization by classification: the in-gamut ab bins, soft targets, rebalancing, the decoding
head, a training run, and an exported and served model that still returns ab."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from model.checkpoint import load_generator, save_model_folder
from model.color_bins import AB_GRID, ab_bins
from model.errors import SpecError
from model.export import export_model
from model.networks import AnnealedMean, UNetGenerator, build_generator, init_weights
from model.processing import AB_SCALE, rgb_to_lab
from model.runtime import load_model
from model.spec import GeneratorArchitecture, GeneratorSpec
from tests.conftest import tiny_config
from training.config import ConfigError
from training.loop.color_loss import ColorClassificationLoss, estimate_prior, nearest_bins
from training.loop.trainer import Trainer

BINNED = GeneratorArchitecture(num_downs=5, base_width=8, head="ab_bins")
COLORIZATION = {"data.layout": "colorization", "data.input_kind": "grayscale"}


def all_colors(step: int) -> np.ndarray:
    """8-bit sRGB colors on a grid of ``step`` levels per channel, the extremes included."""
    levels = np.unique(np.append(np.arange(0, 256, step), 255)).astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1)
    return grid.reshape(1, -1, 3)


# -- bins -----------------------------------------------------------------------------------------


def test_grid_10_keeps_the_cells_that_srgb_reaches():
    centers = ab_bins(AB_GRID)
    # The paper reports 313 in-gamut bins without saying how its gamut was drawn; the cells
    # that 8-bit sRGB colors fall in are 261.
    assert len(centers) == 261
    assert np.all(centers % AB_GRID == 0)
    assert np.abs(centers).max() <= AB_SCALE  # decoded ab stays within the network's [-1, 1]
    cells = {tuple(center) for center in centers}
    # Colors inside the cube, not only on the surface the bins were drawn from, find their cell.
    ab = rgb_to_lab(all_colors(17))[0, :, 1:]
    assert {tuple(cell) for cell in np.rint(ab / AB_GRID) * AB_GRID} <= cells
    for primary in ([255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [128, 128, 128]):
        a, b = rgb_to_lab(np.array([[primary]], dtype=np.uint8))[0, 0, 1:]
        assert (np.rint(a / AB_GRID) * AB_GRID, np.rint(b / AB_GRID) * AB_GRID) in cells


def test_bin_centers_lie_in_or_at_the_edge_of_the_gamut():
    # sRGB colors independent of the surface the bins were drawn from, ab rounded to 0.5.
    ab = np.unique(np.rint(rgb_to_lab(all_colors(4))[0, :, 1:] * 2), axis=0) / 2
    farthest, near = [], []
    for center in ab_bins(AB_GRID):
        offsets = np.abs(ab - center)
        farthest.append(offsets.max(1).min())
        near.append(np.sqrt((offsets**2).sum(1)).min() <= AB_GRID / 4)
    # Every center has an sRGB color in its own cell (half a cell along each axis) ...
    assert max(farthest) <= AB_GRID / 2 + 0.5
    # ... and most are reached by sRGB colors themselves, within a quarter of a cell (92%).
    assert np.mean(near) > 0.85


# -- soft targets and rebalancing ---------------------------------------------------------------


def test_soft_targets_sum_to_one_and_peak_at_the_nearest_bin():
    centers = ab_bins(AB_GRID)
    loss = ColorClassificationLoss(centers, np.ones(len(centers)))
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    ab = np.stack([rgb_to_lab(image)[..., 1:] for image in rgb])  # (2, 8, 8, 2)
    target = torch.from_numpy(ab / AB_SCALE).permute(0, 3, 1, 2)
    indices, probabilities = loss.soft_targets(target)
    assert indices.shape == probabilities.shape == (2, 8, 8, 5)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2, 8, 8), atol=1e-6)
    assert torch.all(probabilities[..., 0] >= probabilities.max(-1).values - 1e-7)
    assert np.array_equal(indices[..., 0].numpy(), nearest_bins(ab, centers))
    # A target exactly on a bin center keeps most of its mass there: exp(-100/50) = 0.14 per
    # neighbour 10 away, so 1 / (1 + 4 x 0.135) = 0.65.
    gray = torch.zeros(1, 2, 1, 1)
    indices, probabilities = loss.soft_targets(gray)
    assert tuple(centers[indices[0, 0, 0, 0]]) == (0.0, 0.0)  # nearest first
    assert probabilities[0, 0, 0, 0] == pytest.approx(0.65, abs=0.01)


def test_rebalancing_weights_average_one_and_favour_rare_colors():
    centers = ab_bins(AB_GRID)
    # Mostly gray with a little saturated red: the red pixels must weigh more.
    image = np.full((40, 40, 3), 128, dtype=np.uint8)
    image[:4, :4] = (220, 30, 30)
    ab = rgb_to_lab(image)[..., 1:]
    prior = estimate_prior([ab, ab], centers)
    assert prior.pixels == 3200 and prior.images == 2
    assert prior.probabilities.sum() == pytest.approx(1.0)
    assert float((prior.probabilities * prior.weights).sum()) == pytest.approx(1.0)
    gray, red = nearest_bins(ab[[10, 0], [10, 0]], centers)
    assert prior.weights[red] > 3 * prior.weights[gray]
    # Mixing with uniform bounds the spread: max / min <= 1 + Q (1 - lambda) / lambda = Q + 1.
    assert prior.weights.max() <= prior.weights.min() * (len(centers) + 1)
    assert 0 < prior.entropy_bits < np.log2(len(centers))


def test_the_rebalanced_loss_is_lowest_for_the_target_bin():
    centers = ab_bins(AB_GRID)
    loss = ColorClassificationLoss(centers, np.ones(len(centers)))
    target = torch.tensor([40.0, -30.0]).view(1, 2, 1, 1) / AB_SCALE
    (index,) = nearest_bins(np.array([[40.0, -30.0]]), centers)
    right = torch.full((1, len(centers), 1, 1), -5.0)
    right[0, index] = 5.0
    wrong = torch.roll(right, 50, dims=1)
    assert loss(right, target) < loss(wrong, target)


# -- the decoding head -------------------------------------------------------------------------


def test_uniform_logits_decode_to_the_mean_bin_everywhere():
    centers = torch.from_numpy(ab_bins(AB_GRID))
    head = AnnealedMean(centers)
    ab = head(torch.zeros(2, len(centers), 5, 7)) * AB_SCALE
    expected = centers.mean(0)
    assert torch.allclose(ab, expected.view(1, 2, 1, 1).expand_as(ab), atol=1e-4)
    # The gamut leans to warm colors, so its mean is a pale pink, near gray (chroma 17 of 110).
    assert float(expected.norm()) < 20


def test_a_one_hot_decodes_to_its_bin_center():
    centers = torch.from_numpy(ab_bins(AB_GRID))
    head = AnnealedMean(centers)
    logits = torch.full((3, len(centers), 2, 2), -30.0)
    chosen = [0, 123, len(centers) - 1]
    for position, index in enumerate(chosen):
        logits[position, index] = 30.0
    ab = head(logits) * AB_SCALE
    for position, index in enumerate(chosen):
        assert torch.allclose(ab[position, :, 0, 0], centers[index], atol=1e-3)


def test_lower_temperature_decodes_more_saturated_colors():
    centers = torch.from_numpy(ab_bins(AB_GRID))
    red = int(np.argmin(((centers.numpy() - [60.0, 50.0]) ** 2).sum(1)))
    logits = torch.zeros(1, len(centers), 1, 1)
    logits[0, red] = 4.0  # a mild preference for red over 260 other bins
    head = AnnealedMean(centers)
    plain = head(logits, temperature=1.0).norm()
    annealed = head(logits).norm()
    assert annealed > 1.5 * plain


# -- the spec and the config --------------------------------------------------------------------


def test_spec_records_the_head_and_old_specs_mean_the_regression_head():
    spec = GeneratorSpec(BINNED, 1, 2, input_kind="grayscale", color_space="lab")
    written = spec.to_dict()["architecture"]
    assert (written["head"], written["ab_grid"], written["temperature"]) == ("ab_bins", 10, 0.38)
    assert GeneratorSpec.from_json(spec.to_json()) == spec
    plain = GeneratorSpec(GeneratorArchitecture(), 1, 2, input_kind="grayscale", color_space="lab")
    assert "head" not in plain.to_dict()["architecture"]  # written as before heads existed
    assert GeneratorSpec.from_dict(plain.to_dict()).architecture.head == "tanh"
    with pytest.raises(SpecError, match="needs color_space 'lab'"):
        GeneratorSpec(BINNED, 1, 3, input_kind="grayscale")
    with pytest.raises(SpecError, match="temperature"):
        GeneratorArchitecture(head="ab_bins", temperature=0.0)


def test_classification_is_refused_without_lab_colorization(label_dataset, synth_color, tmp_path):
    with pytest.raises(ConfigError, match="needs data.layout = 'colorization'"):
        tiny_config(label_dataset, tmp_path, **{"train.color_loss": "classification"})
    rgb = {**COLORIZATION, "data.color_space": "rgb", "train.color_loss": "classification"}
    with pytest.raises(ConfigError, match="data.color_space = 'lab'"):
        tiny_config(synth_color, tmp_path, **rgb)
    with pytest.raises(ConfigError, match="train.color_loss must be one of"):
        tiny_config(synth_color, tmp_path, **COLORIZATION, **{"train.color_loss": "l2"})


# -- training ------------------------------------------------------------------------------------


@pytest.mark.numeric
def test_a_tiny_classification_run_lowers_its_loss_and_serves_ab(synth_color, tmp_path, caplog):
    # Observed 4.47 -> 3.48 over 30 steps (uniform would be ln 261 = 5.6); asked: 10% lower.
    overrides = {
        **COLORIZATION,
        "train.color_loss": "classification",
        "train.lambda_l1": "0",
        "train.lambda_gan": "0",
        "train.lr": "0.005",
        "train.max_steps": "30",
    }
    config = tiny_config(synth_color, tmp_path, **overrides)
    with caplog.at_level("INFO", logger="training.loop.terms"):
        trainer = Trainer(config, progress=False)
    assert "261 ab bins" in caplog.text and "entropy" in caplog.text
    trainer.train()
    records = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").open()]
    losses = [record["G_class"] for record in records if record["kind"] == "train"]
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0], losses

    generator, spec = load_generator(config.run_dir)
    assert spec.architecture.head == "ab_bins" and spec.out_channels == 2
    assert generator(torch.zeros(1, 1, 32, 64), logits=True).shape == (1, 261, 16, 32)
    output = generator(torch.zeros(1, 1, 32, 64))
    assert output.shape == (1, 2, 32, 64) and output.abs().max() <= 1.0


# -- export and serving --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def binned_model(tmp_path_factory):
    """A 5-level ab_bins model with batch-norm statistics and varied logits, as a model folder."""
    torch.manual_seed(0)
    generator = build_generator(BINNED, 1, 2)
    assert isinstance(generator, UNetGenerator) and generator.num_bins == 261
    init_weights(generator, gain=0.1)
    generator.train()
    with torch.no_grad():
        for _ in range(5):
            generator(torch.randn(4, 1, 64, 64))
    spec = GeneratorSpec(
        BINNED, 1, 2, input_kind="grayscale", color_space="lab", train_size=64, pad_multiple=32
    )
    folder = tmp_path_factory.mktemp("binned") / "model"
    save_model_folder(folder, generator.eval(), spec)
    return folder


@pytest.mark.numeric
@pytest.mark.parametrize(("fmt", "runtime"), [("onnx", "onnx"), ("torchscript", "torchscript")])
def test_exports_decode_to_two_ab_channels_like_pytorch(binned_model, tmp_path, fmt, runtime):
    result = export_model(binned_model, tmp_path / fmt, fmt)
    assert max(result.parity.values()) <= 1e-4  # fp32 both sides; see test_export
    reference = load_model(binned_model, runtime="torch").runtime
    exported = load_model(tmp_path / fmt, runtime=runtime)
    assert exported.spec.architecture.head == "ab_bins"
    batch = np.random.default_rng(1).uniform(-1, 1, (2, 1, 64, 96)).astype(np.float32)
    output = exported.runtime(batch)
    assert output.shape == (2, 2, 64, 96)
    assert np.abs(output - reference(batch)).max() <= 1e-4
    assert output.std() > 0.01  # the logits vary: the parity is not between two constants


@pytest.mark.numeric
def test_int8_export_keeps_the_decoded_ab_faithful(binned_model, tmp_path):
    rng = np.random.default_rng(2)
    blocks = rng.uniform(-1, 1, (12, 1, 8, 8)).astype(np.float32)
    calibration = np.kron(blocks, np.ones((1, 1, 8, 8), dtype=np.float32))  # smooth 64x64
    result = export_model(
        binned_model, tmp_path / "int8", "onnx", int8=True, calibration=calibration
    )
    assert result.psnr >= 40.0  # export's own check, on held-out calibration images
    loaded = load_model(tmp_path / "int8", runtime="onnx")
    assert loaded.runtime.name == "onnx-int8"
    assert loaded.runtime(calibration[:1]).shape == (1, 2, 64, 64)
    # The convolutions run in int8; the head from the softmax on reads fp32 values.
    nodes = onnx.load(str(tmp_path / "int8" / "generator.onnx")).graph.node
    producers = {output: node.op_type for node in nodes for output in node.output}
    softmax = next(index for index, node in enumerate(nodes) if node.op_type == "Softmax")
    head_inputs = [producers.get(name) for node in nodes[softmax:] for name in node.input]
    assert "DequantizeLinear" not in head_inputs
    assert sum(node.op_type == "DequantizeLinear" for node in nodes) > 10


def test_served_colorization_returns_the_input_size_and_lightness(binned_model, tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    export_model(binned_model, tmp_path / "models" / "binned", "onnx")
    gray = np.random.default_rng(3).integers(0, 256, (37, 50), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray, "L").save(buffer, "PNG")
    with TestClient(create_app(Settings(models_dir=str(tmp_path / "models")))) as client:
        response = client.post(
            "/v1/models/binned/translate", files={"image": ("a.png", buffer.getvalue())}
        )
    assert response.status_code == 200, response.text
    result = Image.open(io.BytesIO(response.content))
    assert result.size == (50, 37) and result.mode == "RGB"
    luma = np.asarray(result.convert("L"), dtype=float)
    assert np.corrcoef(luma.ravel(), gray.ravel().astype(float))[0, 1] > 0.95


# -- the decoding temperature as a serving choice ------------------------------------------------


def test_a_decoding_temperature_is_refused_for_the_regression_head():
    with pytest.raises(SpecError, match="ab_bins head .* this one's head is 'tanh'"):
        GeneratorSpec(GeneratorArchitecture(), 3, 3).with_temperature(0.5)
    spec = GeneratorSpec(BINNED, 1, 2, input_kind="grayscale", color_space="lab")
    with pytest.raises(SpecError, match=r"temperature must be in \(0, 1\], got 1.5"):
        spec.with_temperature(1.5)
    assert spec.with_temperature(0.6).architecture.temperature == 0.6


@pytest.mark.numeric
def test_export_at_a_temperature_bakes_it_into_the_graph_and_the_spec(binned_model, tmp_path):
    batch = np.random.default_rng(4).uniform(-1, 1, (1, 1, 64, 64)).astype(np.float32)
    outputs = {}
    for temperature in (0.2, 0.9):
        folder = tmp_path / f"t{temperature}"
        result = export_model(binned_model, folder, "onnx", temperature=temperature)
        assert max(result.parity.values()) <= 1e-4  # against PyTorch at the same temperature
        spec = json.loads((folder / "spec.json").read_text())
        assert spec["architecture"]["temperature"] == temperature
        outputs[temperature] = load_model(folder, runtime="onnx").runtime(batch)
        reweighted = load_model(binned_model, runtime="torch", temperature=temperature)
        assert np.abs(outputs[temperature] - reweighted.runtime(batch)).max() <= 1e-4
    # Lower decodes nearer each pixel's most likely bin: the colors spread out more.
    assert np.abs(outputs[0.2] - outputs[0.9]).max() > 1e-2
    assert outputs[0.2].std(axis=(2, 3)).mean() > 1.2 * outputs[0.9].std(axis=(2, 3)).mean()


def test_another_temperature_needs_the_weights_and_says_so(binned_model, tmp_path):
    from model.errors import CheckpointError

    export_model(binned_model, tmp_path / "onnx", "onnx")
    with pytest.raises(CheckpointError, match="at temperature 0.5 needs the generator's weights"):
        load_model(tmp_path / "onnx", temperature=0.5)
    # The spec's own temperature is no change: the ONNX file serves it.
    assert load_model(tmp_path / "onnx", temperature=0.38).runtime.name.startswith("onnx")
    assert load_model(binned_model, temperature=0.5).spec.architecture.temperature == 0.5


def test_evaluate_and_export_take_a_temperature_on_the_command_line(
    binned_model, synth_color, tmp_path, capsys
):
    from pix2pix.cli import main

    data = ["--data", str(synth_color), "--split", "test", "--quiet", "--samples", "1"]
    scores = {}
    for temperature in ("0.3", "0.9"):
        out = tmp_path / f"report{temperature}"
        assert main(["evaluate", str(binned_model), *data, "--temperature", temperature,
                     "--out", str(out)]) == 0  # fmt: skip
        report = json.loads((out / "metrics.json").read_text())["models"][0]
        assert report["name"] == f"model (T {temperature})"
        scores[temperature] = report["metrics"]["colorfulness_output"]
    assert scores["0.3"] != scores["0.9"]
    folder = tmp_path / "exported"
    arguments = ["export", str(binned_model), "--format", "onnx", "--out", str(folder)]
    assert main([*arguments, "--temperature", "0.6"]) == 0
    assert json.loads((folder / "spec.json").read_text())["architecture"]["temperature"] == 0.6
    capsys.readouterr()
    assert main(["evaluate", str(folder), *data, "--temperature", "0.4", "--out", "x"]) == 1
    assert "needs the generator's weights" in capsys.readouterr().err
