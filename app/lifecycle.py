"""How the service process stops and starts: a drain with a deadline, and one worker per process.

On SIGTERM (``docker stop``, Kubernetes) uvicorn stops accepting connections and waits for the
requests in flight. A request that cannot finish before ``PIX2PIX_DRAIN_TIMEOUT_S`` is answered
``503`` with ``Retry-After``, so a load balancer sends it elsewhere, and logged as one line. The
deadline sits below uvicorn's own (``UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN``, past which uvicorn
cancels what runs and its client would get a 500): the service answers first. A request that
uvicorn cancels anyway, its timeout being the shorter, gets the same 503.

The models, their hot reloads, the batch queues and ``/metrics`` live in one process, so the
service refuses to start as the second worker of one uvicorn (``--workers 2``): scale out with
one worker per container instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import IO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body

logger = logging.getLogger(__name__)

# The signals uvicorn stops on.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """The requests in flight, and the deadline they get once the server is told to stop."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started: float | None = None  # monotonic time of the stop signal
        self.expired = False
        # Each request's task, and whether its answer has begun (it is then let finish).
        self._in_flight: dict[asyncio.Task, dict[str, bool]] = {}
        self._previous: dict[int, object] = {}

    def watch_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the drain when the server's own stop signal handlers run (chained to them).

        Only in the main thread, under a server that handles the signals in Python (uvicorn
        does); elsewhere the drain never starts and requests run as long as the server lets them.
        """
        for number in STOP_SIGNALS:
            previous = signal.getsignal(number)
            if not callable(previous):
                continue

            def handler(signum, frame, previous=previous) -> None:
                loop.call_soon_threadsafe(self.begin)
                previous(signum, frame)

            try:
                signal.signal(number, handler)
            except ValueError:  # not the main thread
                return
            self._previous[number] = previous

    def stop_watching(self) -> None:
        for number, previous in self._previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(number, previous)
        self._previous.clear()

    def begin(self) -> None:
        """On the event loop, when the server is told to stop: start the deadline."""
        if self.started is not None:
            return
        self.started = time.monotonic()
        logger.info(
            "stopping: %d request(s) in flight get %.0f s to finish, then 503",
            len(self._in_flight),
            self.seconds,
        )
        asyncio.get_running_loop().call_later(self.seconds, self._expire)

    def _expire(self) -> None:
        self.expired = True
        for task, answer in list(self._in_flight.items()):
            if not answer["started"]:
                task.cancel("drain deadline")

    def track(self, task: asyncio.Task, answer: dict[str, bool]) -> None:
        self._in_flight[task] = answer

    def forget(self, task: asyncio.Task) -> None:
        self._in_flight.pop(task, None)


class DrainMiddleware:
    """Answers 503 with Retry-After for a request that the drain's deadline (or the server's
    own shutdown timeout) stops before its answer began; never lets it end as a 500."""

    def __init__(self, app: ASGIApp, drain: Drain, retry_after_s: int):
        self.app = app
        self.drain = drain
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.expired:  # came on a kept-alive connection after the deadline
            await self._refuse(scope, send)
            return
        task = asyncio.current_task()
        answer = {"started": False}

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["started"] = True
            await send(message)

        assert task is not None
        self.drain.track(task, answer)
        try:
            await self.app(scope, receive, send_tracked)
        except asyncio.CancelledError:
            if answer["started"] or self.drain.started is None:
                raise
            # Stopped by the shutdown: answered here, so the cancellation ends with it.
            task.uncancel()
            await self._refuse(scope, send)
        finally:
            self.drain.forget(task)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        started = self.drain.started or time.monotonic()
        logger.warning(
            "%s %s answered 503 (request %s): the server is stopping and the request was not "
            "done %.1f s after the stop signal (PIX2PIX_DRAIN_TIMEOUT_S=%g, or uvicorn's "
            "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN if shorter)",
            scope["method"],
            scope["path"],
            scope.get("state", {}).get("request_id", "-"),
            time.monotonic() - started,
            self.drain.seconds,
        )
        body = json.dumps(
            error_body(
                "shutting_down",
                "the server is stopping and could not finish this request in time; retry",
            )
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def warn_if_uvicorn_cancels_first(drain_seconds: float) -> None:
    """Say so when uvicorn's shutdown timeout (from its environment variable) is not longer
    than the drain's deadline: uvicorn then cancels requests before the deadline (they are
    still answered 503, only sooner than the deadline says)."""
    value = os.environ.get("UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN", "")
    with contextlib.suppress(ValueError):
        if float(value) <= drain_seconds:
            logger.warning(
                "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=%s is not longer than "
                "PIX2PIX_DRAIN_TIMEOUT_S=%g: uvicorn stops requests before the drain's deadline",
                value,
                drain_seconds,
            )


class SeveralWorkers(RuntimeError):
    """The service was started as one of several worker processes of one server."""


def claim_the_only_worker() -> IO | None:
    """Refuse to start as a second worker process of the same server (uvicorn --workers N).

    uvicorn starts its workers with multiprocessing, all children of one supervisor: the first
    takes a lock named for that supervisor and holds it while it runs; another one finds it
    taken and raises :class:`SeveralWorkers` (uvicorn then stops them all). Returns the held
    lock, or None where there is nothing to check (no such parent, or no ``fcntl``).
    """
    if multiprocessing.parent_process() is None:
        return None
    try:
        import fcntl
    except ImportError:
        return None
    path = Path(tempfile.gettempdir()) / f"pix2pix-serve-{os.getppid()}.lock"
    try:
        lock = open(path, "a")  # noqa: SIM115 - held open while the process serves
    except OSError as error:
        logger.warning("cannot check for other workers (%s): %s", path, error)
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        message = (
            f"another worker of server process {os.getppid()} already serves: pix2pix runs "
            "one worker per process (its models, hot reloads, batch queues and /metrics live "
            "in that process). Start uvicorn without --workers (and without UVICORN_WORKERS "
            "or WEB_CONCURRENCY above 1) and scale out with one container per worker behind a "
            "load balancer; see docs/docker.md"
        )
        logger.error(message)
        raise SeveralWorkers(message) from None
    return lock
