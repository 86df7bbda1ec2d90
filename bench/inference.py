"""Inference speed of the generator per runtime, batch and size; prints a table.

    python bench/inference.py                 # paper generator (unet 256, width 64)
    python bench/inference.py --quick         # batch 1 and 4 at 256 px only
    python bench/inference.py --model models/labels2photo --sizes 128 256

Runtimes: ``eager-nchw`` (plain fp32 PyTorch, NCHW, as the reference runs it), ``torch``
(fp32, channels_last), ``torch-bf16`` (autocast), ``torch-compile-bf16`` (inductor with
weight freezing), ``onnx`` (ONNX Runtime, CPU), ``onnx-int8`` (``export --int8``: int8
convolutions, calibrated on random inputs here). GFLOP/s counts the generator's own FLOPs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.checkpoint import save_model_folder
from model.export import export_model, random_inputs
from model.networks import UNetGenerator, build_generator, init_weights
from model.runtime import OnnxRuntime, TorchRuntime, load_model
from model.spec import GeneratorArchitecture, GeneratorSpec


def paper_model(folder: Path) -> Path:
    torch.manual_seed(0)
    generator = UNetGenerator(3, 3, num_downs=8, base_width=64, norm="batch")
    init_weights(generator)
    # Batch-norm running statistics from a few training-mode passes, so that activations have
    # trained-like scales (int8 calibration depends on them; the other runtimes do not care).
    with torch.no_grad():
        for _ in range(3):
            generator(torch.rand(2, 3, 256, 256) * 2 - 1)
    spec = GeneratorSpec(GeneratorArchitecture(), 3, 3, train_size=256, pad_multiple=256)
    save_model_folder(folder, generator.eval(), spec)
    return folder


def gflop_per_image(spec: GeneratorSpec, size: int) -> float:
    generator = build_generator(spec.architecture, spec.in_channels, spec.out_channels).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        generator(torch.zeros(1, spec.in_channels, size, size))
    return counter.get_total_flops() / 1e9


def build_runtimes(folder: Path, names: list[str], workdir: Path) -> dict:
    loaded = load_model(folder, runtime="torch", device="cpu")
    runtimes = {}
    for name in names:
        if name == "eager-nchw":
            generator = load_model(folder, runtime="torch", device="cpu").runtime.generator
            runtimes[name] = TorchRuntime(generator, "cpu", channels_last=False)
        elif name == "torch":
            runtimes[name] = loaded.runtime
        elif name == "torch-bf16":
            generator = load_model(folder, runtime="torch", device="cpu").runtime.generator
            runtimes[name] = TorchRuntime(generator, "cpu", precision="bf16")
        elif name == "torch-compile-bf16":
            runtimes[name] = load_model(folder, runtime=name, device="cpu").runtime
        elif name == "onnx":
            exported = export_model(folder, workdir / "onnx", "onnx")
            runtimes[name] = OnnxRuntime(exported.folder / "generator.onnx")
        elif name == "onnx-int8":
            size = loaded.spec.train_size
            calibration = random_inputs(loaded.spec, 16, size, size, np.random.default_rng(1))
            exported = export_model(
                folder, workdir / "int8", "onnx", int8=True, calibration=calibration
            )
            print(f"onnx-int8: {exported.psnr:.1f} dB PSNR against fp32 (held-out inputs)")
            runtimes[name] = OnnxRuntime(exported.folder / "generator.onnx")
        else:
            raise SystemExit(f"unknown runtime {name}")
    return runtimes, loaded.spec


def measure(runtime, batch: np.ndarray, seconds: float, min_repeats: int = 3) -> float:
    """Median seconds per call after two warm-up calls."""
    runtime(batch)
    runtime(batch)
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < seconds:
        begin = time.perf_counter()
        runtime(batch)
        times.append(time.perf_counter() - begin)
        if len(times) >= 50:
            break
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model folder (default: paper generator)")
    parser.add_argument("--runtimes", nargs="+", default=[
        "eager-nchw", "torch", "torch-bf16", "torch-compile-bf16", "onnx", "onnx-int8",
    ])  # fmt: skip
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per cell")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 4 at 256 px")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.sizes, args.seconds = [1, 4], [256], 1.0
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        folder = args.model or paper_model(workdir / "paper")
        runtimes, spec = build_runtimes(folder, args.runtimes, workdir)
        flops = {size: gflop_per_image(spec, size) for size in args.sizes}
        print(
            f"generator: unet num_downs={spec.architecture.num_downs} "
            f"width={spec.architecture.base_width}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
        )
        header = f"| {'runtime':<20} | batch | size | ms/image | images/s | GFLOP/s |"
        print(header)
        print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
        rng = np.random.default_rng(0)
        for size in args.sizes:
            for batch_size in args.batches:
                batch = random_inputs(spec, batch_size, size, size, rng)
                for name, runtime in runtimes.items():
                    seconds = measure(runtime, batch, args.seconds) / batch_size
                    print(
                        f"| {name:<20} | {batch_size:>5} | {size:>4} | {seconds * 1000:>8.1f} "
                        f"| {1 / seconds:>8.2f} | {flops[size] / seconds:>7.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
