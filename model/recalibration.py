"""Batch-norm statistics re-estimated for the generator as it is served.

Training leaves batch norm's running statistics as a running average (momentum 0.1, so about
the last ten batches) of per-batch statistics taken with dropout on, and with an EMA of the
weights they are the raw generator's, copied. Served in ``eval`` mode the generator runs other
weights without dropout, every norm using those statistics, so each layer's input comes out
with other means and spreads than the statistics it is normalized by, more so the deeper it is.

``recalibrate_batch_norm`` runs the generator as served over a set of inputs and sets each norm,
in the order the forward pass reaches them, to the mean and variance of its input over every
pixel of every input, with the norms before it already set: the population statistics of the
network it belongs to. A pass stops at the norm it measures, so the encoder's norms cost part of
a forward pass each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from model.checkpoint import apply_inference_mode

NORM_KINDS = (nn.BatchNorm2d, nn.SyncBatchNorm)
# Inputs per forward pass (eval mode: the images of a batch do not mix).
RECALIBRATION_BATCH = 16


class _Measured(Exception):
    """Raised by the measuring hook: the rest of the forward pass is not needed."""


def batch_norms(generator: nn.Module) -> list[nn.Module]:
    return [module for module in generator.modules() if isinstance(module, NORM_KINDS)]


@torch.no_grad()
def recalibrate_batch_norm(
    generator: nn.Module, batches: Callable[[], Iterable[torch.Tensor]]
) -> int:
    """Set every batch norm of ``generator`` to its input's statistics over ``batches()``.

    ``batches`` is called once per norm (plus once to find their order) and yields input
    batches; dropout is off and every other norm at its running statistics, as in ``eval``
    mode. Returns the number of norms set. The generator is left in eval mode.
    """
    norms = batch_norms(generator)
    if not norms:
        return 0
    apply_inference_mode(generator, "eval")
    order: list[nn.Module] = []
    hooks = [
        norm.register_forward_pre_hook(lambda module, _args: order.append(module)) for norm in norms
    ]
    try:
        generator(next(iter(batches()))[:1])
    finally:
        for hook in hooks:
            hook.remove()
    order = list(dict.fromkeys(order))  # a norm reached twice counts at its first use
    for norm in order:
        # Per channel: the sum and the sum of squares of the input's values, and their count.
        sums = torch.zeros(
            2, norm.num_features, dtype=torch.float64, device=norm.running_mean.device
        )
        counted = [0]

        def measure(_module, args, sums=sums, counted=counted):
            values = args[0].detach().double().transpose(0, 1).flatten(1)
            sums[0] += values.sum(1)
            sums[1] += values.square().sum(1)
            counted[0] += values.shape[1]
            raise _Measured

        hook = norm.register_forward_pre_hook(measure)
        try:
            for batch in batches():
                with contextlib.suppress(_Measured):
                    generator(batch)
        finally:
            hook.remove()
        count = counted[0]
        mean = sums[0] / count
        variance = (sums[1] / count - mean.square()).clamp(min=0) * count / max(count - 1, 1)
        norm.running_mean.copy_(mean.to(norm.running_mean.dtype))
        norm.running_var.copy_(variance.to(norm.running_var.dtype))
    return len(order)
