"""DiffAugment for a conditional discriminator: random differentiable transforms of the pairs it
judges, real and generated alike."""

from __future__ import annotations

import torch

from training.config import D_AUGMENTS


class PairAugment:
    """DiffAugment (Zhao et al. 2020) for a conditional discriminator.

    Every pair D judges, real or generated, in D's step and in G's, goes through the same
    random family of transforms, each differentiable in the image, so G learns through them:
    ``color`` jitters B's brightness (+-0.5 in [-1, 1] units), saturation (x0..2) and contrast
    (x0.5..1.5); ``translation`` shifts A and B together by up to 1/8 of the side, filling with
    zeros; ``cutout`` zeroes one square of half the side in A and in B. A map's one-hot channels
    are never color-jittered. D, which sees few real pairs (facades has 400), cannot memorize
    them through the transforms; the transforms never reach G's output or L1.

    :meth:`draw` picks one transform per sample; G's step judges its fake and, for feature
    matching, the real pair under the same draw, so that the two sets of activations compare.
    """

    def __init__(self, policy: tuple[str, ...] = ()):
        unknown = set(policy) - set(D_AUGMENTS)
        if unknown:
            raise ValueError(f"unknown D augmentation {sorted(unknown)}; choose from {D_AUGMENTS}")
        self.policy = tuple(policy)

    def __bool__(self) -> bool:
        return bool(self.policy)

    def draw(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Random parameters for a batch shaped like ``like`` (N, C, H, W)."""
        count, _, height, width = like.shape
        uniform = lambda *shape: torch.rand(*shape, device=like.device)  # noqa: E731
        draws = {}
        if "color" in self.policy:
            draws["brightness"] = uniform(count, 1, 1, 1) - 0.5
            draws["saturation"] = uniform(count, 1, 1, 1) * 2
            draws["contrast"] = uniform(count, 1, 1, 1) + 0.5
        if "translation" in self.policy:
            limits = torch.tensor([height // 8, width // 8], device=like.device)
            draws["shift"] = (uniform(count, 2) * (2 * limits + 1)).floor().long() - limits
        if "cutout" in self.policy:
            sides = torch.tensor([height, width], device=like.device)
            draws["cutout"] = (uniform(count, 2) * sides).floor().long()
        return draws

    def __call__(
        self, condition: torch.Tensor, image: torch.Tensor, draws: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if "brightness" in draws:
            image = image + draws["brightness"].to(image.dtype)
            mean = image.mean(dim=1, keepdim=True)
            image = (image - mean) * draws["saturation"].to(image.dtype) + mean
            mean = image.mean(dim=(1, 2, 3), keepdim=True)
            image = (image - mean) * draws["contrast"].to(image.dtype) + mean
        if "shift" in draws:
            condition, image = (_translate(x, draws["shift"]) for x in (condition, image))
        if "cutout" in draws:
            keep = _cutout_mask(image, draws["cutout"])
            condition, image = condition * keep.to(condition.dtype), image * keep.to(image.dtype)
        return condition, image


def _grid(images: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices plus each sample's (dy, dx) offset: (N, H) and (N, W)."""
    height, width = images.shape[-2:]
    rows = torch.arange(height, device=images.device)[None] + offsets[:, :1]
    return rows, torch.arange(width, device=images.device)[None] + offsets[:, 1:]


def _box(rows: torch.Tensor, columns: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H, W): where 0 <= row < height and 0 <= column < width."""
    rows_inside, columns_inside = (rows >= 0) & (rows < height), (columns >= 0) & (columns < width)
    return rows_inside[:, :, None] & columns_inside[:, None]


def _translate(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Each image moved by its (dy, dx), zeros where nothing moved in."""
    height, width = images.shape[-2:]
    rows, columns = _grid(images, -shift)
    batch = torch.arange(len(images), device=images.device)[:, None, None]
    source_rows, source_columns = rows.clamp(0, height - 1), columns.clamp(0, width - 1)
    moved = images[batch, :, source_rows[:, :, None], source_columns[:, None]].permute(0, 3, 1, 2)
    return moved * _box(rows, columns, height, width)[:, None].to(images.dtype)


def _cutout_mask(images: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): 0 inside a box of half the side centred on each center, else 1."""
    down, across = (side // 2 for side in images.shape[-2:])
    offsets = torch.tensor([down // 2, across // 2], device=images.device) - centers
    return ~_box(*_grid(images, offsets), down, across)[:, None]
