"""Answers under load: small requests go before large ones, health probes never wait.

The schedulers are checked on their own for the order they run work in, with runners that
block until released (no timing); then a real uvicorn is saturated with large translations
while health probes and a small request go through.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import httpx
import numpy as np
import pytest
from PIL import Image

from app.batching import MicroBatcher
from app.scheduling import FairQueue, Ticket, size_class
from app.workers import ImageWorkers, lower_thread_priority
from tests.conftest import LiveServer

SMALL = Ticket(64 * 64, arrived=0.0)
LARGE = Ticket(2048 * 2048, arrived=0.0)


def test_size_classes_are_powers_of_four_of_pixels():
    assert [size_class(side * side) for side in (1, 64, 65, 128, 256, 512, 1024, 2048)] == [
        0,
        0,
        1,
        1,
        2,
        3,
        4,
        5,
    ]


def test_a_small_request_overtakes_the_queued_work_of_large_ones():
    queue = FairQueue()
    for tile in range(6):
        queue.push(f"large {tile}", LARGE, 512 * 512)
    assert queue.pop() == "large 0"
    queue.push("small", Ticket(64 * 64, arrived=1.0), 64 * 64)
    assert queue.pop() == "small"
    assert [queue.pop() for _ in range(5)] == [f"large {tile}" for tile in range(1, 6)]
    assert queue.pop() is None and len(queue) == 0


def test_large_requests_keep_their_share_however_many_small_ones_wait():
    queue = FairQueue()
    for tile in range(4):
        queue.push(f"large {tile}", LARGE, 512 * 512)
    for index in range(300):
        queue.push(f"small {index}", SMALL, 64 * 64)
    taken = [queue.pop() for _ in range(len(queue))]
    # Equal shares of pixels: one 512x512 tile for every 64 small images.
    large_positions = [taken.index(f"large {tile}") for tile in range(4)]
    assert large_positions == sorted(large_positions)
    assert all(later - earlier == 65 for earlier, later in pairwise(large_positions))


def test_an_idle_size_class_cannot_save_up_a_share():
    queue = FairQueue()
    for index in range(100):  # small images alone: nobody else wants a share
        queue.push(f"small {index}", SMALL, 64 * 64)
        assert queue.pop() == f"small {index}"
    for index in range(3):  # then tiles of a large image, as costly each
        queue.push(f"large {index}", LARGE, 64 * 64)
        queue.push(f"small {100 + index}", Ticket(64 * 64, arrived=1.0), 64 * 64)
    # The large image, idle while 100 small ones ran, does not take its turns all at once.
    assert [queue.pop() for _ in range(6)] == [
        "large 0",
        "small 100",
        "large 1",
        "small 101",
        "large 2",
        "small 102",
    ]


def test_within_a_size_class_the_request_that_came_first_goes_first():
    queue = FairQueue()
    queue.push("late request, first step", Ticket(100, arrived=2.0), 100)
    queue.push("early request, later step", Ticket(100, arrived=1.0), 100)
    assert queue.pop() == "early request, later step"


class BlockingRunner:
    """A runtime that records the heights of the batches it runs, each once released."""

    def __init__(self):
        self.heights: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.started.set()
        assert self.release.wait(30), "never released"
        self.heights.append([int(batch.shape[-2])] * len(batch))
        return batch


def test_the_batcher_runs_a_small_request_before_the_queued_tiles_of_a_large_one():
    runner = BlockingRunner()

    async def scenario():
        batcher = MicroBatcher(
            "model", runner, max_batch=8, max_batch_pixels=256 * 256, max_wait_ms=0
        )
        batcher.start()
        tiles = [
            asyncio.create_task(batcher.submit(np.zeros((1, 256, 256), np.float32), LARGE))
            for _ in range(4)
        ]
        await asyncio.to_thread(runner.started.wait, 30)  # the first tile runs, the rest wait
        small = asyncio.create_task(
            batcher.submit(np.zeros((1, 32, 32), np.float32), Ticket(32 * 32, arrived=1.0))
        )
        await asyncio.sleep(0.05)
        runner.release.set()
        await asyncio.gather(small, *tiles)
        await batcher.stop()

    asyncio.run(scenario())
    # Tiles of 256x256 fill the pixel budget one by one; the small input goes second.
    assert runner.heights == [[256], [32], [256], [256], [256]]


def test_a_small_image_never_waits_for_a_large_ones_image_work():
    release = threading.Event()
    done: list[str] = []

    def work(name: str) -> str:
        if name.startswith("large"):
            assert release.wait(30), "never released"
        done.append(name)
        return name

    async def scenario():
        workers = ImageWorkers(threads=1)
        workers.start()
        large = [asyncio.create_task(workers.run(LARGE, 1, work, f"large {i}")) for i in range(3)]
        await asyncio.sleep(0.05)
        # The one thread for images of any size is busy and two large jobs wait; the thread
        # kept for small images takes this one at once.
        assert await asyncio.wait_for(workers.run(SMALL, 1, work, "small"), 30) == "small"
        assert done == ["small"]
        release.set()
        assert await asyncio.gather(*large) == ["large 0", "large 1", "large 2"]
        await workers.stop()

    asyncio.run(scenario())


def test_an_error_in_image_work_is_raised_to_the_request():
    def fail():
        raise ValueError("bad pixels")

    async def scenario():
        workers = ImageWorkers(threads=1)
        workers.start()
        with pytest.raises(ValueError, match="bad pixels"):
            await workers.run(SMALL, 1, fail)
        await workers.stop()

    asyncio.run(scenario())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are Linux's")
def test_worker_threads_run_below_the_event_loops_priority():
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def worker_priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    with ThreadPoolExecutor(1, initializer=lower_thread_priority) as pool:
        lowered = pool.submit(worker_priority).result()
    assert lowered == min(19, main + 10)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main


# -- a real server under load ------------------------------------------------------------------

# Probes from their own process, each on a new connection as an orchestrator's: prints one
# "path latency status" line per probe for the given seconds.
PROBER = """
import http.client, sys, time
port, seconds, paths = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
end = time.monotonic() + seconds
while time.monotonic() < end:
    for path in paths:
        sent = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", path)
        status = connection.getresponse().status
        connection.close()
        print(path, time.perf_counter() - sent, status, flush=True)
    time.sleep(0.05)
"""


def smooth_png(side: int) -> bytes:
    """A large image that compresses to little: the server's work, not the upload, is big."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack([ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1)], axis=-1)
    pixels = np.concatenate([pixels, pixels[..., :1]], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def translate(client: httpx.Client, url: str, data: bytes) -> httpx.Response:
    return client.post(
        f"{url}/v1/models/photo/translate",
        params={"format": "jpeg"},
        files={"image": ("input.png", data, "image/png")},
    )


def image_queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return float(re.search(r"^pix2pix_image_queue_depth (\S+)$", text, re.MULTILINE).group(1))


@pytest.fixture(scope="module")
def busy_server(tiny_models):
    server = LiveServer(tiny_models, env={"PIX2PIX_IMAGE_THREADS": "1"})
    yield server
    server.stop()


def test_health_probes_answer_fast_while_large_translations_saturate_the_server(busy_server):
    url, large = busy_server.url, smooth_png(1536)
    stop = threading.Event()
    statuses: list[int] = []

    def keep_translating():
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                statuses.append(translate(client, url, large).status_code)

    senders = [threading.Thread(target=keep_translating) for _ in range(6)]
    for sender in senders:
        sender.start()
    try:
        deadline = time.monotonic() + 60
        while image_queue_depth(url) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        probes = subprocess.run(
            [sys.executable, "-c", PROBER, str(busy_server.port), "6", "/healthz", "/readyz"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.split("\n")
    finally:
        stop.set()
        for sender in senders:
            sender.join(120)
    results = [line.split() for line in probes if line]
    latencies = sorted(float(latency) for _, latency, _ in results)
    assert {path for path, _, _ in results} == {"/healthz", "/readyz"}
    assert {status for _, _, status in results} == {"200"}
    assert statuses and set(statuses) == {200}
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    assert p99 < 0.5, f"health probes p99 {p99:.3f} s under load: {json.dumps(latencies[-5:])}"


def test_a_small_request_sent_behind_large_ones_finishes_before_them(busy_server):
    url, large, small = busy_server.url, smooth_png(1536), smooth_png(48)
    finished: list[str] = []

    def send(name: str, data: bytes) -> None:
        with httpx.Client(timeout=120) as client:
            assert translate(client, url, data).status_code == 200
        finished.append(name)

    senders = [threading.Thread(target=send, args=(f"large {i}", large)) for i in range(5)]
    for sender in senders:
        sender.start()
    # Large work waits for the one thread that takes images of any size before the small
    # request is sent.
    deadline = time.monotonic() + 60
    while image_queue_depth(url) < 2:
        assert time.monotonic() < deadline, "the large requests never queued"
        time.sleep(0.02)
    send("small", small)
    for sender in senders:
        sender.join(120)
    # The large request being worked on when the small one came may be done first; none of
    # those still waiting may be.
    assert len(finished) == 6
    assert finished.index("small") <= 1, finished
