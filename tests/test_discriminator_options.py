"""The discriminator's training options: multi-scale PatchGAN, feature matching, spectral norm,
D's own learning rate (TTUR), the lazy R1 penalty and differentiable augmentation (DiffAugment)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional

from model.checkpoint import latest_checkpoint
from model.networks import (
    MultiScaleDiscriminator,
    PatchDiscriminator,
    UNetGenerator,
    build_discriminator,
    init_weights,
    spectral_normalize,
)
from tests.conftest import LOGGED_SHORT_RUN, tiny_config, train_with_a_break
from training.config import ConfigError, load_config
from training.loop import trainer as trainer_module
from training.loop.discriminator_augment import PairAugment
from training.loop.losses import GANLoss, R1Penalty, feature_matching_loss
from training.loop.trainer import Trainer

LABELS = {"data.input_kind": "label_map"}
# Two scales at 32 px: the coarser sees 16 px, enough for two layers (12 px).
SHAPE = {"in_channels": 6, "base_width": 8, "n_layers": 2}


def pair(batch: int = 2, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 3, size, size, generator=generator),
        torch.randn(batch, 3, size, size, generator=generator),
    )


def pooled(x: torch.Tensor) -> torch.Tensor:
    return functional.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


def test_multi_scale_discriminator_judges_pooled_pairs_with_its_own_weights_per_scale():
    discriminator = MultiScaleDiscriminator(3, **SHAPE | {"n_layers": 1})
    init_weights(discriminator)
    condition, image = pair()

    outputs = discriminator(condition, image)

    assert [tuple(output.shape) for output in outputs] == [
        (2, 1, 14, 14),
        (2, 1, 6, 6),
        (2, 1, 2, 2),
    ]
    first, second, third = discriminator.scales
    assert torch.equal(outputs[0], first(condition, image))
    assert torch.allclose(outputs[1], second(pooled(condition), pooled(image)))
    twice = pooled(pooled(torch.cat([condition, image], dim=1)))
    assert torch.allclose(outputs[2], third(twice[:, :3], twice[:, 3:]), atol=1e-6)
    assert not torch.equal(first.model[0].weight, second.model[0].weight)


def test_one_scale_is_the_plain_patch_discriminator_with_the_old_keys_and_outputs():
    torch.manual_seed(0)
    plain = PatchDiscriminator(**SHAPE)
    torch.manual_seed(0)
    built = build_discriminator(**SHAPE, num_scales=1)

    assert type(built) is PatchDiscriminator
    assert list(built.state_dict()) == list(plain.state_dict())
    assert list(plain.state_dict())[:3] == ["model.0.weight", "model.0.bias", "model.2.weight"]
    condition, image = pair()
    logits = built(condition, image)
    assert torch.equal(logits, plain(condition, image))
    with_features, layers = built(condition, image, features=True)
    assert torch.equal(with_features, logits)
    assert len(layers) == SHAPE["n_layers"] + 1  # one activation per LeakyReLU


def test_trainer_with_one_scale_keeps_the_discriminator_checkpoint_keys(label_dataset, tmp_path):
    trainer = Trainer(tiny_config(label_dataset, tmp_path, **LABELS), progress=False)
    expected = PatchDiscriminator(trainer.spec.in_channels + 3, base_width=8).state_dict()
    assert list(trainer.discriminator.state_dict()) == list(expected)


@pytest.mark.parametrize("num_scales", [1, 2])
def test_feature_matching_is_zero_for_identical_pairs_and_trains_the_generator(num_scales):
    torch.manual_seed(0)
    discriminator = build_discriminator(**SHAPE, num_scales=num_scales).requires_grad_(False)
    generator = UNetGenerator(3, 3, num_downs=5, base_width=8)
    init_weights(discriminator)
    init_weights(generator)
    condition, real = pair()
    _, real_features = discriminator(condition, real, features=True)

    _, same_features = discriminator(condition, real.clone(), features=True)
    assert feature_matching_loss(same_features, real_features).item() == 0.0

    _, fake_features = discriminator(condition, generator(condition), features=True)
    loss = feature_matching_loss(fake_features, real_features)
    assert loss.item() > 0
    loss.backward()
    gradients = [p.grad for p in generator.parameters()]
    assert all(g is not None for g in gradients) and any(g.abs().sum() > 0 for g in gradients)


def test_feature_matching_weighs_layers_and_scales_like_pix2pixhd():
    # Two scales of three layers, every activation off by 1: 4/3 per layer, 1/2 per scale.
    real = [[torch.zeros(1, 2, 4, 4) for _ in range(3)] for _ in range(2)]
    fake = [[torch.ones(1, 2, 4, 4) for _ in range(3)] for _ in range(2)]
    assert feature_matching_loss(fake, real).item() == pytest.approx(4.0)


def test_gan_loss_averages_the_scales():
    loss = GANLoss("lsgan")
    scales = [torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)]
    assert loss.discriminator(scales, real=True).item() == pytest.approx(0.5)
    assert loss.accuracy(scales, real=True).item() == pytest.approx(0.5)


def test_spectral_norm_holds_every_convolution_at_singular_value_one():
    discriminator = build_discriminator(**SHAPE, num_scales=2)
    init_weights(discriminator)
    spectral_normalize(discriminator)
    condition, image = pair()
    for _ in range(5):  # one power iteration per training forward
        discriminator(condition, image)

    convolutions = [m for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == 2 * (SHAPE["n_layers"] + 2)
    for convolution in convolutions:
        largest = torch.linalg.matrix_norm(convolution.weight.flatten(1).detach(), ord=2)
        assert largest.item() == pytest.approx(1.0, abs=0.01)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_d_learning_rate_reaches_its_optimizer_and_decays_with_the_schedule(
    label_dataset, tmp_path
):
    overrides = {"train.lr": "0.0002", "train.lr_d": "0.0008", "train.epochs_decay": "2"}
    overrides["train.epochs"] = "1"
    trainer = Trainer(tiny_config(label_dataset, tmp_path, **LABELS, **overrides), progress=False)
    assert trainer.optimizer_g.param_groups[0]["lr"] == pytest.approx(2e-4)
    assert trainer.optimizer_d.param_groups[0]["lr"] == pytest.approx(8e-4)
    for _ in range(2 * trainer.steps_per_epoch):
        trainer.scheduler_g.step()
        trainer.scheduler_d.step()
    rate_g, rate_d = trainer.scheduler_g.get_last_lr()[0], trainer.scheduler_d.get_last_lr()[0]
    assert 0 < rate_g < 2e-4 and rate_d == pytest.approx(4 * rate_g)

    same = Trainer(tiny_config(label_dataset, tmp_path, name="same", **LABELS), progress=False)
    assert same.optimizer_d.param_groups[0]["lr"] == same.optimizer_g.param_groups[0]["lr"]


@pytest.mark.parametrize("num_scales", [1, 2])
def test_r1_penalty_is_the_squared_gradient_of_the_mean_patch_logit(num_scales):
    torch.manual_seed(0)
    discriminator = build_discriminator(**SHAPE | {"n_layers": 1}, num_scales=num_scales)
    init_weights(discriminator)
    condition, image = pair()
    gamma, every = 2.5, 4

    # By hand: each scale's gradient of the images' mean logits, summed over scales.
    expected = 0.0
    image_leaf = image.clone().requires_grad_(True)
    outputs = discriminator(condition, image_leaf)
    for logits in outputs if num_scales > 1 else [outputs]:
        (gradient,) = torch.autograd.grad(logits.mean(dim=(1, 2, 3)).sum(), image_leaf)
        expected += gradient.pow(2).sum(dim=(1, 2, 3)).mean().item()
    expected *= gamma / 2 * every

    penalty = R1Penalty(gamma, every)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # computed in fp32 all the same
        term = penalty(discriminator, condition, image)
    assert term.dtype == torch.float32
    assert term.item() == pytest.approx(expected, rel=1e-5)
    term.backward()  # the graph runs through the gradient: D's convolutions get one
    convolutions = [m for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convolutions)
    assert [step for step in range(40) if penalty.due(step)] == [
        0,
        4,
        8,
        12,
        16,
        20,
        24,
        28,
        32,
        36,
    ]
    assert not any(R1Penalty(0.0).due(step) for step in range(40))


def test_pair_augment_moves_and_cuts_both_sides_alike_and_jitters_only_the_image():
    condition = torch.arange(2 * 32.0).view(1, 2, 8, 4).expand(2, 2, 8, 4)
    image = torch.arange(3 * 32.0).view(1, 3, 8, 4).expand(2, 3, 8, 4).requires_grad_(True)
    # Sample 0 moves down 1 and left 1 (the shift is at most 1/8 of the side: 1 and 0 here).
    shift = {"shift": torch.tensor([[1, -1], [0, 0]])}
    moved_condition, moved_image = PairAugment(("translation",))(condition, image, shift)
    assert torch.equal(moved_condition[1], condition[1])
    assert torch.equal(moved_condition[0, :, 1:, :3], condition[0, :, :7, 1:])
    assert torch.equal(moved_image[0, :, 1:, :3], image[0, :, :7, 1:])
    assert moved_image[0, :, 0].abs().sum() == 0 and moved_image[0, :, :, 3].abs().sum() == 0

    # A box of half the side (4 x 2 here) centred on (4, 2) in sample 0, on (0, 0) in sample 1.
    centers = {"cutout": torch.tensor([[4, 2], [0, 0]])}
    cut_condition, cut_image = PairAugment(("cutout",))(condition, image, centers)
    holes = torch.zeros(2, 1, 8, 4, dtype=torch.bool)
    holes[0, :, 2:6, 1:3] = True
    holes[1, :, 0:2, 0:1] = True
    assert torch.equal(cut_condition, condition.masked_fill(holes, 0))
    assert torch.equal(cut_image, image.masked_fill(holes, 0))

    augment = PairAugment(("color", "translation", "cutout"))
    draws = augment.draw(image)
    assert set(draws) == {"brightness", "saturation", "contrast", "shift", "cutout"}
    assert draws["shift"].abs().amax() <= 1 and draws["shift"][:, 1].abs().amax() == 0
    color = PairAugment(("color",))
    jittered_condition, jittered_image = color(condition, image, color.draw(image))
    assert torch.equal(jittered_condition, condition)
    assert not torch.equal(jittered_image, image)
    # Differentiable in the image, as G learns through it.
    augment(condition, image, draws)[1].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    # The same draw transforms two pairs alike (G's fake and real pairs for feature matching).
    assert torch.equal(augment(condition, image, draws)[1], augment(condition, image, draws)[1])
    with pytest.raises(ValueError, match="rotation"):
        PairAugment(("rotation",))


def weights(folder):
    tensors = {f"G.{k}": v for k, v in load_file(str(folder / "generator.safetensors")).items()}
    tensors |= {
        f"D.{k}": v for k, v in load_file(str(folder / "discriminator.safetensors")).items()
    }
    return tensors


def test_training_with_every_option_under_fp16_finishes_and_resumes_exactly(
    label_dataset, tmp_path, monkeypatch
):
    # A real fp16 run needs a GPU; the CPU has fp16 autocast and a GradScaler as well.
    monkeypatch.setattr(trainer_module, "autocast_dtype", lambda precision, device: torch.float16)
    # 6 pairs at batch 2: 3 steps an epoch; R1 on D steps 0, 3, 6, 9 (steps 0, 1, 3, 4).
    common = {
        **LABELS,
        "discriminator.n_layers": "2",
        "discriminator.num_scales": "2",
        "discriminator.spectral_norm": "true",
        "train.lambda_feat": "10",
        "train.lr_d": "0.0004",
        "train.r1_gamma": "1",
        "train.r1_every": "3",
        "train.d_augment": "color, translation,cutout",
        "train.d_steps": "2",
        "train.precision": "fp16",
        **LOGGED_SHORT_RUN,
    }
    straight = tiny_config(label_dataset, tmp_path, name="straight", **common)
    trainer = Trainer(straight, progress=False)
    assert trainer.scaler_d.is_enabled()
    trainer.train()
    records = [json.loads(line) for line in (straight.run_dir / "metrics.jsonl").open()]
    train_records = [r for r in records if r["kind"] == "train"]
    assert len(train_records) == 6
    for record in train_records:
        values = [record[key] for key in ("G_GAN", "G_L1", "G_feat", "D_real", "D_fake", "D_r1")]
        assert all(torch.isfinite(torch.tensor(values))), record
        assert record["lr_d"] == pytest.approx(2 * record["lr"])
    assert [record["D_r1"] > 0 for record in train_records] == [
        True,
        True,
        False,
        True,
        True,
        False,
    ]
    assert all(record["G_feat"] > 0 for record in train_records)

    expected = weights(latest_checkpoint(straight.run_dir / "checkpoints"))
    actual = weights(train_with_a_break(label_dataset, tmp_path, 2, **common))
    assert expected.keys() == actual.keys()
    assert "D.scales.1.model.0.parametrizations.weight.original" in expected
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"discriminator.num_scales": "0"}, "discriminator.num_scales"),
        ({"train.lr_d": "-0.001"}, "train.lr_d"),
        ({"train.lambda_feat": "-1"}, "train.lambda_feat"),
        ({"train.lambda_feat": "nan"}, "train.lambda_feat"),
        ({"train.r1_gamma": "-1"}, "train.r1_gamma"),
        ({"train.r1_every": "0"}, "train.r1_every"),
        ({"train.lambda_feat": "10", "train.lambda_gan": "0"}, "train.lambda_feat"),
        ({"train.r1_gamma": "1", "train.lambda_gan": "0"}, "train.r1_gamma"),
        ({"discriminator.num_scales": "3", "data.crop_size": "64"}, "discriminator.num_scales"),
        ({"discriminator.spectral_norm": "maybe"}, "discriminator.spectral_norm"),
        ({"train.d_augment": "translation,rotation"}, "train.d_augment"),
    ],
)
def test_bad_discriminator_options_are_config_errors_naming_the_field(overrides, field):
    overrides = {"data.load_size": "64", "data.crop_size": "64", "generator.num_downs": "6"} | (
        overrides
    )
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, overrides)
