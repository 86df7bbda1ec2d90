"""Translate large images in overlapping tiles blended smoothly, so memory stays bounded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model.processing import pad_to_multiple


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``length`` with tiles of ``tile`` overlapping by >= ``overlap``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    starts.append(length - tile)
    return starts


def blend_window(tile: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1-D weights: a linear ramp across the overlap on inner edges, flat elsewhere."""
    weights = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        ramp = np.linspace(0.0, 1.0, overlap + 2, dtype=np.float32)[1:-1]
        if not at_start:
            weights[:overlap] = ramp
        if not at_end:
            weights[-overlap:] = ramp[::-1]
    return weights


@dataclass
class TilePlan:
    """Where the tiles of one padded image lie, and the blended output being assembled."""

    padded: np.ndarray  # (1, C, H_pad, W_pad)
    size: tuple[int, int]  # original (H, W)
    tile: tuple[int, int]
    overlap: int
    rows: list[int]
    columns: list[int]
    total: np.ndarray | None = None
    weight_sum: np.ndarray | None = None
    boxes: list[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.boxes = [(top, left) for top in self.rows for left in self.columns]

    def crop(self, index: int) -> np.ndarray:
        top, left = self.boxes[index]
        return self.padded[0, :, top : top + self.tile[0], left : left + self.tile[1]]

    def add(self, index: int, output: np.ndarray) -> None:
        """Blend one tile's (C_out, th, tw) output into the result."""
        top, left = self.boxes[index]
        height, width = self.padded.shape[-2:]
        if self.total is None:
            self.total = np.zeros((output.shape[0], height, width), dtype=np.float32)
            self.weight_sum = np.zeros((1, height, width), dtype=np.float32)
        weight = (
            blend_window(self.tile[0], self.overlap, top == 0, top == self.rows[-1])[:, None]
            * blend_window(self.tile[1], self.overlap, left == 0, left == self.columns[-1])[None, :]
        )
        region = (slice(None), slice(top, top + self.tile[0]), slice(left, left + self.tile[1]))
        self.total[region] += np.asarray(output, dtype=np.float32) * weight
        self.weight_sum[region] += weight  # type: ignore[index]

    def result(self) -> np.ndarray:
        """(1, C_out, H, W) blended output, cropped back to the original size."""
        assert self.total is not None and self.weight_sum is not None, "no tile was added"
        blended = self.total / self.weight_sum
        return blended[None, :, : self.size[0], : self.size[1]]


def plan_tiles(image: np.ndarray, tile: int, overlap: int, multiple: int) -> TilePlan:
    """Pad (1, C, H, W) to ``multiple`` and lay tiles of ``tile`` (rounded up to it) over it."""
    tile = -(-tile // multiple) * multiple
    overlap = min(overlap, tile // 2)
    padded, size = pad_to_multiple(image, multiple)
    tile_h, tile_w = min(tile, padded.shape[-2]), min(tile, padded.shape[-1])
    return TilePlan(
        padded=padded,
        size=size,
        tile=(tile_h, tile_w),
        overlap=overlap,
        rows=tile_starts(padded.shape[-2], tile_h, overlap),
        columns=tile_starts(padded.shape[-1], tile_w, overlap),
    )


def translate_tiled(
    run: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    tile: int,
    overlap: int,
    multiple: int,
    batch_size: int = 4,
) -> np.ndarray:
    """(1, C, H, W) encoded input -> (1, C_out, H, W), ``run`` seeing at most
    ``batch_size`` tiles at a time."""
    plan = plan_tiles(image, tile, overlap, multiple)
    for start in range(0, len(plan.boxes), batch_size):
        indices = range(start, min(start + batch_size, len(plan.boxes)))
        outputs = run(np.stack([plan.crop(i) for i in indices]))
        for index, output in zip(indices, outputs, strict=True):
            plan.add(index, output)
    return plan.result()
