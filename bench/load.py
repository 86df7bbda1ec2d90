"""Load on a real uvicorn: throughput, latency percentiles, statuses and the server's memory.

Starts the service on 127.0.0.1 (a free port) and drives it with an async HTTP client, bounded
in requests and in time: a warm-up, then the measured run (mixed sizes from 64 to 2048 px, PNG,
JPEG and WebP in, PNG, JPEG and WebP out, every served model), then an overload run against a
second server whose queue is tiny, to show that the only refusal is 503 with Retry-After.
Meanwhile a separate process probes /healthz and /readyz every 0.5 s, each on a new
connection as an orchestrator does, so the probes time the server and not this client's loop.

Usage: python bench/load.py [--models DIR] [--requests 5000] [--concurrency 32]

It serves --models DIR (default ./models) when that holds model folders, else the tiny
untrained models of the test suite (tests.conftest.write_tiny_models); it prints which.
Exits 1 when a requirement fails: a 5xx, a dropped connection, a 503 without Retry-After, or
RSS growth after warm-up of 50 MB or more.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
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

from model.choices import IMAGE_FORMAT_NAMES  # noqa: E402
from tests.conftest import LiveServer, write_tiny_models  # noqa: E402

SIZES = (64, 128, 256, 512, 1024, 2048)
SIZE_WEIGHTS = (40, 30, 15, 10, 4, 1)
INPUT_FORMATS = (("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"))
OUTPUT_FORMATS = IMAGE_FORMAT_NAMES
RSS_GROWTH_LIMIT_MB = 50.0
PROBE_PATHS = ("/healthz", "/readyz")
PROBE_INTERVAL_S = 0.5
# The prober: its own process, so that the client's busy event loop never delays a probe.
# Prints "path seconds-into-the-run latency status" per probe until it is terminated.
PROBER = """
import http.client, sys, time
host, port, interval, paths = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
start = time.perf_counter()
while True:
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
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    by_size: dict[int, list[float]] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    missing_retry_after: int = 0
    dropped_details: list[str] = field(default_factory=list)
    # (path, seconds into the phase, latency, status) of the health probes.
    probes: list[tuple[str, float, float, int]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.statuses.values()) + sum(self.dropped.values())


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of ``pid`` in MB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


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


async def drive(
    url: str,
    phase: Phase,
    bodies: dict,
    names: list[str],
    total: int,
    concurrency: int,
    deadline_s: float,
    rng: random.Random,
) -> None:
    """``concurrency`` connections send ``total`` requests (or stop at the deadline)."""
    plan = [
        (
            rng.choice(names),
            rng.choices(SIZES, SIZE_WEIGHTS)[0],
            rng.randrange(3),
            rng.choice(OUTPUT_FORMATS),
        )
        for _ in range(total)
    ]
    position = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    stop_at = start + deadline_s

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal position
        while position < len(plan) and time.perf_counter() < stop_at:
            name, size, variant, output = plan[position]
            position += 1
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
            latency = time.perf_counter() - sent
            phase.statuses[response.status_code] += 1
            if response.status_code == 503 and not response.headers.get("retry-after"):
                phase.missing_retry_after += 1
            if response.status_code == 200:
                phase.latencies.append(latency)
                phase.by_size.setdefault(size, []).append(latency)

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
        output, _ = prober.communicate(timeout=60)
    for line in output.splitlines():
        path, at, latency, status = line.split()
        phase.probes.append((path, float(at), float(latency), int(status)))


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


def run_server(
    models: Path, env: dict, log: Path, seed: int, phases, only: list[str] | None = None
) -> tuple[dict, list[Phase]]:
    server = LiveServer(models, env=env, log=log)
    try:
        listing = httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"]
        ready = [m for m in listing if m["status"] == "ready"]
        if only:
            ready = [m for m in ready if m["name"] in only]
        if not ready:
            raise SystemExit(f"no model is ready in {models}: {listing}")
        bodies = build_bodies(ready, seed)
        names = [m["name"] for m in ready]
        memory = {"before": rss_mb(server.process.pid)[0]}
        results = []
        for phase_name, total, concurrency, deadline in phases:
            phase = Phase(phase_name)
            rng = random.Random(f"{seed}-{phase_name}")
            asyncio.run(drive(server.url, phase, bodies, names, total, concurrency, deadline, rng))
            memory[phase_name], memory["peak"] = rss_mb(server.process.pid)
            memory[f"{phase_name}_average_batch"] = average_batch(server.url)
            results.append(phase)
        memory["models"] = names
        alive = server.process.poll() is None
        memory["alive"] = alive
        return memory, results
    finally:
        server.stop()
        if "Traceback" in log.read_text():
            print(f"warning: the server log {log} holds a traceback", file=sys.stderr)


def main() -> int:
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
    parser.add_argument("--max-seconds", type=float, default=1200, help="time bound per phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs="+", help="image sizes (default: 64-2048 mix)")
    parser.add_argument("--model", nargs="+", help="only these models (default: all)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--log-dir", type=Path, help="keep the servers' logs here")
    args = parser.parse_args()

    if args.sizes:  # a fixed set of sizes, equally likely, instead of the default mix
        global SIZES, SIZE_WEIGHTS
        SIZES, SIZE_WEIGHTS = tuple(args.sizes), (1,) * len(args.sizes)
    max_batch = 8
    queue_size = args.queue_size or args.concurrency * max_batch
    with tempfile.TemporaryDirectory(prefix="pix2pix-load-") as scratch:
        scratch = Path(scratch)
        models, source = find_models(args.models, scratch)
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
        print(f"models: {source}")
        env = {
            "PIX2PIX_QUEUE_SIZE": str(queue_size),
            "PIX2PIX_MAX_BATCH": str(max_batch),
            # Tiles of 2048 px images, PNGs of 20 MB worst case.
            "PIX2PIX_MAX_UPLOAD_BYTES": str(32 * 1024 * 1024),
            # As `pix2pix serve` and the Docker images do: outlast a busy CPU's stalls.
            "UVICORN_TIMEOUT_KEEP_ALIVE": "75",
        }
        memory, (warmup, measured) = run_server(
            models,
            env,
            (args.log_dir or scratch) / "server.log",
            args.seed,
            [
                ("warmup", args.warmup, args.concurrency, args.max_seconds),
                ("measured", args.requests, args.concurrency, args.max_seconds),
            ],
            only=args.model,
        )
        overload_env = {**env, "PIX2PIX_QUEUE_SIZE": "2", "PIX2PIX_MAX_BATCH": "1"}
        overload, overload_memory = Phase("overload"), {"alive": True}
        if args.overload:  # 0 skips the overload run
            overload_memory, (overload,) = run_server(
                models,
                overload_env,
                (args.log_dir or scratch) / "overload.log",
                args.seed + 1,
                [("overload", args.overload, 64, args.max_seconds)],
                only=args.model,
            )

    print(
        f"\n{'phase':<10} {'requests':>8} {'seconds':>8} {'req/s':>7} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'p99 ms':>8}  statuses / dropped"
    )
    figures = {"models": source, "queue_size": queue_size, "phases": {}}
    for phase in (warmup, measured, overload):
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
    print(
        f"\n{'measured':>8} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   "
        "(sizes: 200s; probes: every 0.5 s, each on a new connection)"
    )
    figures["by_size"], figures["probes"] = {}, {}
    for size in SIZES:
        values = measured.by_size.get(size, [])
        p50, _, p99 = percentiles(values)
        worst = max(values, default=float("nan")) * 1000
        print(f"{f'{size} px':>8} {len(values):>6} {p50:>8.0f} {p99:>8.0f} {worst:>8.0f}")
        figures["by_size"][size] = {
            "count": len(values),
            "p50_ms": round(p50, 1),
            "p99_ms": round(p99, 1),
            "max_ms": round(worst, 1),
        }
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
    growth = memory["measured"] - memory["warmup"]
    print(
        f"\nserver RSS: {memory['before']:.0f} MB at start, {memory['warmup']:.0f} MB after "
        f"warm-up, {memory['measured']:.0f} MB after the run (growth {growth:+.1f} MB), "
        f"peak {memory['peak']:.0f} MB; queue bound {queue_size}; models {memory['models']}"
    )
    print(f"average batch size: {memory['measured_average_batch']:.2f} inputs per inference")
    figures["average_batch"] = round(memory["measured_average_batch"], 2)
    figures["rss_mb"] = {k: round(v, 1) for k, v in memory.items() if isinstance(v, float)}
    figures["rss_growth_after_warmup_mb"] = round(growth, 1)

    failures = []
    for phase in (warmup, measured, overload):
        server_errors = sum(n for status, n in phase.statuses.items() if status >= 500)
        if phase.name != "overload" and server_errors:
            failures.append(f"{phase.name}: {server_errors} responses 5xx")
        if phase.name == "overload" and set(phase.statuses) - {200, 503}:
            failures.append(f"overload: statuses other than 200/503: {dict(phase.statuses)}")
        if phase.dropped:
            failures.append(f"{phase.name}: dropped connections {dict(phase.dropped)}")
            for detail in phase.dropped_details[:10]:
                print(f"dropped: {detail}")
        if phase.missing_retry_after:
            failures.append(f"{phase.name}: {phase.missing_retry_after} 503s without Retry-After")
    if measured.count < args.requests:
        failures.append(f"only {measured.count} of {args.requests} requests ran before the bound")
    if growth >= RSS_GROWTH_LIMIT_MB:
        failures.append(f"RSS grew {growth:.1f} MB after warm-up (limit {RSS_GROWTH_LIMIT_MB})")
    if not (memory["alive"] and overload_memory["alive"]):
        failures.append("a server process died")
    figures["failures"] = failures
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print("\n" + ("FAIL: " + "; ".join(failures) if failures else "all requirements held"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
