"""Load on a real uvicorn: throughput, latency percentiles, statuses, model swaps and memory.

Starts the service on 127.0.0.1 (a free port) and drives it with an async HTTP client, bounded
in requests and in time: a warm-up; then each image size's *service time*, its latency with no
other request in flight; then the measured run (mixed sizes from 64 to 2048 px, PNG, JPEG and
WebP in, PNG, JPEG and WebP out, every served model) while every model is replaced again and
again (``bench/model_swaps.py``: renamed into place, swapped by symlink, and corrupt versions
that must be refused); then an overload run against a second server whose queue is tiny, to
show that the only refusal is 503 with Retry-After. Meanwhile a separate process probes
/healthz and /readyz every 0.5 s, each on a new connection as an orchestrator does, so the
probes time the server and not this client's loop.

Usage: python bench/load.py [--models DIR] [--requests 5000] [--concurrency 32] [--swaps 10]

It serves a copy of --models DIR (default ./models) when that holds model folders, else the
tiny untrained models of the test suite (tests.conftest.write_tiny_models); it prints which.
Exits 1 when a requirement fails: a measured request not answered 200 (a 5xx, a 4xx, a dropped
connection), an answer naming a version it cannot have been computed with, a swap not shown or
a corrupt version not refused, a 503 without Retry-After, a size whose p99 is over its bound, a
small image's (64 and 128 px) p50 over 1 s, /healthz's p99 over 100 ms, or RSS growth after
warm-up of 50 MB or more once the replaced versions have stopped.

A size's bound is ``--wait-bound`` times its service time, plus the service time of a 512 px
image (one tile: the longest job a request may find running in a model's queue). By
default the multiple is three times the connections: ``app/scheduling.py`` keeps every wait
within twice an equal share of the server among them, counted in pixels of work
(``tests/test_scheduling.py``); counted in seconds on a shared machine, one share more allows
for the CPU that other processes take during the run but not while the service times are taken.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.model_swaps import ModelSwapper  # noqa: E402
from model.choices import IMAGE_FORMAT_NAMES  # noqa: E402
from tests.conftest import LiveServer, write_tiny_models  # noqa: E402

SIZES = (64, 128, 256, 512, 1024, 2048)
SIZE_WEIGHTS = (40, 30, 15, 10, 4, 1)
INPUT_FORMATS = (("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"))
OUTPUT_FORMATS = IMAGE_FORMAT_NAMES
RSS_GROWTH_LIMIT_MB = 50.0
# Images up to this side are small: their median must stay under SMALL_P50_LIMIT_S.
SMALL_SIDE = 128
# The side of one whole tile, whose service time every size's bound allows for once.
TILE_SIDE = 512
SMALL_P50_LIMIT_S = 1.0
HEALTH_P99_LIMIT_S = 0.1
# Sequential requests per model and size that time a size's service (the fastest counts).
SERVICE_REPEATS = 2
# How long the replaced versions may take to stop once the measured requests are done.
DRAIN_TIMEOUT_S = 60.0
PROBE_PATHS = ("/healthz", "/readyz")
PROBE_INTERVAL_S = 0.5
# The prober: its own process, so that the client's busy event loop never delays a probe.
# Prints "path seconds-into-the-run latency status" per probe; on SIGTERM it finishes the probe
# and the line in hand, then exits.
PROBER = """
import http.client, signal, sys, time
host, port, interval, paths = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
start = time.perf_counter()
while not stopping:
    for path in paths:
        sent = time.perf_counter()
        try:
            connection = http.client.HTTPConnection(host, port, timeout=60)
            connection.request("GET", path)
            status = connection.getresponse().status
            connection.close()
        except OSError:
            status = 0
        print(path, sent - start, time.perf_counter() - sent, status, flush=True)
    time.sleep(interval)
"""


@dataclass
class Answer:
    """One translate request of the measured run, for the version check."""

    model: str
    sent: float  # perf_counter
    done: float
    status: int
    version: str | None  # X-Model-Version


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    by_size: dict[int, list[float]] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    missing_retry_after: int = 0
    dropped_details: list[str] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    sent: int = 0  # requests sent so far, for the model swaps' pace
    planned: int = 1
    # (path, seconds into the phase, latency, status) of the health probes.
    probes: list[tuple[str, float, float, int]] = field(default_factory=list)
    partial_probe_lines: int = 0  # cut off when the prober stopped: not counted
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.statuses.values()) + sum(self.dropped.values())

    @property
    def progress(self) -> float:
        return self.sent / max(1, self.planned)


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of ``pid`` in MB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def settled_rss_mb(pid: int, timeout: float = 15.0) -> float:
    """``pid``'s resident memory once it has stopped changing (freed buffers and stopped model
    versions given back), in MB."""
    time.sleep(1.0)
    deadline = time.monotonic() + timeout
    current = rss_mb(pid)[0]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        previous, current = current, rss_mb(pid)[0]
        if abs(previous - current) < 1.0:
            break
    return current


def scene(size: int, seed: int) -> np.ndarray:
    """A smooth picture with edges: compresses like a photo, unlike noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    waves = [(*rng.uniform(2, 9, 2).tolist(), rng.uniform(0, 6)) for _ in "rgb"]
    channels = [np.sin(x * a + y * b + phase) for a, b, phase in waves]
    picture = (np.stack(channels, axis=-1) * 90 + 128).astype(np.int16)
    for _ in range(6):
        top, left = rng.integers(0, size, 2)
        extent = max(2, size // 6)
        picture[top : top + extent, left : left + extent] = rng.integers(0, 256, 3)
    picture += rng.integers(-6, 7, picture.shape, dtype=np.int16)
    return np.clip(picture, 0, 255).astype(np.uint8)


def label_map(size: int, seed: int, colors: list[tuple[int, int, int]]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.zeros((size, size), dtype=np.int64)
    ids[int(rng.integers(size // 4, 3 * size // 4)) :] = 1 % len(colors)
    for _ in range(5):
        top, left = rng.integers(0, size, 2)
        extent = max(2, size // 5)
        ids[top : top + extent, left : left + extent] = rng.integers(0, len(colors))
    return np.array(colors, dtype=np.uint8)[ids]


def build_bodies(models: list[dict], seed: int) -> dict[tuple[str, int], list[tuple[bytes, str]]]:
    """For each (model, size): the same picture in every input format (lossless for labels)."""
    bodies = {}
    for index, info in enumerate(models):
        for size in SIZES:
            if info["input_kind"] == "label_map":
                colors = [tuple(entry["color"]) for entry in info["palette"]]
                array = label_map(size, seed + index * 100 + size, colors)
                formats = [("PNG", "image/png")]  # lossy formats would invent colors
            else:
                array = scene(size, seed + index * 100 + size)
                if info["input_kind"] == "grayscale":
                    array = np.asarray(Image.fromarray(array).convert("L"))
                formats = list(INPUT_FORMATS)
            encoded = []
            for pil_format, media_type in formats:
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format=pil_format, quality=90)
                encoded.append((buffer.getvalue(), media_type))
            bodies[(info["name"], size)] = encoded
    return bodies


def request_plan(total: int, names: list[str], rng: random.Random) -> list[tuple]:
    """(model, size, input variant, output format) of each request."""
    return [
        (
            rng.choice(names),
            rng.choices(SIZES, SIZE_WEIGHTS)[0],
            rng.randrange(3),
            rng.choice(OUTPUT_FORMATS),
        )
        for _ in range(total)
    ]


async def drive(
    url: str,
    phase: Phase,
    bodies: dict,
    names: list[str],
    concurrency: int,
    deadline_s: float,
    rng: random.Random,
) -> None:
    """``concurrency`` connections send ``phase.planned`` requests (or stop at the deadline)."""
    plan = request_plan(phase.planned, names, rng)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    stop_at = start + deadline_s

    async def worker(client: httpx.AsyncClient) -> None:
        while phase.sent < len(plan) and time.perf_counter() < stop_at:
            name, size, variant, output = plan[phase.sent]
            phase.sent += 1
            choices = bodies[(name, size)]
            data, media_type = choices[variant % len(choices)]
            sent = time.perf_counter()
            try:
                response = await client.post(
                    f"{url}/v1/models/{name}/translate",
                    params={"format": output},
                    files={"image": (f"input.{media_type.split('/')[1]}", data, media_type)},
                )
            except httpx.HTTPError as error:
                phase.dropped[type(error).__name__] += 1
                phase.dropped_details.append(
                    f"{type(error).__name__}({error!s:.120}) on {name} {size}px {media_type} "
                    f"after {time.perf_counter() - sent:.2f} s, "
                    f"{time.perf_counter() - start:.1f} s into {phase.name}"
                )
                continue
            done = time.perf_counter()
            version = response.headers.get("x-model-version")
            phase.answers.append(Answer(name, sent, done, response.status_code, version))
            phase.statuses[response.status_code] += 1
            if response.status_code == 503 and not response.headers.get("retry-after"):
                phase.missing_retry_after += 1
            if response.status_code == 200:
                phase.latencies.append(done - sent)
                phase.by_size.setdefault(size, []).append(done - sent)

    host, port = url.removeprefix("http://").split(":")
    prober = subprocess.Popen(
        [sys.executable, "-c", PROBER, host, port, str(PROBE_INTERVAL_S), *PROBE_PATHS],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        async with httpx.AsyncClient(limits=limits, timeout=300) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    finally:
        phase.seconds = time.perf_counter() - start
        prober.terminate()
        try:
            output, _ = prober.communicate(timeout=90)
        except subprocess.TimeoutExpired:  # a probe hung: take what it wrote
            prober.kill()
            output, _ = prober.communicate()
    phase.probes, phase.partial_probe_lines = parse_probes(output)


def parse_probes(output: str) -> tuple[list[tuple[str, float, float, int]], int]:
    """The prober's whole lines as (path, at, latency, status), and how many lines were not
    whole (the last one, cut off if the prober was stopped mid-line, or any garbled one)."""
    *lines, rest = output.split("\n")
    probes, partial = [], int(bool(rest.strip()))
    for line in lines:
        fields = line.split()
        try:
            path, at, latency, status = fields
            probes.append((path, float(at), float(latency), int(status)))
        except ValueError:
            partial += 1
    return probes, partial


def percentiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        value = values[0] * 1000 if values else float("nan")
        return value, value, value
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000


def has_models(folder: Path) -> bool:
    return folder.is_dir() and any((child / "spec.json").is_file() for child in folder.iterdir())


def find_models(requested: str | None, scratch: Path) -> tuple[Path, str]:
    """The given folder, else ./models; the tiny test models when neither holds a model."""
    folder = Path(requested) if requested else ROOT / "models"
    if has_models(folder):
        return folder, f"{folder}"
    tiny = write_tiny_models(scratch / "models")
    return tiny, f"tiny untrained test models ({folder} holds no model)"


def average_batch(url: str) -> float:
    """Inputs per inference batch so far, over all models, from /metrics."""
    total = count = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("pix2pix_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("pix2pix_batch_size_count"):
            count += float(line.split()[-1])
    return total / count if count else 0.0


def ready_models(url: str, models: Path, only: list[str] | None) -> list[dict]:
    listing = httpx.get(f"{url}/v1/models", timeout=30).json()["models"]
    ready = [m for m in listing if m["status"] == "ready" and (not only or m["name"] in only)]
    if not ready:
        raise SystemExit(f"no model is ready in {models}: {listing}")
    return ready


def service_times(url: str, bodies: dict, names: list[str]) -> dict[int, float]:
    """Each size's latency with nothing else in flight, in seconds: per model the fastest of
    SERVICE_REPEATS requests (PNG in and out), averaged over the models as the load picks them."""
    times = {}
    with httpx.Client(timeout=300) as client:
        for size in SIZES:
            per_model = []
            for name in names:
                data, media_type = bodies[(name, size)][0]
                fastest = float("inf")
                for _ in range(SERVICE_REPEATS):
                    sent = time.perf_counter()
                    response = client.post(
                        f"{url}/v1/models/{name}/translate",
                        files={"image": ("input", data, media_type)},
                    )
                    response.raise_for_status()
                    fastest = min(fastest, time.perf_counter() - sent)
                per_model.append(fastest)
            times[size] = statistics.fmean(per_model)
    return times


def stopped_versions(log: Path) -> int:
    """Model versions the server has stopped after they were replaced, from its log."""
    return len(re.findall(r"model \S+: version \S+ stopped", log.read_text()))


def wait_for_drain(log: Path, replaced: int) -> int:
    """Wait until the server has stopped ``replaced`` old versions (or DRAIN_TIMEOUT_S)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while stopped_versions(log) < replaced and time.monotonic() < deadline:
        time.sleep(0.5)
    return stopped_versions(log)


def run_phase(url: str, phase: Phase, bodies, names, args, seed) -> Phase:
    rng = random.Random(f"{seed}-{phase.name}")
    asyncio.run(drive(url, phase, bodies, names, args.concurrency, args.max_seconds, rng))
    return phase


def measure(models: Path, scratch: Path, env: dict, log: Path, args) -> dict:
    """Warm-up, service times, then the measured run with model swaps, on one server."""
    served = shutil.copytree(models, scratch / "served", symlinks=False)
    server = LiveServer(served, env=env, log=log)
    try:
        ready = ready_models(server.url, served, args.model)
        names = [m["name"] for m in ready]
        bodies = build_bodies(ready, args.seed)
        memory = {"before": rss_mb(server.process.pid)[0]}
        warmup = Phase("warmup", planned=args.warmup)
        run_phase(server.url, warmup, bodies, names, args, args.seed)
        print(f"warm-up: {warmup.count} requests in {warmup.seconds:.0f} s; timing each size alone")
        service = service_times(server.url, bodies, names)
        # After the service times too, so that every model has run every size once.
        memory["warmup"] = settled_rss_mb(server.process.pid)
        measured = Phase("measured", planned=args.requests)
        swapper = None
        if args.swaps:
            versions = scratch / "versions"
            versions.mkdir()
            swapper = ModelSwapper(
                server.url, served, versions, names, args.swaps, lambda: measured.progress
            )
            swapper.start()
        try:
            run_phase(server.url, measured, bodies, names, args, args.seed)
        finally:
            if swapper is not None:
                swapper.stop(timeout=300)
        replaced = swapper.replaced if swapper else 0
        stopped = wait_for_drain(log, replaced)
        memory["measured"] = settled_rss_mb(server.process.pid)
        memory["peak"] = rss_mb(server.process.pid)[1]
        memory["measured_average_batch"] = average_batch(server.url)
        alive = server.process.poll() is None
    finally:
        server.stop()
        warn_of_tracebacks(log)
    return {
        "phases": (warmup, measured),
        "service": service,
        "swapper": swapper,
        "stopped_versions": stopped,
        "memory": memory,
        "names": names,
        "alive": alive,
    }


def overload(models: Path, env: dict, log: Path, args) -> tuple[Phase, bool]:
    """A second server with a queue of 2, driven at 64 connections: only 200 or 503."""
    server = LiveServer(models, env=env, log=log)
    try:
        ready = ready_models(server.url, models, args.model)
        names = [m["name"] for m in ready]
        bodies = build_bodies(ready, args.seed + 1)
        phase = Phase("overload", planned=args.overload)
        overloaded = argparse.Namespace(**{**vars(args), "concurrency": 64})
        run_phase(server.url, phase, bodies, names, overloaded, args.seed + 1)
        alive = server.process.poll() is None
    finally:
        server.stop()
        warn_of_tracebacks(log)
    return phase, alive


def warn_of_tracebacks(log: Path) -> None:
    if "Traceback" in log.read_text():
        print(f"warning: the server log {log} holds a traceback", file=sys.stderr)


def report_phases(phases: list[Phase], figures: dict) -> None:
    print(
        f"\n{'phase':<10} {'requests':>8} {'seconds':>8} {'req/s':>7} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'p99 ms':>8}  statuses / dropped"
    )
    figures["phases"] = {}
    for phase in phases:
        p50, p95, p99 = percentiles(phase.latencies)
        rate = phase.count / phase.seconds if phase.seconds else 0.0
        statuses = dict(sorted(phase.statuses.items()))
        print(
            f"{phase.name:<10} {phase.count:>8} {phase.seconds:>8.1f} {rate:>7.1f} {p50:>8.0f} "
            f"{p95:>8.0f} {p99:>8.0f}  {statuses} / {dict(phase.dropped) or 0}"
        )
        figures["phases"][phase.name] = {
            "requests": phase.count,
            "seconds": round(phase.seconds, 1),
            "requests_per_s": round(rate, 1),
            "p50_ms": round(p50, 1),
            "p95_ms": round(p95, 1),
            "p99_ms": round(p99, 1),
            "statuses": statuses,
            "dropped": dict(phase.dropped),
            "missing_retry_after": phase.missing_retry_after,
        }


def size_bounds(service: dict[int, float], wait_bound: float) -> dict[int, float]:
    """Each size's p99 bound in seconds: ``wait_bound`` times its service time, plus one
    tile's (the longest job it may find running in a model's queue, which nothing interrupts)."""
    tile = service.get(TILE_SIDE, 0.0)
    return {size: wait_bound * seconds + tile for size, seconds in service.items()}


def report_sizes(measured: Phase, service: dict[int, float], bound: float, figures: dict) -> None:
    bounds = size_bounds(service, bound)
    print(
        f"\n{'measured':>8} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'alone ms':>9} {'p99/alone':>9} {'bound ms':>9}   (200s; alone: the size's service "
        f"time; bound: {bound:g} x alone + one {TILE_SIDE} px alone)"
    )
    figures["wait_bound"], figures["by_size"] = bound, {}
    for size in SIZES:
        values = measured.by_size.get(size, [])
        p50, _, p99 = percentiles(values)
        worst = max(values, default=float("nan")) * 1000
        alone = service.get(size, float("nan")) * 1000
        limit = bounds.get(size, float("nan")) * 1000
        print(
            f"{f'{size} px':>8} {len(values):>6} {p50:>8.0f} {p99:>8.0f} {worst:>8.0f} "
            f"{alone:>9.0f} {p99 / alone:>9.1f} {limit:>9.0f}"
        )
        figures["by_size"][size] = {
            "count": len(values),
            "p50_ms": round(p50, 1),
            "p99_ms": round(p99, 1),
            "max_ms": round(worst, 1),
            "service_ms": round(alone, 1),
            "p99_over_service": round(p99 / alone, 2),
            "bound_ms": round(limit, 1),
        }


def report_probes(measured: Phase, figures: dict) -> None:
    print(
        f"\n{'probe':>8} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   "
        "(every 0.5 s, each on a new connection)"
    )
    figures["probes"] = {"partial_lines": measured.partial_probe_lines}
    for path in PROBE_PATHS:
        probes = [probe for probe in measured.probes if probe[0] == path]
        values = [latency for _, _, latency, _ in probes]
        p50, _, p99 = percentiles(values)
        worst = max(values, default=float("nan")) * 1000
        over_1s = sum(latency > 1.0 for latency in values)
        over_100ms = sum(latency > 0.1 for latency in values)
        failed = sum(status not in (200, 503) for *_, status in probes)
        print(
            f"{path:>8} {len(values):>6} {p50:>8.0f} {p99:>8.0f} {worst:>8.0f}   "
            f"{over_100ms} over 100 ms, {over_1s} over 1 s, {failed} failed"
        )
        figures["probes"][path] = {
            "count": len(values),
            "p50_ms": round(p50, 1),
            "p99_ms": round(p99, 1),
            "max_ms": round(worst, 1),
            "over_100ms": over_100ms,
            "over_1s": over_1s,
            "failed": failed,
        }
    if measured.partial_probe_lines:
        print(f"({measured.partial_probe_lines} probe line cut off as the prober stopped)")


def unexplained_versions(measured: Phase, swapper: ModelSwapper | None) -> list[Answer]:
    """200s whose X-Model-Version is not a version that could have computed them."""
    if swapper is None:
        return [a for a in measured.answers if a.status == 200 and not a.version]
    return [
        answer
        for answer in measured.answers
        if answer.status == 200
        and not swapper.timelines[answer.model].explains(answer.version, answer.sent, answer.done)
    ]


def report_swaps(run: dict, figures: dict) -> list[Answer]:
    swapper, measured = run["swapper"], run["phases"][1]
    wrong = unexplained_versions(measured, swapper)
    figures["swaps"] = {"unexplained_versions": len(wrong)}
    if swapper is None:
        print("\nmodel swaps: none (--swaps 0)")
        return wrong
    kinds = Counter(d.kind for d in swapper.deploys if d.confirmed is not None)
    print(
        f"\nmodel swaps under load: {swapper.replaced} replacements shown serving "
        f"({kinds['rename']} renamed into place, {kinds['symlink']} by symlink), "
        f"{swapper.refused} corrupt versions refused, over {len(run['names'])} models; "
        f"{len(wrong)} answers name a version that cannot have computed them; "
        f"{run['stopped_versions']} replaced versions stopped"
    )
    figures["swaps"].update(
        {
            "replaced": swapper.replaced,
            "renamed": kinds["rename"],
            "symlinked": kinds["symlink"],
            "refused_corrupt": swapper.refused,
            "stopped_versions": run["stopped_versions"],
            "problems": swapper.problems,
        }
    )
    for answer in wrong[:5]:
        print(f"unexplained: {answer}")
    return wrong


def requirements(run: dict, overloaded: Phase, overload_alive: bool, args, wrong) -> list[str]:
    """What failed, in words; empty when every requirement held."""
    warmup, measured = run["phases"]
    failures = []
    for phase in (warmup, measured, overloaded):
        if phase.name == "overload" and set(phase.statuses) - {200, 503}:
            failures.append(f"overload: statuses other than 200/503: {dict(phase.statuses)}")
        elif phase.name != "overload" and set(phase.statuses) - {200}:
            failed = {status: n for status, n in phase.statuses.items() if status != 200}
            failures.append(f"{phase.name}: failed requests {failed}")
        if phase.dropped:
            failures.append(f"{phase.name}: dropped connections {dict(phase.dropped)}")
            for detail in phase.dropped_details[:10]:
                print(f"dropped: {detail}")
        if phase.missing_retry_after:
            failures.append(f"{phase.name}: {phase.missing_retry_after} 503s without Retry-After")
    if measured.count < args.requests:
        failures.append(f"only {measured.count} of {args.requests} requests ran before the bound")
    if wrong:
        failures.append(f"{len(wrong)} answers name a version that cannot have computed them")
    swapper = run["swapper"]
    if swapper is not None:
        failures += [f"swap: {problem}" for problem in swapper.problems]
        if run["stopped_versions"] < swapper.replaced:
            failures.append(
                f"only {run['stopped_versions']} of {swapper.replaced} replaced versions stopped"
            )
    failures += latency_failures(run, args)
    memory = run["memory"]
    growth = memory["measured"] - memory["warmup"]
    if growth >= RSS_GROWTH_LIMIT_MB:
        failures.append(f"RSS grew {growth:.1f} MB after warm-up (limit {RSS_GROWTH_LIMIT_MB})")
    if not (run["alive"] and overload_alive):
        failures.append("a server process died")
    return failures


def latency_failures(run: dict, args) -> list[str]:
    measured, failures = run["phases"][1], []
    bounds = size_bounds(run["service"], args.wait_bound)
    for size, values in sorted(measured.by_size.items()):
        p50, _, p99 = percentiles(values)
        if p99 > bounds[size] * 1000:
            failures.append(f"{size} px: p99 {p99:.0f} ms over its bound {bounds[size]:.1f} s")
        if size <= SMALL_SIDE and p50 > SMALL_P50_LIMIT_S * 1000:
            failures.append(f"{size} px: p50 {p50:.0f} ms over {SMALL_P50_LIMIT_S:g} s")
    health = [latency for path, _, latency, _ in measured.probes if path == "/healthz"]
    if health and percentiles(health)[2] > HEALTH_P99_LIMIT_S * 1000:
        failures.append(f"/healthz p99 {percentiles(health)[2]:.0f} ms over 100 ms")
    return failures


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="models directory to serve (default: ./models)")
    parser.add_argument("--requests", type=int, default=5000, help="measured requests")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests")
    parser.add_argument("--concurrency", type=int, default=32, help="open connections")
    parser.add_argument(
        "--queue-size",
        type=int,
        default=0,
        help="PIX2PIX_QUEUE_SIZE for the measured run (default: concurrency x max batch, so "
        "the bound is never exceeded)",
    )
    parser.add_argument("--overload", type=int, default=600, help="requests in the overload run")
    parser.add_argument("--max-seconds", type=float, default=1800, help="time bound per phase")
    parser.add_argument(
        "--swaps", type=int, default=10, help="replacements of each model during the run"
    )
    parser.add_argument(
        "--wait-bound",
        type=float,
        help="most a size's p99 may be, in multiples of its service time, besides one 512 px "
        "service time (default: three times the concurrency)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs="+", help="image sizes (default: 64-2048 mix)")
    parser.add_argument("--model", nargs="+", help="only these models (default: all)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--log-dir", type=Path, help="keep the servers' logs here")
    args = parser.parse_args()
    args.wait_bound = args.wait_bound or 3.0 * args.concurrency
    return args


def main() -> int:
    args = parse_arguments()
    if args.sizes:  # a fixed set of sizes, equally likely, instead of the default mix
        global SIZES, SIZE_WEIGHTS
        SIZES, SIZE_WEIGHTS = tuple(args.sizes), (1,) * len(args.sizes)
    max_batch = 8
    queue_size = args.queue_size or args.concurrency * max_batch
    env = {
        "PIX2PIX_QUEUE_SIZE": str(queue_size),
        "PIX2PIX_MAX_BATCH": str(max_batch),
        # Tiles of 2048 px images, PNGs of 20 MB worst case.
        "PIX2PIX_MAX_UPLOAD_BYTES": str(32 * 1024 * 1024),
        # As `pix2pix serve` and the Docker images do: outlast a busy CPU's stalls.
        "UVICORN_TIMEOUT_KEEP_ALIVE": "75",
    }
    with tempfile.TemporaryDirectory(prefix="pix2pix-load-") as scratch:
        scratch = Path(scratch)
        models, source = find_models(args.models, scratch)
        logs = args.log_dir or scratch
        logs.mkdir(parents=True, exist_ok=True)
        print(f"models: {source}")
        run = measure(models, scratch, env, logs / "server.log", args)
        overloaded, overload_alive = Phase("overload"), True
        if args.overload:  # 0 skips the overload run
            overload_env = {**env, "PIX2PIX_QUEUE_SIZE": "2", "PIX2PIX_MAX_BATCH": "1"}
            overloaded, overload_alive = overload(models, overload_env, logs / "overload.log", args)

    figures = {"models": source, "queue_size": queue_size}
    warmup, measured = run["phases"]
    report_phases([warmup, measured, overloaded], figures)
    report_sizes(measured, run["service"], args.wait_bound, figures)
    report_probes(measured, figures)
    wrong = report_swaps(run, figures)
    memory = run["memory"]
    growth = memory["measured"] - memory["warmup"]
    print(
        f"\nserver RSS: {memory['before']:.0f} MB at start, {memory['warmup']:.0f} MB after "
        f"warm-up, {memory['measured']:.0f} MB after the run and the replaced versions stopped "
        f"(growth {growth:+.1f} MB), peak {memory['peak']:.0f} MB; queue bound {queue_size}; "
        f"models {run['names']}"
    )
    print(f"average batch size: {memory['measured_average_batch']:.2f} inputs per inference")
    figures["average_batch"] = round(memory["measured_average_batch"], 2)
    figures["rss_mb"] = {k: round(v, 1) for k, v in memory.items() if isinstance(v, float)}
    figures["rss_growth_after_warmup_mb"] = round(growth, 1)
    failures = requirements(run, overloaded, overload_alive, args, wrong)
    figures["failures"] = failures
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print("\n" + ("FAIL: " + "; ".join(failures) if failures else "all requirements held"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
