"""train.recalibrate_bn: the served generator's batch-norm statistics measured on itself, over
training pairs as served (whole, dropout off), instead of the last training batches' average."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import latest_checkpoint, load_generator, save_model_folder
from model.errors import CheckpointError
from model.model_folders import load_spec
from model.networks import UNetGenerator, init_weights
from model.recalibration import batch_norms, recalibrate_batch_norm
from model.runtime import load_model
from model.spec import GeneratorArchitecture, GeneratorSpec
from pix2pix.api import export
from pix2pix.cli import main
from tests.conftest import tiny_config
from training.config import ConfigError
from training.data.calibration import calibration_inputs
from training.data.datasets import PairedDataset
from training.loop.trainer import Trainer


def _standardized_outputs(generator: torch.nn.Module, inputs: torch.Tensor) -> float:
    """How far, at most, each norm's output over ``inputs`` (eval mode) is from mean = its shift
    and the standard deviation of an input of its running variance, per channel: 0 when its
    statistics are its inputs' own."""
    norms = batch_norms(generator)
    worst = []

    def check(module, _args, output):
        values = output.double().transpose(0, 1).flatten(1)
        scale = module.weight.double() if module.weight is not None else 1.0
        shift = module.bias.double() if module.bias is not None else 0.0
        worst.append(float((values.mean(1) - shift).abs().max()))
        # What the norm's formula gives for an input of the variance it holds.
        held = module.running_var.double()
        spread = abs(scale) * (held / (held + module.eps)).sqrt()
        worst.append(float((values.std(1) - spread).abs().max()))

    hooks = [norm.register_forward_hook(check) for norm in norms]
    generator.eval()
    with torch.no_grad():
        generator(inputs)
    for hook in hooks:
        hook.remove()
    assert len(worst) == 2 * len(norms)
    return max(worst)


@pytest.mark.parametrize("spade", [False, True])
def test_every_norm_gets_its_inputs_statistics_in_the_served_network(spade):
    torch.manual_seed(0)
    generator = UNetGenerator(3, 3, num_downs=5, base_width=8, norm="batch", spade=spade)
    init_weights(generator, gain=0.5)
    with torch.no_grad():  # non-trivial scales and shifts, as after training
        for norm in batch_norms(generator):
            if norm.weight is not None:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
    generator.train()
    with torch.no_grad():  # running statistics of other inputs, with dropout on
        for _ in range(3):
            generator(torch.rand(2, 3, 64, 64) * 3)
    inputs = torch.rand(12, 3, 64, 64) * 2 - 1
    assert _standardized_outputs(generator, inputs) > 0.1

    calls = {"count": 0}
    generator.register_forward_pre_hook(lambda *_: calls.__setitem__("count", calls["count"] + 1))
    set_count = recalibrate_batch_norm(generator, lambda: inputs.split(5))
    norms = batch_norms(generator)
    assert set_count == len(norms) == 7  # 3 in the encoder, 4 in the decoder (SPADE's inside)
    # One pass to find the order, then one per norm over the 3 batches.
    assert calls["count"] == 1 + 3 * len(norms)
    assert not generator.training
    assert _standardized_outputs(generator, inputs) < 1e-3


def test_a_run_serves_recalibrated_statistics(synth_labels, tmp_path):
    # Dropout on in training, an EMA whose weights trail the raw generator's: the running
    # statistics that training leaves belong to neither the served weights nor dropout off.
    common = {"train.ema_decay": "0.9", "train.max_steps": "6"}
    plain = tiny_config(synth_labels, tmp_path, name="plain", **common)
    Trainer(plain, progress=False).train()
    recalibrated = tiny_config(
        synth_labels, tmp_path, name="recalibrated", **common, **{"train.recalibrate_bn": "1000"}
    )
    trainer = Trainer(recalibrated, progress=False)
    trainer.train()

    # Every training pair counts (1000 asks for more than there are).
    served, spec = load_generator(latest_checkpoint(recalibrated.run_dir / "checkpoints"))
    pairs = PairedDataset(recalibrated.data, "train", spec, train=False)
    inputs = torch.stack([pairs[i]["A"] for i in range(len(pairs))])
    assert _standardized_outputs(served, inputs) < 1e-3
    before, _ = load_generator(latest_checkpoint(plain.run_dir / "checkpoints"))
    assert _standardized_outputs(before, inputs) > 0.05
    # Training goes on as before: the generator in training mode, the norms' momentum kept.
    assert trainer.generator.training
    assert all(norm.momentum == 0.1 for norm in batch_norms(trainer.servable_generator))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"generator.norm": "instance"}, "recalibrate_bn.*generator.norm = 'instance' has none"),
        ({"generator.inference_mode": "sample"}, "recalibrate_bn.*inference_mode = 'sample'"),
        ({"generator.inference_mode": "train"}, "recalibrate_bn.*inference_mode = 'train'"),
    ],
)
def test_recalibration_without_running_statistics_to_serve_is_refused(
    synth_labels, tmp_path, overrides, message
):
    with pytest.raises(ConfigError, match=message):
        tiny_config(synth_labels, tmp_path, **overrides, **{"train.recalibrate_bn": "8"})


def test_a_negative_count_is_refused(synth_labels, tmp_path):
    with pytest.raises(ConfigError, match="train.recalibrate_bn"):
        tiny_config(synth_labels, tmp_path, **{"train.recalibrate_bn": "-1"})


# -- export: a run trained without it, recalibrated on the way out -----------------------------


@pytest.fixture(scope="module")
def plain_run(synth_labels, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    config = tiny_config(synth_labels, runs, **{"train.ema_decay": "0.9", "train.max_steps": "6"})
    Trainer(config, progress=False).train()
    return config.run_dir


def test_export_recalibrates_a_run_trained_without_it(plain_run, tmp_path):
    inputs = torch.from_numpy(calibration_inputs(plain_run, None, 5))  # the run's own data
    plain = export(plain_run, tmp_path / "plain")
    result = export(plain_run, tmp_path / "recalibrated", recalibrate_bn=5)
    assert load_spec(result.folder).extra["recalibrated_bn"] == 5
    assert _standardized_outputs(load_generator(plain.folder)[0], inputs) > 0.05
    assert _standardized_outputs(load_generator(result.folder)[0], inputs) < 1e-3
    # ONNX carries the same statistics (export checks parity with the recalibrated weights).
    onnx = export(plain_run, tmp_path / "onnx", "onnx", recalibrate_bn=5)
    torch_out = load_model(result.folder, runtime="torch").runtime(inputs.numpy())
    onnx_out = load_model(onnx.folder, runtime="onnx").runtime(inputs.numpy())
    plain_out = load_model(plain.folder, runtime="torch").runtime(inputs.numpy())
    assert abs(onnx_out - torch_out).max() < 1e-4 < abs(plain_out - torch_out).max()


def test_export_cli_recalibrates_from_a_folder_of_inputs(plain_run, synth_labels, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["export", str(plain_run), "--out", str(out), "--recalibrate-bn", "3"]
    assert main([*argv, "--calibration", str(synth_labels / "val" / "A")]) == 0
    assert "exported safetensors" in capsys.readouterr().out
    assert load_spec(out).extra["recalibrated_bn"] == 3


def test_export_refuses_recalibration_it_cannot_serve(plain_run, synth_labels, tmp_path):
    with pytest.raises(CheckpointError, match="inference mode 'sample' does not use"):
        export(plain_run, tmp_path / "a", inference_mode="sample", recalibrate_bn=4)
    with pytest.raises(CheckpointError, match="recalibrate_bn must be 0"):
        export(plain_run, tmp_path / "b", recalibrate_bn=-1)
    spec = GeneratorSpec(
        GeneratorArchitecture(num_downs=5, base_width=8, norm="instance"), 3, 3, train_size=32
    )
    folder = save_model_folder(tmp_path / "instance", UNetGenerator(3, 3, 5, 8, "instance"), spec)
    with pytest.raises(CheckpointError, match="needs calibration images"):
        export(folder, tmp_path / "c", recalibrate_bn=4)  # a bare folder names no dataset
    with pytest.raises(CheckpointError, match="no batch norm \\(norm 'instance'\\)"):
        export(folder, tmp_path / "d", recalibrate_bn=4, calibration=synth_labels)
    assert not any((tmp_path / name).exists() for name in "abcd")
