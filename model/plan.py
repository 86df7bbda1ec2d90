"""The one translation path: an encoded input becomes crops to run, their outputs one image.

``plan_translation`` pads an encoded (C, H, W) input to the spec's multiple (after fitting it
to the training size, for resize mode ``fit``) and lays overlapping tiles over it when it is
larger than the tile size; otherwise one crop covers it all. Whoever runs the network takes
``plan.crop(i)`` for every tile and hands each output back to ``plan.add``: ``run_plans`` for
the command line, ``Translator`` and ``evaluate``, the micro-batcher for the service.
``plan.result()`` blends, crops the padding off and resizes back to the input's size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from model.choices import RESIZE_MODES
from model.processing import pad_to_multiple, resize_batch
from model.spec import GeneratorSpec

# Defaults of the service, the command line and evaluation alike, so all three agree.
TILE_SIZE = 512
TILE_OVERLAP = 64


def fit_to_training_size(batch: np.ndarray, spec: GeneratorSpec) -> np.ndarray:
    """Resize (N, C, H, W) inputs to the training size (label maps nearest-neighbour)."""
    size = (spec.train_size, spec.train_size)
    return resize_batch(batch, size, nearest=spec.input_kind == "label_map")


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
class TranslationPlan:
    """Where the crops of one padded input lie, and the blended output being assembled."""

    padded: np.ndarray  # (C, H_pad, W_pad)
    fitted: tuple[int, int]  # (H, W) before padding: the input's, or the training size
    size: tuple[int, int]  # the input's (H, W), which the result has
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
        """The (C, tile_h, tile_w) input of crop ``index`` (a view)."""
        top, left = self.boxes[index]
        return self.padded[:, top : top + self.tile[0], left : left + self.tile[1]]

    def add(self, index: int, output: np.ndarray) -> None:
        """Blend crop ``index``'s (C_out, tile_h, tile_w) output into the result."""
        top, left = self.boxes[index]
        if self.total is None:
            height, width = self.padded.shape[-2:]
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
        """(C_out, H, W): the blended output without the padding, at the input's size."""
        assert self.total is not None and self.weight_sum is not None, "no output was added"
        blended = (self.total / self.weight_sum)[:, : self.fitted[0], : self.fitted[1]]
        if self.fitted == self.size:
            return blended
        return np.clip(resize_batch(blended[None], self.size)[0], -1.0, 1.0)


def plan_translation(
    encoded: np.ndarray,
    spec: GeneratorSpec,
    resize: str = "pad",
    tile_size: int = TILE_SIZE,
    tile_overlap: int = TILE_OVERLAP,
) -> TranslationPlan:
    """Plan an encoded (C, H, W) input: ``pad`` keeps its size, ``fit`` resizes it to the
    training size (and the output back); inputs larger than ``tile_size`` (rounded up to the
    spec's multiple; 0 never tiles) run as tiles overlapping by ``tile_overlap``."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, not {resize!r}")
    size = (int(encoded.shape[-2]), int(encoded.shape[-1]))
    fitted = size
    if resize == "fit":
        encoded = fit_to_training_size(encoded[None], spec)[0]
        fitted = (spec.train_size, spec.train_size)
    multiple = spec.pad_multiple
    padded = pad_to_multiple(encoded[None], multiple)[0][0]
    height, width = padded.shape[-2:]
    if tile_size and max(fitted) > tile_size:
        tile = -(-tile_size // multiple) * multiple
        tile_h, tile_w, overlap = min(tile, height), min(tile, width), min(tile_overlap, tile // 2)
    else:
        tile_h, tile_w, overlap = height, width, 0
    return TranslationPlan(
        padded=padded,
        fitted=fitted,
        size=size,
        tile=(tile_h, tile_w),
        overlap=overlap,
        rows=tile_starts(height, tile_h, overlap),
        columns=tile_starts(width, tile_w, overlap),
    )


def run_plans(
    plans: Sequence[TranslationPlan],
    runtime: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 8,
) -> None:
    """Run every crop of ``plans`` through ``runtime``, crops of one shape ``batch_size`` at a
    time (so equal-sized images share batches), and add each output to its plan."""
    groups: dict[tuple[int, ...], list[tuple[TranslationPlan, int]]] = {}
    for plan in plans:
        for index in range(len(plan.boxes)):
            groups.setdefault(plan.crop(index).shape, []).append((plan, index))
    for members in groups.values():
        for start in range(0, len(members), max(1, batch_size)):
            chunk = members[start : start + max(1, batch_size)]
            outputs = runtime(np.stack([plan.crop(index) for plan, index in chunk]))
            for (plan, index), output in zip(chunk, outputs, strict=True):
                plan.add(index, output)
