"""Colorization as classification: the in-gamut ab bins and the lookup from ab to bin.

Zhang, Isola and Efros ("Colorful Image Colorization", 2016) quantize ab into cells and keep
those that real colors fall in. The generator that predicts one logit per bin and its decoding
head live in ``model.networks`` (``BinnedColorGenerator``, ``AnnealedMean``); the
classification loss's soft targets in ``training.loop.color_loss``.
"""

from __future__ import annotations

import functools

import numpy as np

from model.processing import rgb_to_lab

# The paper's grid spacing (Lab units).
AB_GRID = 10


@functools.cache
def _surface_ab() -> np.ndarray:
    """ab (N, 2) float32 of every 8-bit sRGB color on the surface of the RGB cube.

    The surface reaches every ab that the whole cube reaches: from a color inside, the colors
    with the same ab and rising L form a curve through RGB that is unbounded (L -> inf means
    Y -> inf), so it leaves the cube through the surface with its ab unchanged.
    """
    levels = np.arange(256, dtype=np.uint8)
    square = np.stack(np.meshgrid(levels, levels, indexing="ij"), axis=-1).reshape(-1, 2)
    faces = [np.insert(square, axis, value, axis=1) for axis in range(3) for value in (0, 255)]
    return rgb_to_lab(np.concatenate(faces)[None])[0, :, 1:]


@functools.cache
def _bins(grid: int) -> tuple[np.ndarray, np.ndarray]:
    cells = np.unique(np.rint(_surface_ab() / grid).astype(np.int64), axis=0)
    return cells, (cells * grid).astype(np.float32)


def ab_bins(grid: int = AB_GRID) -> np.ndarray:
    """Centers (Q, 2) in Lab units of the cells of an ab grid that sRGB colors fall in.

    Cells of side ``grid`` are centered on its multiples; a cell is kept when some sRGB color
    (at any L) quantizes to it, as the paper keeps "in-gamut" bins. For ``grid`` 10 that is
    261 bins, spanning a in -90..100 and b in -110..90; the paper reports 313 without saying
    how its gamut was drawn. About one center in ten, on the gamut's edge, is itself just
    outside it; ``lab_to_rgb`` clips what decodes there.
    """
    return _bins(grid)[1].copy()


def bin_lookup(grid: int = AB_GRID) -> tuple[np.ndarray, int]:
    """A table from grid cell to bin index (-1 outside the gamut) and the cell of its [0, 0].

    ``table[round(a / grid) + offset, round(b / grid) + offset]`` is the bin of (a, b); the
    table has a margin of one cell all round, so neighbours of edge cells can be looked up.
    """
    cells = _bins(grid)[0]
    offset = int(np.abs(cells).max()) + 1
    table = np.full((2 * offset + 1, 2 * offset + 1), -1, dtype=np.int64)
    table[cells[:, 0] + offset, cells[:, 1] + offset] = np.arange(len(cells))
    return table, offset
