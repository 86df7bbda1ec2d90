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
import random
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

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


def test_a_small_request_overtakes_the_queued_work_of_a_large_one_after_one_job():
    queue = FairQueue()
    for tile in range(6):
        queue.push(f"large {tile}", LARGE, 512 * 512)
    assert queue.pop() == "large 0"
    queue.push("small", Ticket(64 * 64, arrived=1.0), 64 * 64)
    # The large request has waited a little and the small one nothing: one tile, then the
    # small one, which has by then waited far longer for its size.
    assert queue.pop() == "large 1"
    assert queue.pop() == "small"
    assert [queue.pop() for _ in range(4)] == [f"large {tile}" for tile in range(2, 6)]
    assert queue.pop() is None and len(queue) == 0


def test_equal_waits_go_to_the_smaller_image_and_longer_waits_first():
    queue = FairQueue()
    queue.push("large", Ticket(1024 * 1024, arrived=0.0), 1024 * 1024)
    queue.push("small", Ticket(128 * 128, arrived=0.0), 128 * 128)
    assert queue.pop() == "small"  # neither has waited yet
    queue.push("medium", Ticket(512 * 512, arrived=1.0), 512 * 512)
    # The large one waited 128x128 pixels of work for 1024x1024 of its own, the medium one
    # nothing: the large goes first, then the medium.
    assert queue.pop() == "large"
    assert queue.pop() == "medium"


def test_large_requests_are_served_however_many_small_ones_keep_coming():
    queue = FairQueue()
    for tile in range(4):
        queue.push(f"large {tile}", LARGE, 512 * 512)
    taken, work_when_taken = [], {}
    # A new small request whenever one job is done: they alone would keep the queue busy.
    for index in range(3000):
        queue.push(f"small {index}", Ticket(64 * 64, arrived=float(index)), 64 * 64)
        taken.append(queue.pop())
        work_when_taken[taken[-1]] = queue.work
    assert len(queue) == 3000 + 4 - len(taken)
    # Each small request waits for a few jobs at most; the large one waits longer in all, but
    # about as long for its size, and is done before the queue has handed out four times its
    # own pixels of work.
    small_positions = [taken.index(f"small {index}") for index in range(2990)]
    assert all(position - index <= 4 for index, position in enumerate(small_positions))
    assert work_when_taken["large 3"] <= 4 * LARGE.pixels


def test_a_request_counts_its_wait_from_its_first_job_not_from_an_idle_time():
    queue = FairQueue()
    for index in range(100):  # small images alone: the queue works, nobody waits
        queue.push(f"small {index}", Ticket(64 * 64, arrived=float(index)), 64 * 64)
        assert queue.pop() == f"small {index}"
    ticket = Ticket(2048 * 2048, arrived=100.0)
    queue.push("large 0", ticket, 64 * 64)
    assert queue.waited(ticket) == 0.0
    queue.push("small 100", Ticket(64 * 64, arrived=101.0), 64 * 64)
    # The large request, new, has no claim saved up from the 100 small ones before it.
    assert queue.pop() == "small 100"
    assert queue.waited(ticket) == 64 * 64 / (2048 * 2048)


def test_within_a_size_class_the_request_that_came_first_goes_first():
    queue = FairQueue()
    queue.push("late request, first step", Ticket(100, arrived=2.0), 100)
    queue.push("early request, later step", Ticket(100, arrived=1.0), 100)
    assert queue.pop() == "early request, later step"


# The load mix of bench/load.py: image sides and how often each comes.
LOAD_SIDES = (64, 128, 256, 512, 1024, 2048)
LOAD_WEIGHTS = (40, 30, 15, 10, 4, 1)
LARGEST_JOB = 2048 * 2048


def request_jobs(side: int) -> list[int]:
    """Pixels of each job of one request, as the service queues them: its network crops (one
    for images up to a tile, else 512x512 tiles overlapping by 64) and its whole-image step."""
    if side <= 512:
        return [side * side, side * side]
    tiles_per_side = len(range(0, side - 512, 448)) + 1
    return [512 * 512] * tiles_per_side**2 + [side * side]


def slowest_waits(requests_waiting: int, jobs: int, seed: int) -> dict[int, float]:
    """Per image side: the longest wait of a request, in its own work, besides one job of the
    largest size that may have been running; ``requests_waiting`` requests always in the queue,
    a new one coming whenever one is done (as bench/load.py's connections send them)."""
    rng = random.Random(seed)
    queue: FairQueue[tuple[dict, int]] = FairQueue()
    slowest: dict[int, float] = {}

    def send(arrival: int) -> None:
        side = rng.choices(LOAD_SIDES, LOAD_WEIGHTS)[0]
        ticket = Ticket(side * side, float(arrival))
        pieces = request_jobs(side)
        request = {"side": side, "left": len(pieces), "sent": queue.work, "own": sum(pieces)}
        for pixels in pieces:
            queue.push((request, arrival), ticket, pixels)

    for arrival in range(requests_waiting):
        send(arrival)
    for step in range(jobs):
        request, _ = queue.pop()
        request["left"] -= 1
        if request["left"] == 0:
            waited = (queue.work - request["sent"] - LARGEST_JOB) / request["own"]
            slowest[request["side"]] = max(slowest.get(request["side"], 0.0), waited)
            send(requests_waiting + step)
    return slowest


@pytest.mark.parametrize("requests_waiting", [8, 32])
@pytest.mark.parametrize("seed", [0, 1])
def test_no_size_waits_more_than_twice_an_equal_share_under_the_load_mix(requests_waiting, seed):
    slowest = slowest_waits(requests_waiting, jobs=20_000, seed=seed)
    assert set(slowest) == set(LOAD_SIDES)
    # An equal share among n requests makes each wait n times its own work: no size, the
    # largest included, waits more than twice that.
    assert max(slowest.values()) <= 2 * requests_waiting, slowest


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


def test_the_batcher_runs_a_small_request_before_most_of_the_queued_tiles_of_a_large_one():
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
    # Tiles of 256x256 fill the pixel budget one by one. The large request has waited one
    # tile when the small one comes, so it gets one more; then the small one, by then far
    # more overdue for its size, goes before the other two.
    assert runner.heights == [[256], [256], [32], [256], [256]]


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
