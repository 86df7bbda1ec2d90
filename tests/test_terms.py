"""The named loss terms (training.loop.terms): each term built from its own config field, the
objective's weighted sum and logged names, and the history pool that chooses what D is shown."""

from __future__ import annotations

import contextlib

import pytest
import torch

from model.networks import build_discriminator, init_weights
from model.spec import GeneratorArchitecture, GeneratorSpec, LabelClass
from training.config import Config, ConfigError
from training.loop.discriminator_augment import PairAugment
from training.loop.losses import GANLoss, feature_matching_loss, focal_frequency_loss
from training.loop.pool import HistoryPool
from training.loop.terms import (
    TERMS,
    AdversarialTerm,
    FeatureMatchingTerm,
    FrequencyTerm,
    R1Term,
    ReconstructionTerm,
    SemanticTerm,
    TermContext,
    build_objective,
)

PALETTE = tuple(LabelClass(i, name, (i * 80, 40, 200 - i * 60)) for i, name in enumerate("abc"))


def context(**train: float | str) -> TermContext:
    config = Config()
    for key, value in train.items():
        setattr(config.train, key, value)
    spec = GeneratorSpec(
        GeneratorArchitecture(num_downs=3, base_width=4), 3, 3, input_kind="label_map",
        palette=PALETTE, one_hot=True,
    )  # fmt: skip
    torch.manual_seed(0)
    networks = {"discriminator": build_discriminator(6, base_width=4, n_layers=1)}
    if config.train.lambda_semantic > 0:
        networks["semantic_discriminator"] = build_discriminator(
            3, kind="semantic", num_classes=3, base_width=4, levels=2
        )
    for network in networks.values():
        init_weights(network)
    return TermContext(
        config, spec, torch.device("cpu"), None, networks, networks, networks,
        contextlib.nullcontext,
    )  # fmt: skip


def pairs(batch: int = 2, size: int = 16):
    torch.manual_seed(1)
    classes = torch.randint(0, 3, (batch, size, size))
    real_a = torch.nn.functional.one_hot(classes, 3).permute(0, 3, 1, 2).float()
    return real_a, torch.rand(batch, 3, size, size) * 2 - 1


def test_each_term_is_built_by_its_own_option_and_runs_in_registration_order():
    plain = build_objective(context(lambda_gan=0.0), PairAugment())
    assert [type(term) for term in plain.terms] == [ReconstructionTerm]
    assert plain.names == ("G_L1",) and not plain.adversarial

    everything = build_objective(
        context(lambda_semantic=1.0, lambda_feat=10.0, r1_gamma=1.0), PairAugment()
    )
    kinds = [type(term) for term in everything.terms]
    assert kinds == [kind for kind in TERMS if kind in kinds]
    assert kinds == [SemanticTerm, AdversarialTerm, FeatureMatchingTerm, ReconstructionTerm, R1Term]
    names = ("D_sem", "D_sem_acc", "D_real", "D_fake", "D_acc_real", "D_acc_fake", "D_r1")
    assert everything.discriminator_names == names
    assert everything.needs_features


def test_the_total_is_the_weighted_sum_of_the_losses_and_leaves_accuracies_out():
    objective = build_objective(context(lambda_l1=100.0, lambda_gan=2.0), PairAugment())
    real_a, real_b = pairs()
    fake_b = (real_b + 0.3).requires_grad_(True)

    values = objective.generator_losses(real_a, real_b, fake_b)
    assert set(values) == {"G_GAN", "G_L1"}
    expected = 2.0 * values["G_GAN"] + 100.0 * values["G_L1"]
    torch.testing.assert_close(objective.total(values), expected)
    torch.testing.assert_close(values["G_L1"], torch.tensor(0.3), rtol=1e-5, atol=1e-6)

    values = objective.discriminator_losses(real_a, real_b, real_a, fake_b.detach(), number=0)
    assert set(values) == {"D_real", "D_fake", "D_acc_real", "D_acc_fake"}
    torch.testing.assert_close(objective.total(values), 0.5 * (values["D_real"] + values["D_fake"]))
    assert not values["D_acc_real"].requires_grad


def test_the_frequency_term_weighs_in_by_its_option():
    objective = build_objective(
        context(lambda_gan=0.0, lambda_l1=1.0, lambda_frequency=2.0), PairAugment()
    )
    assert [type(term) for term in objective.terms] == [ReconstructionTerm, FrequencyTerm]
    real_a, real_b = pairs()
    fake_b = (real_b * 0.5).requires_grad_(True)
    values = objective.generator_losses(real_a, real_b, fake_b)
    assert set(values) == {"G_L1", "G_freq"} and values["G_freq"] > 0
    torch.testing.assert_close(objective.total(values), values["G_L1"] + 2.0 * values["G_freq"])
    with pytest.raises(ConfigError, match="lambda_frequency"):
        context(lambda_frequency=-1.0).config.validate()


def test_the_l1_weight_falls_with_the_learning_rate_by_its_decay_share():
    objective = build_objective(context(lambda_l1=100.0, l1_decay=0.9), PairAugment())
    for lr_factor, weight in [(1.0, 100.0), (0.5, 55.0), (0.0, 10.0)]:
        objective.follow_schedule(lr_factor)
        assert objective.weights["G_L1"] == pytest.approx(weight)
    steady = build_objective(context(lambda_l1=100.0), PairAugment())
    steady.follow_schedule(0.0)
    assert steady.weights == {"G_L1": 100.0, "G_GAN": 1.0, "D_fake": 0.5, "D_real": 0.5}
    with pytest.raises(ConfigError, match="l1_decay"):
        context(l1_decay=1.5).config.validate()


def test_a_pooled_l1_sees_colors_and_layout_and_not_the_texture_inside_a_block():
    pooled = build_objective(context(lambda_gan=0.0, l1_pool=4), PairAugment())
    plain = build_objective(context(lambda_gan=0.0), PairAugment())
    real_a, real_b = pairs()
    # Texture that averages out over every 4 x 4 block: a +-0.5 checkerboard of period 2.
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    texture = 0.5 * (1 - 2 * ((rows + cols) % 2)).float()
    textured = (real_b + texture).requires_grad_(True)
    assert pooled.generator_losses(real_a, real_b, textured)["G_L1"].item() < 1e-6
    assert plain.generator_losses(real_a, real_b, textured)["G_L1"].item() > 0.4
    # A shift of color is a shift of every block's mean: the pooled L1 sees all of it.
    shifted = (real_b + 0.3).requires_grad_(True)
    loss = pooled.generator_losses(real_a, real_b, shifted)["G_L1"]
    torch.testing.assert_close(loss, torch.tensor(0.3), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert shifted.grad.abs().sum() > 0
    config = context(l1_pool=3).config
    refusal = r"train.l1_pool \(3\) must divide data.crop_size \(256\)"
    with pytest.raises(ConfigError, match=refusal):
        config.validate()
    with pytest.raises(ConfigError, match="l1_pool"):
        context(l1_pool=0).config.validate()


def test_the_focal_frequency_loss_leans_on_the_frequencies_most_wrong():
    torch.manual_seed(2)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    assert focal_frequency_loss(real, real).item() == 0.0
    # A blur leaves the low frequencies almost right and the high ones wrong. With every
    # frequency weighted alike (alpha 0) the loss is the plain spectral MSE, which by Parseval
    # is the pixel MSE; the focal weights keep the large (high-frequency) errors near full
    # weight and shrink the small ones.
    blurred = torch.nn.functional.avg_pool2d(real, 3, stride=1, padding=1, count_include_pad=False)
    plain = focal_frequency_loss(blurred, real, alpha=0.0)
    torch.testing.assert_close(plain, (blurred - real).square().mean(), rtol=1e-4, atol=1e-6)
    focal = focal_frequency_loss(blurred, real)
    assert 0 < focal < plain
    blurred.requires_grad_(True)
    focal_frequency_loss(blurred, real).backward()
    spectrum = torch.fft.fft2(blurred.grad).abs()
    high = spectrum[..., 12:20, 12:20].mean()  # around the Nyquist frequency
    low = spectrum[..., :3, :3].mean()
    assert high > 5 * low  # the gradient pushes the high frequencies back


def test_d_is_asked_once_per_step_whatever_the_terms_read():
    built = context(lambda_feat=10.0)
    calls = []
    discriminator = built.trained["discriminator"]

    def counting(*inputs, **options):
        calls.append(options.get("features", False))
        return type(discriminator).forward(discriminator, *inputs, **options)

    discriminator.forward = counting
    objective = build_objective(built, PairAugment())
    real_a, real_b = pairs()
    values = objective.generator_losses(real_a, real_b, real_b + 0.1)

    # One pass on the real pair (targets for feature matching) and one on the generated pair,
    # both with activations, shared by the adversarial and the feature-matching terms.
    assert calls == [True, True]
    logits, features_fake = discriminator(real_a, real_b + 0.1, features=True)
    _, features_real = discriminator(real_a, real_b, features=True)
    torch.testing.assert_close(values["G_GAN"], GANLoss().generator(logits))
    torch.testing.assert_close(
        values["G_feat"], feature_matching_loss(features_fake, features_real)
    )


def test_r1_adds_its_penalty_only_on_its_due_d_steps():
    objective = build_objective(context(r1_gamma=2.0, r1_every=4), PairAugment())
    real_a, real_b = pairs()
    due = objective.discriminator_losses(real_a, real_b, real_a, real_b, number=8)
    between = objective.discriminator_losses(real_a, real_b, real_a, real_b, number=9)
    assert due["D_r1"] > 0 and "D_r1" not in between
    assert objective.weights["D_r1"] == 1.0


def test_semantic_term_needs_the_palette_classes_it_ignores():
    with pytest.raises(ConfigError, match="train.semantic_ignore names 'sky'"):
        build_objective(context(lambda_semantic=1.0, semantic_ignore="sky"), PairAugment())
    objective = build_objective(context(lambda_semantic=1.0, semantic_ignore="b"), PairAugment())
    real_a, real_b = pairs()
    values = objective.generator_losses(real_a, real_b, real_b)
    assert values["G_sem"] > 0 and objective.weights["G_sem"] == 1.0


def test_the_pool_passes_through_at_size_zero_and_swaps_stored_pairs_once_full():
    condition, image = torch.arange(4.0).view(4, 1), torch.arange(4.0).view(4, 1) + 10
    off = HistoryPool(0)
    assert off.query(condition, image)[1] is image

    pool = HistoryPool(4, torch.Generator().manual_seed(0))
    first = pool.query(condition, image)
    assert torch.equal(first[1], image)  # filling: every pair shown as it is, and kept
    later = pool.query(condition + 100, image + 100)
    shown = later[1].flatten().tolist()
    # Each fresh pair is shown, or swapped for a stored one (whose condition comes with it).
    assert all(value in (10, 11, 12, 13) or value >= 110 for value in shown)
    assert torch.equal(later[0] + 10, later[1])
    assert any(value < 100 for value in shown) and len(pool.images) == 4
