"""The service's worker threads: image work in order of waits by size, below the event loop.

The event loop answers every request, health probes included, so it must never wait for a CPU
behind image or model work. Every thread doing such work lowers its own scheduling priority
when it starts (Linux: a higher nice value for that thread alone; threads it starts inherit
it), so the loop thread runs first whenever it has something to do. Image work (decoding,
preparing, blending and encoding) runs on a small fixed pool rather than a thread per request,
taken from a :class:`~app.scheduling.FairQueue`, and one more thread only ever takes images of
up to ``SMALL_CLASS`` (256x256 pixels): a small request never waits for a large one's long
decode or encode to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from app.scheduling import FairQueue, Ticket, size_class

logger = logging.getLogger(__name__)

# How much lower than the event loop's the workers' priority is: at nice +10 a thread weighs
# about a tenth of a nice-0 thread with Linux's scheduler.
WORKER_NICENESS = 10
# The largest size class that the thread kept for small images takes (up to 256x256 pixels).
SMALL_CLASS = size_class(256 * 256)


def lower_thread_priority() -> None:
    """Lower the calling thread's CPU priority below the event loop's (Linux only).

    Raising a nice value needs no privilege; elsewhere (where ``setpriority`` would change
    the whole process) this does nothing.
    """
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + WORKER_NICENESS))
    except OSError as error:  # e.g. a seccomp profile that forbids it
        logger.debug("worker thread keeps its priority: %s", error)


def cpu_count() -> int:
    """CPUs this process may run on."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def inference_threads(requested: int) -> int:
    """Threads per model for the runtime: ``requested``, or by default half the CPUs (at
    least one), so image work and the event loop keep CPUs of their own under load."""
    return requested if requested > 0 else max(1, cpu_count() // 2)


class ImageWorkers:
    """``threads`` low-priority threads for image work of any size, plus one for small images."""

    def __init__(self, threads: int, on_depth: Callable[[int], None] | None = None):
        self.threads = max(1, threads)
        self.on_depth = on_depth
        self._pending: FairQueue[tuple[Callable[[], Any], asyncio.Future]] = FairQueue()
        self._ready = threading.Condition()
        self._stopping = False
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        self._stopping = False
        largest = [None] * self.threads + [SMALL_CLASS]
        self._workers = [
            threading.Thread(target=self._work, args=(limit,), name=f"image-{index}", daemon=True)
            for index, limit in enumerate(largest)
        ]
        for worker in self._workers:
            worker.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Drop the work that waits, let the running work finish, and end the threads."""
        with self._ready:
            self._stopping = True
            dropped = self._pending.drain()
            self._ready.notify_all()
        for _, future in dropped:
            future.cancel()
        workers, self._workers = self._workers, []
        for worker in workers:
            await asyncio.to_thread(worker.join, timeout)

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def run(
        self, ticket: Ticket, pixels: int, function: Callable[..., Any], *args: Any
    ) -> Any:
        """Run ``function(*args)``, work on ``pixels`` pixels for the request of ``ticket``,
        when its turn comes; its result."""
        future = asyncio.get_running_loop().create_future()
        with self._ready:
            if self._stopping:
                raise RuntimeError("the image workers have stopped")
            call = (lambda: function(*args), future)
            self._pending.push(call, ticket, pixels)
            depth = len(self._pending)
            # Every thread, since the one for small images may not take this work.
            self._ready.notify_all()
        if self.on_depth is not None:
            self.on_depth(depth)
        return await future

    def _work(self, largest_class: int | None) -> None:
        lower_thread_priority()
        while True:
            with self._ready:
                while not self._stopping and (job := self._pending.pop(largest_class)) is None:
                    self._ready.wait()
                if self._stopping:
                    return
                call, future = job
                depth = len(self._pending)
            if self.on_depth is not None:
                self.on_depth(depth)
            if future.cancelled():  # the request has gone; its work is not needed
                continue
            try:
                outcome = (call(), None)
            except BaseException as error:  # handed to the request, which raises it
                outcome = (None, error)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                future.get_loop().call_soon_threadsafe(_settle, future, *outcome)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled while it ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
