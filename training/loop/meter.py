"""The statistics of one log interval: mean step scalars, images per second and data wait.

The sums stay on the device, so adding a step never waits for it; reading the means is the one
synchronisation, once per interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch

Item = TypeVar("Item")


class IntervalMeter:
    """Sums a step's scalars over a log interval and times the interval and its data wait.

    ``images_per_step`` counts every process (batch size x world size); ``processes`` is the
    number of processes whose sums :meth:`means` adds up.
    """

    def __init__(
        self,
        names: tuple[str, ...],
        device: torch.device,
        images_per_step: int,
        processes: int = 1,
    ):
        self.names = names
        self.images_per_step = images_per_step
        self.processes = processes
        self.sums = torch.zeros(len(names), device=device)
        self.restart()

    def restart(self) -> None:
        """Begin a new interval now."""
        self.sums.zero_()
        self.steps = 0
        self.waited = 0.0
        self.start = time.perf_counter()

    def timed(self, batches: Iterable[Item]) -> Iterator[Item]:
        """Pass ``batches`` through, counting the time spent waiting for each as data wait."""
        start = time.perf_counter()
        for item in batches:
            self.waited += time.perf_counter() - start
            yield item
            start = time.perf_counter()

    def add(self, stats: torch.Tensor) -> None:
        """One step's scalars, in the order of ``names``."""
        self.sums += stats
        self.steps += 1

    def means(self, total: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """Each scalar's mean over the interval; ``total`` sums a tensor over the processes."""
        values = (total(self.sums) / (self.steps * self.processes)).tolist()
        return {name: round(value, 6) for name, value in zip(self.names, values, strict=True)}

    def rates(self) -> dict[str, float]:
        """Images per second over all processes, and the fraction of the time spent waiting
        for data."""
        elapsed = time.perf_counter() - self.start
        return {
            "images_per_s": round(self.steps * self.images_per_step / elapsed, 3),
            "data_wait": round(self.waited / elapsed, 4),
        }
