"""The classification loss for colorization: soft-encoded ab targets, reweighted by rarity.

Zhang, Isola and Efros, "Colorful Image Colorization" (2016), section 2: each target ab is
spread over its nearest bins by a Gaussian (a soft one-hot that tells near misses from far
ones), and each pixel's cross-entropy is multiplied by a factor that grows as its color gets
rarer. Without that factor the loss is ruled by the grays, browns and blue skies that cover
most pixels, and rare saturated colors are never predicted. The bins live in
``model.color_bins``, the decoding head in ``model.networks.heads``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from model.color_bins import AB_GRID, bin_lookup
from model.processing import AB_SCALE

# The paper's settings: a Gaussian of sigma 5 (Lab units) over the 5 nearest bins for the soft
# targets and for smoothing the prior, and the prior mixed half-and-half with uniform.
SIGMA = 5.0
NEIGHBOURS = 5
UNIFORM_MIX = 0.5


def nearest_bins(ab: np.ndarray, centers: np.ndarray, grid: int = AB_GRID) -> np.ndarray:
    """The index of the nearest bin for each ab (..., 2) in Lab units."""
    table, offset = bin_lookup(grid)
    flat = ab.reshape(-1, 2)
    cells = np.clip(np.rint(flat / grid).astype(np.int64) + offset, 0, len(table) - 1)
    bins = table[cells[:, 0], cells[:, 1]]
    outside = bins < 0
    if outside.any():
        # Only ab beyond sRGB (or rounding at a cell's edge) lands in a cell with no bin.
        distances = ((flat[outside, None, :] - centers[None]) ** 2).sum(-1)
        bins[outside] = distances.argmin(axis=1)
    return bins.reshape(ab.shape[:-1])


@dataclass
class ColorPrior:
    """The training set's color distribution over the bins and the weights derived from it.

    ``probabilities`` is the smoothed empirical distribution; ``weights`` the rebalancing
    factor per bin, whose mean over the training pixels (under ``probabilities``) is 1.
    """

    probabilities: np.ndarray
    weights: np.ndarray
    pixels: int
    images: int

    @property
    def entropy_bits(self) -> float:
        p = self.probabilities[self.probabilities > 0]
        return float(-(p * np.log2(p)).sum())

    @property
    def num_bins(self) -> int:
        return len(self.probabilities)


def estimate_prior(
    ab_images: Iterable[np.ndarray],
    centers: np.ndarray,
    grid: int = AB_GRID,
    sigma: float = SIGMA,
    uniform_mix: float = UNIFORM_MIX,
) -> ColorPrior:
    """The prior and rebalancing weights from ab arrays (H, W, 2) in Lab units.

    The bin counts are smoothed by a Gaussian of ``sigma`` over the bin centers, mixed with
    the uniform distribution (``uniform_mix`` = the paper's lambda) and inverted; the inverse
    is scaled so that the expected weight of a training pixel is 1, which keeps the loss on
    the scale of the plain cross-entropy.
    """
    counts = np.zeros(len(centers), dtype=np.float64)
    pixels = images = 0
    for ab in ab_images:
        bins = nearest_bins(np.asarray(ab, dtype=np.float32), centers, grid)
        counts += np.bincount(bins.ravel(), minlength=len(centers))
        pixels += bins.size
        images += 1
    if pixels == 0:
        raise ValueError("no training images to estimate the color prior from")
    squared = ((centers[:, None, :] - centers[None, :, :]) ** 2).sum(-1).astype(np.float64)
    smoothed = np.exp(-squared / (2 * sigma**2)) @ (counts / pixels)
    smoothed /= smoothed.sum()
    weights = 1.0 / ((1.0 - uniform_mix) * smoothed + uniform_mix / len(centers))
    weights /= (smoothed * weights).sum()
    return ColorPrior(smoothed, weights, pixels, images)


class ColorClassificationLoss:
    """Rebalanced cross-entropy of bin logits (N, Q, H, W) against soft-encoded target ab.

    Targets come as the network's ab (Lab / AB_SCALE, (N, 2, H, W)). A pixel whose nearest
    bins all lie outside the gamut (no sRGB color does that) gets an all-zero target and adds
    nothing.
    """

    def __init__(
        self,
        centers: np.ndarray,
        weights: np.ndarray,
        grid: int = AB_GRID,
        sigma: float = SIGMA,
        neighbours: int = NEIGHBOURS,
        device: torch.device | str = "cpu",
    ):
        table, self.offset = bin_lookup(grid)
        self.table = torch.from_numpy(table).to(device)
        self.centers = torch.as_tensor(centers, dtype=torch.float32, device=device)
        self.weights = torch.as_tensor(weights, dtype=torch.float32, device=device)
        self.grid = grid
        self.sigma = sigma
        self.neighbours = neighbours
        # The nearest bins of any ab lie in the 3x3 cells around its own.
        steps = torch.tensor([-1, 0, 1], device=device)
        self.cell_offsets = torch.cartesian_prod(steps, steps)  # (9, 2)

    def soft_targets(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin indices and target probabilities, each (N, H, W, K), nearest bin first."""
        ab = target.float().permute(0, 2, 3, 1) * AB_SCALE  # (N, H, W, 2)
        cells = torch.round(ab / self.grid).long() + self.offset
        last = self.table.shape[0] - 1
        rows = (cells[..., :1] + self.cell_offsets[:, 0]).clamp(0, last)
        columns = (cells[..., 1:] + self.cell_offsets[:, 1]).clamp(0, last)
        candidates = self.table[rows, columns]  # (N, H, W, 9), -1 outside the gamut
        inside = candidates >= 0
        candidates = candidates.clamp_min(0)
        squared = ((self.centers[candidates] - ab[..., None, :]) ** 2).sum(-1)
        squared = squared.masked_fill(~inside, math.inf)
        squared, order = squared.topk(self.neighbours, dim=-1, largest=False, sorted=True)
        indices = candidates.gather(-1, order)
        probabilities = torch.exp(-squared / (2 * self.sigma**2))
        total = probabilities.sum(-1, keepdim=True)
        return indices, probabilities / total.clamp_min(torch.finfo(torch.float32).tiny)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean over target pixels; logits may be coarser than the target by an integer
        factor, each logit pixel then predicting every target pixel of its cell."""
        scale = target.shape[-1] // logits.shape[-1]
        if target.shape[-2:] != (logits.shape[-2] * scale, logits.shape[-1] * scale):
            raise ValueError(
                f"logits {tuple(logits.shape[-2:])} do not tile target {tuple(target.shape[-2:])}"
            )
        indices, probabilities = self.soft_targets(target)
        weighted = probabilities * self.weights[indices[..., :1]]
        # Bins last, as in model.networks.heads.AnnealedMean: no copy for channels_last logits.
        scores = logits.permute(0, 2, 3, 1)
        # The rebalanced soft targets of a logit pixel's cell, summed into one dense target:
        # the cross-entropy is linear in its target, so this is the sum over the cell.
        dense = torch.zeros(scores.shape, dtype=torch.float32, device=scores.device)
        for row in range(scale):
            for column in range(scale):
                cell = (slice(None), slice(row, None, scale), slice(column, None, scale))
                dense.scatter_add_(-1, indices[cell], weighted[cell])
        bins = scores.shape[-1]
        total = functional.cross_entropy(
            scores.reshape(-1, bins).float(), dense.reshape(-1, bins), reduction="sum"
        )
        return total / indices[..., 0].numel()
