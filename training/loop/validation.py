"""Validation during training: val L1 and the A | G(A) | B sample grids of the served generator,
and the batch-norm recalibration that runs before them (``train.recalibrate_bn``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from model.checkpoint import apply_inference_mode
from model.networks import use_sample_statistics
from model.processing import decode_output, input_preview
from model.recalibration import RECALIBRATION_BATCH, recalibrate_batch_norm
from model.spec import GeneratorSpec
from training.data.datasets import PairedDataset
from training.loop.sampling import spread

logger = logging.getLogger(__name__)

# Validation pairs val L1 is measured over, spread over the split.
VALIDATION_PAIRS = 64


class Validator:
    """Runs the served generator over validation pairs as it will be served.

    Both the pairs and the grid's rows are spread evenly over the split: on a dataset of video
    frames the first pairs would be near-identical frames of one scene.
    """

    def __init__(
        self,
        val_set: PairedDataset,
        spec: GeneratorSpec,
        batch_size: int,
        grid_size: int,
        prepare: Callable[[torch.Tensor], torch.Tensor],
        autocast: Callable,
    ):
        self.val_set, self.spec = val_set, spec
        self.batch_size = max(1, min(batch_size, 16))
        self.grid_size = grid_size
        self.prepare, self.autocast = prepare, autocast

    @torch.no_grad()
    def __call__(self, generator: nn.Module, grid_path: Path | None) -> dict:
        """Val L1 and PSNR of ``generator``; with ``grid_path``, a grid of ``grid_size`` pairs
        saved there. Leaves ``generator`` in eval mode with running statistics.

        Both are measured on the network's outputs in its value range [-1, 1] (for a Lab model,
        its ab channels): PSNR per pair against a peak-to-peak of 2, averaged over the pairs.
        """
        apply_inference_mode(generator, self.spec.inference_mode)
        total, count, psnr, grid_rows = 0.0, 0, 0.0, []
        indices = spread(min(len(self.val_set), VALIDATION_PAIRS), len(self.val_set))
        grid_size = min(self.grid_size, len(indices))
        shown = {indices[i] for i in spread(grid_size, len(indices))} if grid_path else set()
        for start in range(0, len(indices), self.batch_size):
            items = [self.val_set[i] for i in indices[start : start + self.batch_size]]
            real_a = self.prepare(torch.stack([item["A"] for item in items]))
            real_b = self.prepare(torch.stack([item["B"] for item in items]))
            with self.autocast():
                fake_b = generator(real_a)
            total += torch.nn.functional.l1_loss(fake_b.float(), real_b, reduction="sum").item()
            count += real_b.numel()
            error = (fake_b.float() - real_b).square().flatten(1).mean(dim=1)
            psnr += (10 * torch.log10(4.0 / error.clamp(min=1e-10))).sum().item()
            for i, item in enumerate(items):
                if item["index"] in shown:
                    grid_rows.append(self.grid_row(item["index"], fake_b[i], real_b[i]))
        use_sample_statistics(generator, False)
        if grid_path is not None and grid_rows:
            grid_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate(grid_rows, axis=0)).save(grid_path)
        pairs = max(len(indices), 1)
        return {"val_l1": round(total / max(count, 1), 6), "val_psnr": round(psnr / pairs, 4)}

    def grid_row(self, index: int, fake: torch.Tensor, real: torch.Tensor) -> np.ndarray:
        """A | G(A) | B for one validation pair, as the network saw it."""
        a_array, _ = self.val_set.arrays(index)
        out = decode_output(fake, self.spec, a_array)
        target = decode_output(real, self.spec, a_array)
        return np.concatenate([input_preview(a_array, self.spec), out, target], axis=1)


class Recalibration:
    """Sets the served generator's batch-norm statistics to its own over ``count`` training
    pairs as served (whole, at the training size; see ``model.recalibration``), at most once
    per step. In fp32, as served; every rank runs it alike."""

    def __init__(
        self, pairs: PairedDataset, count: int, prepare: Callable[[torch.Tensor], torch.Tensor]
    ):
        self.pairs, self.prepare = pairs, prepare
        self.indices = spread(min(count, len(pairs)), len(pairs))
        self.done_at = -1

    def __call__(self, generator: nn.Module, step: int) -> None:
        if self.done_at == step:
            return

        def batches() -> Iterator[torch.Tensor]:
            for start in range(0, len(self.indices), RECALIBRATION_BATCH):
                chunk = self.indices[start : start + RECALIBRATION_BATCH]
                yield self.prepare(torch.stack([self.pairs[i]["A"] for i in chunk]))

        recalibrate_batch_norm(generator, batches)
        self.done_at = step
        logger.debug("batch-norm statistics re-estimated over %d training pairs", len(self.indices))
