"""The named terms of the discriminator's and the generator's losses, built from the config.

Each term is one unit: what it adds to D's loss and to G's loss, by name, with its weight, and the
statistics it logs beside them (accuracies, which no loss sums). :class:`Objective` runs the
terms of a step in their registration order (:data:`TERMS`), sums the weighted losses, and hands
every value to the log under its name. Adding a loss is one :class:`Term` subclass, its config
field, one line in :data:`TERMS` and a test; the loop never learns its details.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.color_bins import ab_bins
from model.processing import rgb_to_lab
from model.spec import GeneratorSpec
from training.config import Config, ConfigError
from training.data.datasets import PairedDataset
from training.loop.color_loss import ColorClassificationLoss, estimate_prior
from training.loop.discriminator_augment import PairAugment
from training.loop.losses import (
    GANLoss,
    R1Penalty,
    SemanticLoss,
    feature_matching_loss,
    focal_frequency_loss,
)
from training.loop.sampling import spread

logger = logging.getLogger(__name__)

Losses = dict[str, torch.Tensor]
# Training images the color prior of the classification loss is counted over.
PRIOR_IMAGES = 256


@dataclass
class Verdicts:
    """What a discriminator said of a generated and a real batch (and its activations, for
    feature matching)."""

    fake: torch.Tensor | list[torch.Tensor]
    real: torch.Tensor | list[torch.Tensor] | None = None
    features_fake: list | None = None
    features_real: list | None = None


class Judge:
    """Shows pairs to the conditional discriminator: through DiffAugment, under autocast.

    ``trained`` is the module D's step runs (DDP-wrapped or compiled when asked); ``frozen`` the
    one G's step runs, whose weights take no gradient there.
    """

    def __init__(self, trained: nn.Module, frozen: nn.Module, augment: PairAugment, autocast):
        self.trained, self.frozen, self.augment, self.autocast = trained, frozen, augment, autocast

    def for_discriminator(self, real_a, real_b, pool_a, pool_fake) -> Verdicts:
        judged_fake, judged_real = (pool_a, pool_fake), (real_a, real_b)
        if self.augment:
            judged_fake = self.augment(*judged_fake, self.augment.draw(pool_fake))
            judged_real = self.augment(*judged_real, self.augment.draw(real_b))
        with self.autocast():
            fake = self.trained(*judged_fake)
            real = self.trained(*judged_real)
        return Verdicts(fake, real)

    def for_generator(self, real_a, real_b, fake_b, features: bool) -> Verdicts:
        judged_fake, judged_real = (real_a, fake_b), (real_a, real_b)
        if self.augment:
            # One draw for both pairs: feature matching compares them position by position.
            draws = self.augment.draw(fake_b)
            judged_fake = self.augment(*judged_fake, draws)
            judged_real = self.augment(*judged_real, draws)
        with self.autocast():
            if not features:
                return Verdicts(self.frozen(*judged_fake))
            with torch.no_grad():
                _, features_real = self.frozen(*judged_real, features=True)
            fake, features_fake = self.frozen(*judged_fake, features=True)
        return Verdicts(fake, features_fake=features_fake, features_real=features_real)


@dataclass
class DiscriminatorBatch:
    """One D update's pairs: the real ones and the generated ones shown (after the pool);
    ``number`` counts D updates over the run."""

    real_a: torch.Tensor
    real_b: torch.Tensor
    pool_a: torch.Tensor
    pool_fake: torch.Tensor
    number: int
    judge: Judge

    @functools.cached_property
    def verdicts(self) -> Verdicts:
        return self.judge.for_discriminator(self.real_a, self.real_b, self.pool_a, self.pool_fake)


@dataclass
class GeneratorBatch:
    """G's update: the real pair, G's output and (for a binned head) its bin logits."""

    real_a: torch.Tensor
    real_b: torch.Tensor
    fake_b: torch.Tensor
    bin_logits: torch.Tensor | None
    judge: Judge | None
    features: bool

    @functools.cached_property
    def verdicts(self) -> Verdicts:
        return self.judge.for_generator(self.real_a, self.real_b, self.fake_b, self.features)


@dataclass
class TermContext:
    """What the terms are built from besides the config."""

    config: Config
    spec: GeneratorSpec
    device: torch.device
    train_set: PairedDataset
    # The discriminators by name: as D's step runs them (compiled when asked), the same never
    # compiled (for R1, which differentiates D's gradient), and as G's step runs them.
    trained: dict[str, nn.Module]
    eager: dict[str, nn.Module]
    frozen: dict[str, nn.Module]
    autocast: Callable[[], contextlib.AbstractContextManager]


class Term:
    """One part of the losses. ``weights`` names the losses it adds and their weights; every
    other value it returns is logged only."""

    weights: dict[str, float]
    logged: tuple[str, ...]  # every name it returns, losses first
    needs_features = False  # G's step asks D for its activations

    def discriminator(self, batch: DiscriminatorBatch) -> Losses:
        return {}

    def generator(self, batch: GeneratorBatch) -> Losses:
        return {}

    def follow_schedule(self, lr_factor: float) -> None:
        """Set ``weights`` for the point the run has reached: ``lr_factor`` is the learning
        rate's share of ``train.lr``, 1 until the decay and 0 at its end. Most keep theirs."""


class SemanticTerm(Term):
    """OASIS's segmenting discriminator (``train.lambda_semantic``): it labels real photos with
    their map's classes and generated ones "fake"; G is asked for images it labels rightly."""

    def __init__(self, context: TermContext):
        train = context.config.train
        self.trained = context.trained["semantic_discriminator"]
        self.frozen = context.frozen["semantic_discriminator"]
        self.loss = SemanticLoss(semantic_ignore(context.spec, train.semantic_ignore_names))
        self.autocast = context.autocast
        self.weights = {"D_sem": 1.0, "G_sem": train.lambda_semantic}
        self.logged = ("G_sem", "D_sem", "D_sem_acc")

    @classmethod
    def build(cls, context: TermContext) -> Term | None:
        return cls(context) if context.config.train.lambda_semantic > 0 else None

    def discriminator(self, batch: DiscriminatorBatch) -> Losses:
        # Undisturbed by d_augment: the classes are read pixel by pixel from A.
        with self.autocast():
            fake = self.trained(batch.pool_fake)
            real = self.trained(batch.real_b)
        loss = 0.5 * (self.loss.fake(fake, batch.pool_a) + self.loss.real(real, batch.real_a))
        return {"D_sem": loss, "D_sem_acc": self.loss.accuracy(real, batch.real_a)}

    def generator(self, batch: GeneratorBatch) -> Losses:
        with self.autocast():
            fooled = self.frozen(batch.fake_b)
        return {"G_sem": self.loss.real(fooled, batch.real_a)}


class AdversarialTerm(Term):
    """The conditional GAN (``train.lambda_gan``, ``train.gan_mode``): D tells real pairs from
    generated ones, G tries to fool it."""

    def __init__(self, context: TermContext):
        train = context.config.train
        self.gan_loss = GANLoss(train.gan_mode)
        self.weights = {"D_fake": 0.5, "D_real": 0.5, "G_GAN": train.lambda_gan}
        self.logged = ("G_GAN", "D_real", "D_fake", "D_acc_real", "D_acc_fake")

    @classmethod
    def build(cls, context: TermContext) -> Term | None:
        return cls(context) if context.config.train.lambda_gan > 0 else None

    def discriminator(self, batch: DiscriminatorBatch) -> Losses:
        verdicts, gan = batch.verdicts, self.gan_loss
        return {
            "D_fake": gan.discriminator(verdicts.fake, real=False),
            "D_real": gan.discriminator(verdicts.real, real=True),
            "D_acc_real": gan.accuracy(verdicts.real, real=True),
            "D_acc_fake": gan.accuracy(verdicts.fake, real=False),
        }

    def generator(self, batch: GeneratorBatch) -> Losses:
        return {"G_GAN": self.gan_loss.generator(batch.verdicts.fake)}


class FeatureMatchingTerm(Term):
    """pix2pixHD's feature matching (``train.lambda_feat``): G matches D's activations on the
    real pair, whose activations are targets only."""

    needs_features = True

    def __init__(self, context: TermContext):
        self.weights = {"G_feat": context.config.train.lambda_feat}
        self.logged = ("G_feat",)

    @classmethod
    def build(cls, context: TermContext) -> Term | None:
        return cls(context) if context.config.train.lambda_feat > 0 else None

    def generator(self, batch: GeneratorBatch) -> Losses:
        verdicts = batch.verdicts
        return {"G_feat": feature_matching_loss(verdicts.features_fake, verdicts.features_real)}


class ReconstructionTerm(Term):
    """The L1 distance of G's output to B (``train.lambda_l1``), always on; with
    ``train.l1_decay`` its weight falls with the learning rate, by that share of it at the end;
    with ``train.l1_pool`` it compares the means of pixel blocks of that side."""

    def __init__(self, context: TermContext):
        self.weight = context.config.train.lambda_l1
        self.decay = context.config.train.l1_decay
        self.pool = context.config.train.l1_pool
        self.weights = {"G_L1": self.weight}
        self.logged = ("G_L1",)

    def follow_schedule(self, lr_factor: float) -> None:
        if self.decay:
            self.weights["G_L1"] = self.weight * (1.0 - self.decay * (1.0 - lr_factor))

    @classmethod
    def build(cls, context: TermContext) -> Term | None:
        return cls(context)

    def generator(self, batch: GeneratorBatch) -> Losses:
        fake, real = batch.fake_b.float(), batch.real_b
        if self.pool > 1:
            fake = torch.nn.functional.avg_pool2d(fake, self.pool)
            real = torch.nn.functional.avg_pool2d(real.float(), self.pool)
        return {"G_L1": torch.nn.functional.l1_loss(fake, real)}


class FrequencyTerm(Term):
    """The focal frequency loss of G's output against B (``train.lambda_frequency``)."""

    def __init__(self, context: TermContext):
        self.weights = {"G_freq": context.config.train.lambda_frequency}
        self.logged = ("G_freq",)

    @classmethod
    def build(cls, context: TermContext) -> Term | None:
        return cls(context) if context.config.train.lambda_frequency > 0 else None

    def generator(self, batch: GeneratorBatch) -> Losses:
        return {"G_freq": focal_frequency_loss(batch.fake_b, batch.real_b)}


class ColorClassificationTerm(Term):
    """The rebalanced cross-entropy over ab bins (``train.color_loss = "classification"``,
    weighted by ``train.lambda_classification``), on the binned head's logits."""

    def __init__(self, context: TermContext):
        self.loss = color_classification_loss(context.spec, context.train_set, context.device)
        self.weights = {"G_class": context.config.train.lambda_classification}
        self.logged = ("G_class",)

    @classmethod
    def build(cls, context: TermContext) -> Term | None:
        return cls(context) if context.config.train.color_loss == "classification" else None

    def generator(self, batch: GeneratorBatch) -> Losses:
        return {"G_class": self.loss(batch.bin_logits, batch.real_b)}


class R1Term(Term):
    """The lazy R1 penalty on D's gradient at real pairs (``train.r1_gamma``,
    ``train.r1_every``), on its own fp32 pass; 0 on the D steps between its updates."""

    def __init__(self, context: TermContext):
        train = context.config.train
        self.penalty = R1Penalty(train.r1_gamma, train.r1_every)
        self.discriminator_module = context.eager["discriminator"]
        self.weights = {"D_r1": 1.0}
        self.logged = ("D_r1",)

    @classmethod
    def build(cls, context: TermContext) -> Term | None:
        return cls(context) if context.config.train.r1_gamma > 0 else None

    def discriminator(self, batch: DiscriminatorBatch) -> Losses:
        # D steps are counted over the run, so a resumed run keeps the rhythm.
        if not self.penalty.due(batch.number):
            return {}
        return {"D_r1": self.penalty(self.discriminator_module, batch.real_a, batch.real_b)}


# The terms a run may have, in the order a step computes them.
TERMS: tuple[type[Term], ...] = (
    SemanticTerm,
    AdversarialTerm,
    FeatureMatchingTerm,
    ReconstructionTerm,
    FrequencyTerm,
    ColorClassificationTerm,
    R1Term,
)


class Objective:
    """The terms of one run: runs them for D's and G's updates and sums their weighted losses."""

    def __init__(self, terms: list[Term], judge: Judge | None):
        self.terms = terms
        self.judge = judge
        self.weights = self._gather_weights()
        self.needs_features = any(term.needs_features for term in terms)

    def follow_schedule(self, lr_factor: float) -> None:
        """Weights for the point of the learning-rate schedule reached (see ``Term``)."""
        for term in self.terms:
            term.follow_schedule(lr_factor)
        self.weights = self._gather_weights()

    def _gather_weights(self) -> dict[str, float]:
        return {name: w for term in self.terms for name, w in term.weights.items()}

    @property
    def names(self) -> tuple[str, ...]:
        """Every logged name, term by term."""
        return tuple(name for term in self.terms for name in term.logged)

    @property
    def discriminator_names(self) -> tuple[str, ...]:
        """The names that D's update computes (its losses and accuracies)."""
        return tuple(name for name in self.names if name.startswith("D_"))

    @property
    def adversarial(self) -> bool:
        """Whether any term trains a discriminator."""
        return bool(self.discriminator_names)

    def discriminator_losses(self, real_a, real_b, pool_a, pool_fake, number: int) -> Losses:
        """One D update's losses and statistics; ``number`` counts D updates over the run."""
        batch = DiscriminatorBatch(real_a, real_b, pool_a, pool_fake, number, self.judge)
        values: Losses = {}
        for term in self.terms:
            values.update(term.discriminator(batch))
        return values

    def generator_losses(self, real_a, real_b, fake_b, bin_logits=None) -> Losses:
        """G's losses on its output ``fake_b`` (and a binned head's ``bin_logits``)."""
        batch = GeneratorBatch(real_a, real_b, fake_b, bin_logits, self.judge, self.needs_features)
        values: Losses = {}
        for term in self.terms:
            values.update(term.generator(batch))
        return values

    def total(self, values: Losses) -> torch.Tensor:
        """The weighted sum of the losses among ``values`` (accuracies are left out)."""
        losses = [
            self.weights[name] * value for name, value in values.items() if name in self.weights
        ]
        return functools.reduce(torch.add, losses)


def build_objective(context: TermContext, augment: PairAugment) -> Objective:
    """The config's terms, in :data:`TERMS` order."""
    terms = [term for kind in TERMS if (term := kind.build(context)) is not None]
    judge = None
    if "discriminator" in context.trained:
        judge = Judge(
            context.trained["discriminator"],
            context.frozen["discriminator"],
            augment,
            context.autocast,
        )
    return Objective(terms, judge)


def semantic_ignore(spec: GeneratorSpec, names: tuple[str, ...]) -> tuple[int, ...]:
    """The one-hot channels of the palette's classes ``names``."""
    palette = [label.name for label in spec.palette]
    unknown = [name for name in names if name not in palette]
    if unknown:
        raise ConfigError(
            f"train.semantic_ignore names {', '.join(map(repr, unknown))}, not a class of "
            f"the palette ({', '.join(palette) or 'no palette'})"
        )
    return tuple(palette.index(name) for name in names)


def color_classification_loss(
    spec: GeneratorSpec, train_set: PairedDataset, device: torch.device
) -> ColorClassificationLoss:
    """The rebalanced loss, its prior counted over training images spread evenly over the
    split, as augmented in the first epoch."""
    grid = spec.architecture.ab_grid
    centers = ab_bins(grid)
    indices = spread(min(PRIOR_IMAGES, len(train_set)), len(train_set))
    targets = (rgb_to_lab(train_set.arrays(index)[1])[..., 1:] for index in indices)
    prior = estimate_prior(targets, centers, grid)
    logger.info(
        "color classification: %d ab bins; prior over %d pixels of %d training images has "
        "entropy %.2f bits (uniform %.2f); rebalancing weights %.2f..%.2f",
        prior.num_bins,
        prior.pixels,
        prior.images,
        prior.entropy_bits,
        np.log2(prior.num_bins),
        prior.weights.min(),
        prior.weights.max(),
    )
    return ColorClassificationLoss(centers, prior.weights, grid, device=device)
