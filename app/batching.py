"""Dynamic micro-batching: requests of one shape that arrive close together run as one batch.

Each model has a bounded queue and one worker task. The worker takes the next input of the
request that has waited the most for the size of its image
(:class:`~app.scheduling.FairQueue`: the route says how large the request's whole image is),
gathers others of the same shape that are already waiting or arrive within ``max_wait_ms`` (up
to ``max_batch`` inputs and ``max_batch_pixels`` pixels), and runs the batch on a dedicated
low-priority thread, off the event loop. So a small request overtakes the queued tiles of a
large image once it has waited a small part as long, usually after a batch or two of them. A
full queue refuses new work at once (the route answers 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app.scheduling import FairQueue, Ticket
from app.workers import lower_thread_priority

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The model's queue is at its bound; the client should retry later."""


@dataclass
class _Job:
    tensor: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchResult:
    output: np.ndarray
    batch_size: int
    inference_ms: float


class MicroBatcher:
    """Runs ``run_batch`` on (N, C, H, W) stacks of same-shaped (C, H, W) inputs."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 8,
        max_batch_pixels: int = 0,
        max_wait_ms: float = 10.0,
        queue_size: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
    ):
        self.name = name
        self.run_batch = run_batch
        self.max_batch = max(1, max_batch)
        self.max_batch_pixels = max(0, max_batch_pixels)
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.queue_size = max(1, queue_size)
        self.on_batch = on_batch
        self.on_depth = on_depth
        self.on_wait = on_wait
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"infer-{name}", initializer=lower_thread_priority
        )
        self._pending: FairQueue[_Job] = FairQueue()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.in_flight = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work(), name=f"batch-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending.drain():
            if not job.future.done():
                job.future.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, tensor: np.ndarray, ticket: Ticket | None = None) -> BatchResult:
        """Queue one (C, H, W) input and wait for its output; raises QueueFull at the bound.

        ``ticket``: the request this input is for, maybe one tile of its image (default: a
        request of this input alone, arriving now).
        """
        if len(self._pending) >= self.queue_size:
            raise QueueFull(f"model {self.name} has {self.depth} requests waiting")
        future = asyncio.get_running_loop().create_future()
        pixels = _pixels(tensor.shape)
        ticket = ticket or Ticket(pixels, time.perf_counter())
        self._pending.push(_Job(tensor, future), ticket, pixels)
        self._arrived.set()
        self._report_depth()
        return await future

    def _report_depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self.depth)

    def _batch_limit(self, shape: tuple) -> int:
        """How many inputs of ``shape`` one batch may hold."""
        if not self.max_batch_pixels:
            return self.max_batch
        return max(1, min(self.max_batch, self.max_batch_pixels // _pixels(shape)))

    def _take_same_shape(self, batch: list[_Job], limit: int) -> None:
        """Move waiting inputs of the batch's shape into it, whatever their size class."""
        shape = batch[0].tensor.shape
        batch += self._pending.take(lambda job: job.tensor.shape == shape, limit - len(batch))

    async def _next_batch(self) -> list[_Job]:
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        first = self._pending.pop()
        assert first is not None
        batch = [first]
        limit = self._batch_limit(batch[0].tensor.shape)
        self._take_same_shape(batch, limit)
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < limit:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
            self._take_same_shape(batch, limit)
        return [job for job in batch if not job.future.cancelled()]

    def _stack_and_run(self, inputs: list[np.ndarray]) -> np.ndarray:
        # On the worker thread: stacking large inputs must not stall the event loop.
        return self.run_batch(np.stack(inputs))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self._report_depth()
            if not batch:
                continue
            self.in_flight = len(batch)
            start = time.perf_counter()
            if self.on_wait is not None:
                for job in batch:
                    self.on_wait(start - job.queued_at)
            try:
                outputs = await loop.run_in_executor(
                    self.executor, self._stack_and_run, [job.tensor for job in batch]
                )
            except Exception as error:  # a failed batch fails its requests, not the worker
                logger.exception("batch of %d on %s failed", len(batch), self.name)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            finally:
                self.in_flight = 0
            milliseconds = (time.perf_counter() - start) * 1000.0
            if self.on_batch is not None:
                self.on_batch(len(batch), milliseconds / 1000.0)
            for job, output in zip(batch, outputs, strict=True):
                if not job.future.done():
                    job.future.set_result(BatchResult(output, len(batch), milliseconds))


def _pixels(shape: tuple) -> int:
    """Pixels of one (C, H, W) input."""
    return max(1, int(shape[-2]) * int(shape[-1]))
