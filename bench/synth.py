"""How fast the synthetic landscape dataset renders and writes, on one thread of one core.

Usage: python bench/synth.py [--count 100] [--sizes 128 256]
"""

from __future__ import annotations

import os

# Pin the process and every numeric library to one thread before numpy loads.
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data.synth import render_scene, scene_seed, write_synthetic_dataset  # noqa: E402


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}"


def render_rate(size: int, count: int) -> float:
    started = time.perf_counter()
    for index in range(count):
        render_scene(scene_seed(0, index), size)
    return count / (time.perf_counter() - started)


def write_rate(size: int, count: int) -> tuple[float, float]:
    """Pairs per second for render + PNG writing, and the mean kilobytes per pair on disk."""
    with tempfile.TemporaryDirectory() as directory:
        summary = write_synthetic_dataset(directory, n=count, size=size, seed=0)
        total = sum(path.stat().st_size for path in Path(directory).rglob("*.png"))
    return summary["pairs_per_second"], total / count / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="scenes per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    args = parser.parse_args()

    print(f"synthetic landscapes, {args.count} scenes per row, {pin_to_one_core()}")
    render_scene(0, 64)  # warm caches and imports outside the timed runs
    print(f"{'size':>6} {'render pairs/s':>15} {'render+write pairs/s':>21} {'KB/pair':>8}")
    for size in args.sizes:
        rendered = render_rate(size, args.count)
        written, kilobytes = write_rate(size, args.count)
        print(f"{size:>6} {rendered:>15.1f} {written:>21.1f} {kilobytes:>8.1f}")


if __name__ == "__main__":
    main()
