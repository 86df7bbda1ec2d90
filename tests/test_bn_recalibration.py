"""train.recalibrate_bn: the served generator's batch-norm statistics measured on itself, over
training pairs as served (whole, dropout off), instead of the last training batches' average."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import latest_checkpoint, load_generator
from model.networks import UNetGenerator, init_weights
from model.recalibration import batch_norms, recalibrate_batch_norm
from tests.conftest import tiny_config
from training.config import ConfigError
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
