"""The networks a run trains: the generator and its discriminators by name, built and initialized
from the config, and the moving average of the generator's weights."""

from __future__ import annotations

import torch
from torch import nn

from model.networks import build_discriminator, build_generator, init_weights, spectral_normalize
from model.spec import GeneratorSpec
from training.config import SEMANTIC_LEVELS, Config


def build_networks(config: Config, spec: GeneratorSpec) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The generator and the discriminators (by the name their weights take in a checkpoint),
    initialized; in the order that fixes the initial weights for a seed."""
    generator = build_generator(spec.architecture, spec.in_channels, spec.out_channels)
    discriminators = build_discriminators(config, spec.in_channels, spec.out_channels)
    init_weights(generator)
    init_weights(discriminators["discriminator"])
    if config.discriminator.spectral_norm:
        spectral_normalize(discriminators["discriminator"])  # after the init, which it undoes
    discriminators |= build_extra_discriminators(config, spec.in_channels, spec.out_channels)
    return generator, discriminators


def build_discriminators(config: Config, in_channels: int, out_channels: int):
    """The conditional PatchGAN, by the name its weights take in a checkpoint."""
    discriminator = config.discriminator
    return {
        "discriminator": build_discriminator(
            in_channels=in_channels + out_channels,
            base_width=discriminator.base_width,
            n_layers=discriminator.n_layers,
            norm=discriminator.norm,
            num_scales=discriminator.num_scales,
        )
    }


# The discriminators that terms bring, by name, and the option that asks for each.
DISCRIMINATOR_OPTIONS = {"semantic_discriminator": "train.lambda_semantic"}


def build_extra_discriminators(config: Config, in_channels: int, out_channels: int):
    """The discriminators that terms bring, initialized: OASIS's segmenting one
    (``train.lambda_semantic``), whose classes are the map's one-hot channels."""
    extra = {}
    if config.train.lambda_semantic > 0:
        semantic = build_discriminator(
            kind="semantic",
            in_channels=out_channels,
            num_classes=in_channels,
            base_width=config.discriminator.semantic_width,
            levels=SEMANTIC_LEVELS,
        )
        init_weights(semantic)
        extra["semantic_discriminator"] = spectral_normalize(semantic)
    return extra


@torch.no_grad()
def update_average(average: nn.Module, generator: nn.Module, step: int, decay: float) -> None:
    """Move the average a step towards the generator's new weights, ``step`` updates done before
    this one.

    The decay ramps up as (1 + step) / (10 + step) to ``decay``: at a fixed 0.999 the random
    initial weights would still make up 37% of the average after 1000 steps.
    """
    decay = min(decay, (1 + step) / (10 + step))
    for averaged, weight in zip(average.parameters(), generator.parameters(), strict=True):
        averaged.lerp_(weight, 1.0 - decay)
    # Batch-norm running statistics are copied, not averaged: they are already a moving average,
    # of the activations of the generator that sees the training batches, and an average of that
    # average would lag a thousand steps behind. (The step counter in num_batches_tracked cannot
    # be averaged at all.)
    for averaged, buffer in zip(average.buffers(), generator.buffers(), strict=True):
        averaged.copy_(buffer)
