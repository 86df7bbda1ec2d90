"""Dynamic micro-batching: requests of one shape that arrive close together run as one batch.

Each model has a bounded queue and one worker task. The worker takes the oldest request,
gathers others of the same input shape that are already waiting or arrive within
``max_wait_ms`` (up to ``max_batch``), and runs the batch on a dedicated thread, off the
event loop. A full queue refuses new work at once (the route answers 503).
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
        max_wait_ms: float = 10.0,
        queue_size: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
    ):
        self.name = name
        self.run_batch = run_batch
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max(1, queue_size))
        self.on_batch = on_batch
        self.on_depth = on_depth
        self.on_wait = on_wait
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._waiting: list[_Job] = []  # taken from the queue but of another shape
        self._task: asyncio.Task | None = None
        self.in_flight = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work(), name=f"batch-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._waiting:
            if not job.future.done():
                job.future.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self.queue.qsize() + len(self._waiting)

    async def submit(self, tensor: np.ndarray) -> BatchResult:
        """Queue one (C, H, W) input and wait for its output; raises QueueFull at the bound."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Job(tensor, future))
        except asyncio.QueueFull:
            raise QueueFull(f"model {self.name} has {self.depth} requests waiting") from None
        self._report_depth()
        return await future

    def _report_depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self.depth)

    def _take_same_shape(self, shape: tuple, batch: list[_Job]) -> None:
        keep = []
        for job in self._waiting:
            if len(batch) < self.max_batch and job.tensor.shape == shape:
                batch.append(job)
            else:
                keep.append(job)
        self._waiting = keep

    async def _next_batch(self) -> list[_Job]:
        first = self._waiting.pop(0) if self._waiting else await self.queue.get()
        batch = [first]
        self._take_same_shape(first.tensor.shape, batch)
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if job.tensor.shape == first.tensor.shape:
                batch.append(job)
            else:
                self._waiting.append(job)
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
