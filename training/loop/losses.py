"""Adversarial losses for the PatchGAN (vanilla, least-squares, hinge) and the history pool."""

from __future__ import annotations

import torch
import torch.nn.functional as functional


class GANLoss:
    """The adversarial objective on the discriminator's per-patch logits.

    ``vanilla`` is binary cross-entropy on logits (the paper), ``lsgan`` least squares, and
    ``hinge`` the hinge loss (for the generator: -mean(D(fake))).
    """

    def __init__(self, mode: str = "vanilla"):
        if mode not in ("vanilla", "lsgan", "hinge"):
            raise ValueError(f"unknown gan mode {mode!r}")
        self.mode = mode

    def discriminator(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        logits = logits.float()
        if self.mode == "vanilla":
            target = torch.ones_like(logits) if real else torch.zeros_like(logits)
            return functional.binary_cross_entropy_with_logits(logits, target)
        if self.mode == "lsgan":
            return ((logits - (1.0 if real else 0.0)) ** 2).mean()
        return (
            functional.relu(1.0 - logits).mean() if real else functional.relu(1.0 + logits).mean()
        )

    def generator(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.mode == "hinge":
            return -logits.mean()
        return self.discriminator(logits, real=True)

    def threshold(self) -> float:
        """The logit above which D calls a patch real."""
        return 0.5 if self.mode == "lsgan" else 0.0


class HistoryPool:
    """A buffer of past (A, fake B) pairs shown to D in place of some fresh ones.

    Returns a batch in which each element is, with probability 0.5, swapped for a stored
    pair (Shrivastava et al. 2017). Size 0 passes batches through.
    """

    def __init__(self, size: int, generator: torch.Generator | None = None):
        self.size = size
        self.conditions: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []
        self.random = generator

    def query(self, condition: torch.Tensor, image: torch.Tensor):
        if self.size == 0:
            return condition, image
        out_conditions, out_images = [], []
        for one_condition, one_image in zip(condition, image, strict=True):
            one_condition, one_image = one_condition.detach(), one_image.detach()
            if len(self.images) < self.size:
                self.conditions.append(one_condition)
                self.images.append(one_image)
                out_conditions.append(one_condition)
                out_images.append(one_image)
                continue
            if torch.rand((), generator=self.random).item() < 0.5:
                slot = int(torch.randint(0, self.size, (), generator=self.random).item())
                out_conditions.append(self.conditions[slot])
                out_images.append(self.images[slot])
                self.conditions[slot], self.images[slot] = one_condition, one_image
            else:
                out_conditions.append(one_condition)
                out_images.append(one_image)
        return torch.stack(out_conditions), torch.stack(out_images)
