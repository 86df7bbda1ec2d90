"""Generator options: group norm (``generator.norm = "group"``), weight demodulation
(``generator.norm = "demod"``) and SPADE (``generator.spade``),
through the network, the spec, the config, training (moving average, resume), export (ONNX,
--half, TorchScript, int8) and serving (tiled, through the Python API)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import pix2pix
from model.checkpoint import latest_checkpoint, load_generator, save_model_folder
from model.errors import SpecError
from model.export import export_model
from model.networks import (
    Demodulated,
    SpatiallyAdaptiveNorm,
    UNetGenerator,
    count_parameters,
    group_count,
    init_weights,
)
from model.quantize import inference_graph, psnr
from model.runtime import load_model
from model.spec import GeneratorArchitecture, GeneratorSpec, LabelClass
from tests.conftest import PALETTE, tiny_config, write_label_dataset
from tests.test_training import weights
from training.config import ConfigError, load_config
from training.loop.trainer import Trainer

LABELS = tuple(LabelClass(entry["id"], entry["name"], tuple(entry["color"])) for entry in PALETTE)
# Group norm on a photo model with the paper's transposed convs; SPADE on a one-hot label-map
# model with the resize decoder and batch norm, whose parameter-free norm int8 folds away, and
# SPADE modulated by the input image itself (a color-coded label image, say); demodulated convs
# under SPADE from the image.
OPTIONS = {
    "group": {"norm": "group"},
    "demod": {"norm": "demod", "spade": True, "upsample": "resize"},
    "spade": {"norm": "batch", "spade": True, "upsample": "resize"},
    "spade-photo": {"norm": "batch", "spade": True, "upsample": "resize"},
}


def label_maps(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """One-hot (N, 3, H, W) float32 label maps of 8x8 blocks of random classes."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, len(PALETTE), (count, height // 8, width // 8))
    ids = np.repeat(np.repeat(ids, 8, axis=1), 8, axis=2)
    return np.eye(len(PALETTE), dtype=np.float32)[ids].transpose(0, 3, 1, 2)


def smooth_images(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Photo-like (N, 3, H, W) inputs in [-1, 1]: blurred 8x8 blocks."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (count, 3, height // 8, width // 8)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)


def inputs(option: str, count: int, height: int, width: int, seed: int) -> np.ndarray:
    make = label_maps if option == "spade" else smooth_images
    return make(count, height, width, seed)


def spec_for(option: str) -> GeneratorSpec:
    architecture = GeneratorArchitecture(num_downs=5, base_width=8, **OPTIONS[option])
    if option == "spade":
        return GeneratorSpec(
            architecture, 3, 3, "label_map", palette=LABELS, one_hot=True, pad_multiple=32
        )
    return GeneratorSpec(architecture, 3, 3, pad_multiple=32)


def trained_like(option: str, seed: int = 0) -> UNetGenerator:
    """Weights at 5x the paper's init (outputs vary like a trained model's) and batch-norm
    statistics from a few training-mode passes."""
    torch.manual_seed(seed)
    generator = UNetGenerator(3, 3, num_downs=5, base_width=8, **OPTIONS[option])
    init_weights(generator, gain=0.1)
    generator.train()
    with torch.no_grad():
        for step in range(5):
            generator(torch.from_numpy(inputs(option, 4, 64, 64, seed=100 + step)))
    return generator.eval()


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    for option in OPTIONS:
        save_model_folder(root / option, trained_like(option), spec_for(option))
    return root


# -- the networks ------------------------------------------------------------------------------


def test_group_norm_takes_up_to_32_groups_of_at_least_4_channels_that_divide_the_width():
    channels = [1, 4, 6, 8, 9, 32, 64, 128, 256, 512]
    assert [group_count(c) for c in channels] == [1, 1, 1, 2, 1, 8, 16, 32, 32, 32]
    generator = UNetGenerator(3, 3, num_downs=5, base_width=8, norm="group")
    norms = [m for m in generator.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 + 4  # the encoder's middle levels and every decoder level
    assert all(norm.affine and norm.num_channels % norm.num_groups == 0 for norm in norms)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) for m in generator.modules())


@pytest.mark.parametrize("upsample", ["resize", "transpose"])
def test_demod_normalizes_each_convolutions_filters_instead_of_the_activations(upsample):
    torch.manual_seed(0)
    generator = UNetGenerator(3, 3, num_downs=5, base_width=8, norm="demod", upsample=upsample)
    init_weights(generator)
    assert not any(
        isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d | nn.GroupNorm)
        for m in generator.modules()
    )
    convs = [m for m in generator.modules() if parametrize.is_parametrized(m, "weight")]
    assert len(convs) == 3 + 4  # the encoder's middle levels and every decoder level
    for conv in convs:
        assert isinstance(conv.parametrizations.weight[0], Demodulated) and conv.bias is not None
        fan_in = (0, 2, 3) if isinstance(conv, nn.ConvTranspose2d) else (1, 2, 3)
        norms = conv.weight.detach().square().sum(fan_in).sqrt()
        torch.testing.assert_close(norms, torch.full_like(norms, 2**0.5))
        # The init reached the stored weight (a write to ``weight`` would be lost).
        assert conv.parametrizations.weight.original.std() < 0.03
    # Nothing depends on the rest of the batch, in training as in serving.
    x = torch.randn(2, 3, 32, 64)
    other = torch.cat([x[:1], torch.randn(1, 3, 32, 64)])
    with torch.no_grad():
        generator.train()
        torch.manual_seed(1)
        first = generator(x)[0]
        torch.manual_seed(1)
        torch.testing.assert_close(generator(other)[0], first, rtol=0, atol=1e-6)
        torch.testing.assert_close(generator.eval()(x[:1])[0], generator(x)[0])
    # Each demodulated level keeps the scale the first (plain) conv set: the ReLU's halving
    # is made up for, nothing collapses or explodes with depth.
    with torch.no_grad():
        hidden = [generator.encoder[0](x)]
        for block in generator.encoder[1:-1]:
            hidden.append(block(hidden[-1]))
    assert all(0.5 < float(h.std() / hidden[0].std()) < 2 for h in hidden)


def test_group_norm_normalizes_each_sample_on_its_own():
    # Unlike batch norm in training mode, one sample's output does not depend on the others.
    torch.manual_seed(0)
    generator = UNetGenerator(3, 3, num_downs=5, base_width=8, norm="group", dropout=False)
    x = torch.randn(2, 3, 32, 64)
    other = torch.cat([x[:1], torch.randn(1, 3, 32, 64)])
    with torch.no_grad():
        output = generator.train()(x)
        torch.testing.assert_close(generator(other)[0], output[0], rtol=0, atol=1e-6)
    assert output.shape == (2, 3, 32, 64) and output.abs().max() <= 1.0


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_spade_modulates_every_decoder_norm_which_loses_its_affine_parameters(norm):
    generator = UNetGenerator(3, 3, num_downs=5, base_width=8, norm=norm, spade=True)
    plain = UNetGenerator(3, 3, num_downs=5, base_width=8, norm=norm)
    spade = [block.norm for block in generator.decoder]
    assert all(isinstance(layer, SpatiallyAdaptiveNorm) for layer in spade)
    assert not any(isinstance(block.norm, SpatiallyAdaptiveNorm) for block in generator.encoder)
    for layer, block in zip(spade, generator.decoder, strict=True):
        channels = layer.gamma.out_channels
        assert block.conv.out_channels == channels == layer.beta.out_channels
        assert layer.shared[0].in_channels == 3  # the one-hot classes
        assert layer.shared[0].out_channels == min(64, channels)
        assert not any(p.requires_grad for p in layer.norm.parameters())  # none there
    assert count_parameters(generator) > count_parameters(plain)
    output = generator(torch.from_numpy(label_maps(2, 64, 96, seed=0)))
    assert output.shape == (2, 3, 64, 96) and output.abs().max() <= 1.0
    with pytest.raises(ValueError, match="needs a norm"):
        UNetGenerator(3, 3, num_downs=5, base_width=8, norm="none", spade=True)


def test_spade_changes_the_output_where_the_label_map_changes_at_the_decoder():
    def one_hot(ids):
        return torch.nn.functional.one_hot(ids, 3).permute(0, 3, 1, 2).float()

    ids = torch.zeros(1, 64, 64, dtype=torch.long)
    changed = ids.clone()
    changed[:, 16:24, 40:48] = 2
    near = torch.zeros(64, 64, dtype=torch.bool)
    near[8:32, 32:56] = True
    differences = {}
    for spade in (False, True):
        torch.manual_seed(0)
        generator = UNetGenerator(3, 3, num_downs=5, base_width=8, dropout=False, spade=spade)
        init_weights(generator, gain=0.1)
        generator.eval()
        with torch.no_grad():
            # A blind encoder: its first layer sees nothing, so only SPADE can read the input.
            generator.encoder[0].conv.weight.zero_()
            difference = generator(one_hot(ids)) - generator(one_hot(changed))
        differences[spade] = difference.abs()[0].amax(0)
    assert differences[False].max() == 0
    # Measured: 0.12 on average around the changed block, 0.01 elsewhere.
    assert differences[True][near].mean() > 0.05
    assert differences[True][near].mean() > 4 * differences[True][~near].mean()


# -- spec and config ---------------------------------------------------------------------------


def test_specs_without_the_new_fields_load_as_before_and_the_options_round_trip(tmp_path):
    written_before = {  # a spec.json as the program wrote it before either option existed
        "architecture": {"name": "unet", "num_downs": 5, "base_width": 8, "norm": "batch"},
        "in_channels": 3,
        "out_channels": 3,
        "input_kind": "label_map",
        "palette": PALETTE,
        "one_hot": True,
        "pad_multiple": 32,
    }
    spec = GeneratorSpec.from_dict(written_before)
    assert spec.architecture.spade is False and spec.architecture.norm == "batch"
    assert "spade" not in spec.to_dict()["architecture"]  # old readers still read new specs
    generator = UNetGenerator(3, 3, num_downs=5, base_width=8)
    save_model_folder(tmp_path / "old", generator.eval(), spec)
    loaded, _ = load_generator(tmp_path / "old")
    assert not any(isinstance(m, SpatiallyAdaptiveNorm) for m in loaded.modules())

    for option in OPTIONS:
        spec_for(option).save(tmp_path / f"{option}.json")
        assert GeneratorSpec.load(tmp_path / f"{option}.json") == spec_for(option)
    assert '"spade": true' in (tmp_path / "spade.json").read_text()
    assert '"norm": "group"' in (tmp_path / "group.json").read_text()
    assert '"norm": "demod"' in (tmp_path / "demod.json").read_text()


def test_spec_refuses_spade_on_label_ids_without_a_norm_or_with_the_bins_head():
    spade = GeneratorArchitecture(num_downs=5, spade=True)
    assert GeneratorSpec(spade, 3, 3, "photo").architecture.spade  # the image modulates
    with pytest.raises(SpecError, match="needs them one-hot, not as ids"):
        GeneratorSpec(spade, 1, 3, "label_map", palette=LABELS, one_hot=False)
    with pytest.raises(SpecError, match="needs a norm"):
        GeneratorArchitecture(norm="none", spade=True)
    with pytest.raises(SpecError, match="not 'ab_bins'"):
        GeneratorArchitecture(spade=True, head="ab_bins")
    with pytest.raises(SpecError, match="norm must be one of"):
        GeneratorArchitecture(norm="layer")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"generator.spade": "true", "data.input_kind": "label_map", "data.one_hot": "false"},
            "modulates with the label map one-hot: it needs data.one_hot = true",
        ),
        (
            {
                "generator.spade": "true",
                "data.layout": "colorization",
                "data.input_kind": "grayscale",
                "data.color_space": "lab",
                "train.color_loss": "classification",
            },
            "built for the regression head, not for train.color_loss = 'classification'",
        ),
        (
            {"generator.spade": "true", "data.input_kind": "label_map", "generator.norm": "none"},
            "generator.spade = true modulates normalized features",
        ),
        (
            {"generator.norm": "layer"},
            "generator.norm must be one of batch, instance, group, demod",
        ),
        ({"generator.spade": "maybe"}, "generator.spade expects bool"),
    ],
)
def test_config_refuses_what_the_options_cannot_do(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("input_kind", ["label_map", "photo", "grayscale"])
def test_config_accepts_both_options_together(input_kind):
    config = load_config(
        None,
        {"generator.spade": "true", "generator.norm": "group", "data.input_kind": input_kind},
    )
    assert config.generator.spade and config.generator.norm == "group"


# -- export ------------------------------------------------------------------------------------


@pytest.mark.numeric
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_each_option_exports_with_parity(model_folders, tmp_path, option, fmt):
    # The export checks parity on random inputs at 32x64 and 64x32; here a third size.
    result = export_model(model_folders / option, tmp_path / fmt, fmt)
    # fp32 on both sides, as test_export.py: 1e-4 catches a wrong layer (1e-2 and more).
    assert len(result.parity) == 2 and max(result.parity.values()) <= 1e-4
    reference = load_model(model_folders / option, runtime="torch").runtime
    exported = load_model(tmp_path / fmt, runtime=fmt)
    assert exported.spec.architecture == spec_for(option).architecture
    batch = inputs(option, 2, 96, 64, seed=1)
    expected = reference(batch)
    assert expected.std() > 0.05  # outputs that vary: parity means something
    assert np.abs(exported.runtime(batch) - expected).max() <= 1e-4
    if fmt == "onnx":
        graph = onnx.load(str(tmp_path / fmt / "generator.onnx")).graph
        operators = {node.op_type for node in graph.node}
        if option == "group":  # opset 17 writes group norm as a reshaped instance norm
            assert "InstanceNormalization" in operators
        else:  # the label map, resized to each decoder level
            resizes = sum(node.op_type == "Resize" for node in graph.node)
            assert resizes == 2 * 4 + 1  # 4 decoder levels: SPADE's and the decoder's own


@pytest.mark.numeric
@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_stays_faithful_in_half_precision_onnx(model_folders, tmp_path, option):
    batch = inputs(option, 2, 64, 96, seed=3)
    reference = load_model(model_folders / option, runtime="torch").runtime(batch)
    half = export_model(model_folders / option, tmp_path / "half", "onnx", half=True)
    assert psnr(reference, load_model(half.folder, runtime="onnx").runtime(batch)) >= 40.0


@pytest.mark.numeric
@pytest.mark.parametrize(
    ("norm", "upsample"), [("batch", "resize"), ("instance", "transpose"), ("group", "resize")]
)
def test_int8_inference_graph_of_a_spade_generator_is_exact(norm, upsample):
    torch.manual_seed(1)
    generator = UNetGenerator(
        3, 3, num_downs=5, base_width=8, norm=norm, upsample=upsample, spade=True
    )
    init_weights(generator, gain=0.1)
    generator.train()
    with torch.no_grad():
        generator(torch.from_numpy(label_maps(4, 64, 64, seed=5)))
    generator = generator.eval().double()
    graph = inference_graph(generator)
    if norm == "batch":  # folded into the conv before it; SPADE's modulation stays
        assert not any(isinstance(m, nn.BatchNorm2d) for m in graph.modules())
    assert sum(isinstance(m, SpatiallyAdaptiveNorm) for m in graph.modules()) == 4
    x = torch.from_numpy(label_maps(2, 64, 96, seed=6)).double()
    with torch.no_grad():
        expected, actual = generator(x), graph(x)
    assert expected.std() > 0.05
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)


@pytest.mark.numeric
@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_exports_to_int8_faithfully(model_folders, tmp_path, option):
    result = export_model(
        model_folders / option,
        tmp_path / "int8",
        "onnx",
        int8=True,
        calibration=inputs(option, 12, 64, 64, seed=0),
    )
    # The export's own line (40 dB), as for the plain generator in test_quantize.py.
    assert result.psnr is not None and result.psnr >= 40.0
    graph = onnx.load(str(result.folder / "generator.onnx")).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    # Every convolution, SPADE's included, runs on int8 weights but for a SPADE generator's
    # output layer; what stays in float is the normalization (group norm), or SPADE's
    # multiply-add and the output convolution.
    spade = OPTIONS[option].get("spade", False)
    quantized = [producers.get(node.input[1]) == "DequantizeLinear" for node in convs]
    assert quantized == [True] * (len(convs) - 1) + [not spade]
    if spade:  # the modulation's products go on in float, not requantized to 8 bits
        consumers = {name: node.op_type for node in graph.node for name in node.input}
        products = [node.output[0] for node in graph.node if node.op_type == "Mul"]
        assert products and not any(consumers[name] == "QuantizeLinear" for name in products)
    assert "BatchNormalization" not in producers.values()
    reference = load_model(model_folders / option, runtime="torch").runtime
    loaded = load_model(result.folder, runtime="onnx")
    assert loaded.runtime.name == "onnx-int8"
    batch = inputs(option, 3, 96, 64, seed=7)
    assert psnr(reference(batch), loaded.runtime(batch)) >= 40.0


# -- training and serving ----------------------------------------------------------------------


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_trains_resumes_and_serves_tiled(tmp_path, option):
    root = write_label_dataset(tmp_path / "data", counts=(4, 2, 2))
    spade = OPTIONS[option].get("spade", False)
    # spade-photo reads the same color-coded label images as photos.
    photo = option == "spade-photo"
    overrides = {
        "data.input_kind": "photo" if photo else "label_map",
        "generator.norm": OPTIONS[option]["norm"],
        "generator.spade": str(spade).lower(),
        "generator.upsample": OPTIONS[option].get("upsample", "transpose"),
        "train.ema_decay": "0.9",
        "train.save_every": "1",
        "train.epochs": "1",  # 4 pairs at batch 2: two steps
        "train.epochs_decay": "0",
    }
    run = tiny_config(root, tmp_path, **overrides, **{"train.max_steps": "1"})
    Trainer(run, progress=False).train()
    first = weights(latest_checkpoint(run.run_dir / "checkpoints"))
    resumed = Trainer(tiny_config(root, tmp_path, **overrides), resume=True, progress=False)
    assert resumed.step == 1
    resumed.train()
    assert resumed.step == 2
    second = weights(latest_checkpoint(run.run_dir / "checkpoints"))
    assert first.keys() == second.keys()
    # The moving average and the raw weights (which training resumes from) both kept, SPADE's
    # convolutions among them, and both moved on from where the first step left them.
    assert any(name.startswith("raw.") for name in second)
    assert any(".gamma." in name for name in second) == spade
    for name in ("decoder.3.norm.gamma.weight", "raw.decoder.3.norm.gamma.weight"):
        if spade:
            assert not torch.equal(first[name], second[name]), name

    spec = GeneratorSpec.load(run.run_dir)
    assert spec.architecture.spade == spade
    assert spec.architecture.norm == OPTIONS[option]["norm"]
    export_model(run.run_dir, tmp_path / "model", "onnx")
    ids = np.zeros((40, 72), dtype=np.uint8)
    ids[20:] = 1
    ids[8:16, 40:56] = 2
    image = np.array([entry["color"] for entry in PALETTE], dtype=np.uint8)[ids] if photo else ids
    outputs = {}
    for runtime in ("onnx", "torch"):
        # 32 px tiles overlapping by 8: each tile runs from its own crop of the label map.
        translator = pix2pix.load(
            tmp_path / "model" if runtime == "onnx" else run.run_dir,
            runtime=runtime,
            device="cpu",
            tile_size=32,
            tile_overlap=8,
        )
        outputs[runtime] = np.asarray(translator(image), dtype=np.int16)
        assert outputs[runtime].shape == (40, 72, 3) and outputs[runtime].std() > 0
    assert np.abs(outputs["onnx"] - outputs["torch"]).max() <= 1  # 8-bit rounding only
