"""The history pool: past generated pairs shown to the discriminator in place of fresh ones."""

from __future__ import annotations

import torch


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
        shown = []
        for pair in zip(condition.detach(), image.detach(), strict=True):
            if len(self.images) < self.size:
                self.conditions.append(pair[0])
                self.images.append(pair[1])
            elif torch.rand((), generator=self.random).item() < 0.5:
                slot = int(torch.randint(0, self.size, (), generator=self.random).item())
                stored = self.conditions[slot], self.images[slot]
                self.conditions[slot], self.images[slot] = pair
                pair = stored
            shown.append(pair)
        conditions, images = zip(*shown, strict=True)
        return torch.stack(conditions), torch.stack(images)
