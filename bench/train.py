"""Images/s of the full pix2pix iteration: the trainer's step against a plain reference step.

One iteration is what pix2pix does per batch: G forward, D on the fake and the real pair, D's
backward and Adam step, D on the fake pair again for G, G's backward and Adam step. The
baseline is that iteration written the way the reference implementation trains (fp32, NCHW,
no autocast, per-parameter Adam, ``requires_grad`` toggling); ours is ``Trainer.train_step``
at each precision. Both run in the same process, interleaved round by round, on the same
batch, so a busy machine slows both alike. Then the real loop (data loader with workers,
augmentation, host-to-device copies) runs at one batch size to measure the data-wait share.

Last, what the experiment trackers (``train.trackers``) add: each log record and each sample
grid sent, and flushed, with and without them, against the shortest trainer step measured, at
the presets' ``log_every`` and ``sample_every``.

``--check`` instead trains the paper configuration for a fixed number of steps with the
fastest settings and reports images/s, peak memory and model FLOP utilisation (what
``bench/gpu_check.sh`` runs).

Usage:
  python bench/train.py                                  # the table at 256 px, batch 1 4 16
  python bench/train.py --batches 4 --precisions bf16 --no-channels-last
  python bench/train.py --tiny                           # seconds: proves it works
  python bench/train.py --check --steps 200 --batch 64   # the GPU check
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as functional
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model.networks import PatchDiscriminator, init_weights
from training.config import load_config
from training.data.synth import write_synthetic_dataset
from training.loop.reporting import Reporter
from training.loop.tracking import build_trackers
from training.loop.trainer import Trainer

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H200": 989.0}


@dataclass
class Shape:
    size: int
    num_downs: int
    width: int
    d_width: int
    d_layers: int


PAPER = Shape(size=256, num_downs=8, width=64, d_width=64, d_layers=3)
TINY = Shape(size=32, num_downs=5, width=8, d_width=8, d_layers=2)


# -- the baseline: the reference implementation's iteration, written plainly --------------------


class PlainUNet(nn.Module):
    """The paper's U-Net built from stock layers only, recursively, the way the reference
    implementation builds it: none of the trainer's layout or small-map shortcuts."""

    def __init__(self, channels: int, num_downs: int, width: int):
        super().__init__()
        widths = [width * min(2**level, 8) for level in range(num_downs)]
        self.block = self._level(channels, widths, 0)

    def _level(self, outer: int, widths: list[int], level: int) -> nn.Module:
        inner = widths[level]
        first, innermost = level == 0, level == len(widths) - 1
        down: list[nn.Module] = [] if first else [nn.LeakyReLU(0.2, True)]
        down.append(nn.Conv2d(widths[level - 1] if level else outer, inner, 4, 2, 1, bias=False))
        if not first and not innermost:
            down.append(nn.BatchNorm2d(inner))
        middle = [] if innermost else [self._level(outer, widths, level + 1)]
        up_in = inner if innermost else inner * 2
        up_out = outer if first else widths[level - 1]
        up: list[nn.Module] = [nn.ReLU(True)]
        up.append(nn.ConvTranspose2d(up_in, up_out, 4, 2, 1, bias=first))
        up += [nn.Tanh()] if first else [nn.BatchNorm2d(up_out)]
        if len(widths) - 5 < level < len(widths) - 1:  # the three levels above the innermost
            up.append(nn.Dropout(0.5))
        return _Skip(nn.Sequential(*down, *middle, *up), keep=not first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Skip(nn.Module):
    def __init__(self, body: nn.Module, keep: bool):
        super().__init__()
        self.body, self.keep = body, keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1) if self.keep else self.body(x)


class BaselineStep:
    """pix2pix as the reference trains it: fp32, NCHW, per-parameter Adam, no autocast."""

    def __init__(self, shape: Shape, device: torch.device):
        self.generator = PlainUNet(3, shape.num_downs, shape.width).to(device)
        self.discriminator = PatchDiscriminator(6, shape.d_width, shape.d_layers).to(device)
        init_weights(self.generator)
        init_weights(self.discriminator)
        adam = {"lr": 2e-4, "betas": (0.5, 0.999), "foreach": False}
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), **adam)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), **adam)
        self.criterion = torch.nn.BCEWithLogitsLoss()

    def gan_loss(self, prediction: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.tensor(1.0 if real else 0.0, device=prediction.device)
        return self.criterion(prediction, target.expand_as(prediction))

    def __call__(self, real_a: torch.Tensor, real_b: torch.Tensor) -> None:
        fake_b = self.generator(real_a)
        # backward_D
        self.discriminator.requires_grad_(True)
        self.optimizer_d.zero_grad()
        loss_d_fake = self.gan_loss(self.discriminator(real_a, fake_b.detach()), False)
        loss_d_real = self.gan_loss(self.discriminator(real_a, real_b), True)
        ((loss_d_fake + loss_d_real) * 0.5).backward()
        self.optimizer_d.step()
        # backward_G
        self.discriminator.requires_grad_(False)
        self.optimizer_g.zero_grad()
        loss_g_gan = self.gan_loss(self.discriminator(real_a, fake_b), True)
        loss_g_l1 = functional.l1_loss(fake_b, real_b) * 100.0
        (loss_g_gan + loss_g_l1).backward()
        self.optimizer_g.step()


# -- ours: the real trainer ------------------------------------------------------------------


def make_dataset(root: Path, shape: Shape, count: int) -> Path:
    write_synthetic_dataset(root, n=count, size=shape.size, seed=0, task="labels")
    return root


def make_trainer(
    data: Path,
    runs: Path,
    shape: Shape,
    args: argparse.Namespace,
    batch: int,
    precision: str,
    val_images: int = 1,
) -> Trainer:
    """A Trainer at the bench's shape: photo in, photo out, like facades."""
    crop = shape.size
    overrides = {
        "name": f"b{batch}-{precision}-{time.monotonic_ns()}",
        "runs_dir": str(runs),
        "data.root": str(data),
        "data.input_kind": "photo",
        "data.load_size": str(crop + crop // 8 if shape is not TINY else crop + 4),
        "data.crop_size": str(crop),
        "data.num_workers": str(args.workers),
        "generator.num_downs": str(shape.num_downs),
        "generator.base_width": str(shape.width),
        "discriminator.base_width": str(shape.d_width),
        "discriminator.n_layers": str(shape.d_layers),
        "train.batch_size": str(batch),
        "train.precision": precision,
        "train.device": args.device,
        "train.channels_last": str(args.channels_last).lower(),
        "train.compile": str(args.compile).lower(),
        "train.val_images": str(val_images),
    }
    return Trainer(load_config(None, overrides), progress=False)


def fixed_batch(trainer: Trainer, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [trainer.train_set[i % len(trainer.train_set)] for i in range(batch)]
    real_a = torch.stack([item["A"] for item in items])
    real_b = torch.stack([item["B"] for item in items])
    return trainer._to_device(real_a), trainer._to_device(real_b)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, inputs, steps: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(*inputs)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def count_flops(step, inputs) -> float:
    """FLOPs of one iteration (forward and backward convolutions and matmuls)."""
    with FlopCounterMode(display=False) as counter:
        step(*inputs)
    return float(counter.get_total_flops())


# -- the real loop: data loading included ----------------------------------------------------


def run_loop(trainer: Trainer, steps: int, warmup: int) -> dict:
    """The training loop's own order of work for ``warmup + steps`` steps; timing after
    warmup. Data wait is the time spent blocked on the loader."""
    device = trainer.device
    waits, totals = [], []
    batches = trainer.batches()
    trainer.total_steps = trainer.step + warmup + steps
    last = time.perf_counter()
    for index in range(warmup + steps):
        _, batch = next(batches)
        arrived = time.perf_counter()
        real_a, real_b = trainer._to_device(batch["A"]), trainer._to_device(batch["B"])
        trainer.train_step(real_a, real_b)
        trainer.step += 1
        synchronize(device)
        now = time.perf_counter()
        if index >= warmup:
            waits.append(arrived - last)
            totals.append(now - last)
        last = now
    with contextlib.suppress(StopIteration):
        next(batches)
    return {"wait": sum(waits) / sum(totals), "seconds": sum(totals), "steps": steps}


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "allocated by torch"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process RSS"


def bf16_peak_tflops(device: torch.device, override: float) -> tuple[float, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return 0.0, "no known peak for a CPU; pass --peak-tflops"
    name = torch.cuda.get_device_name(device)
    for key, value in BF16_PEAK_TFLOPS.items():
        if all(word in name for word in key.split()):
            return value, name
    if "H100" in name:
        return BF16_PEAK_TFLOPS["H100 SXM"], name
    return 0.0, f"{name}: unknown peak; pass --peak-tflops"


# -- reports ---------------------------------------------------------------------------------


def table(rows: list[list[str]], header: list[str], right: bool = True) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * width for width in widths))
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append(" | ".join(c.rjust(w) if right else c.ljust(w) for c, w in cells))
    return "\n".join(lines)


def environment(device: torch.device) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        what = f"CPU, {torch.get_num_threads()} threads, oneDNN bf16 kernels: {bf16}"
    return f"torch {torch.__version__} on {device} ({what})"


def compare(args: argparse.Namespace, shape: Shape, data: Path, runs: Path) -> None:
    device = torch.device(
        args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    )
    print(environment(device))
    rows, flops_per_image, step_seconds = [], 0.0, {}
    for batch in args.batches:
        trainers = {p: make_trainer(data, runs, shape, args, batch, p) for p in args.precisions}
        first = trainers[args.precisions[0]]
        torch.manual_seed(0)
        baseline = BaselineStep(shape, first.device)
        cl_inputs = fixed_batch(first, batch)
        inputs = tuple(t.contiguous() for t in cl_inputs)
        if not flops_per_image:
            # Counting runs the step once, which is the baseline's warm-up as well.
            flops_per_image = count_flops(baseline, inputs) / batch
        else:
            timed(baseline, inputs, args.warmup, device)
        for trainer in trainers.values():
            timed(trainer.train_step, cl_inputs, args.warmup, device)
        times: dict[str, list[float]] = {"baseline": []} | {p: [] for p in trainers}
        for _ in range(args.rounds):
            times["baseline"] += timed(baseline, inputs, args.steps, device)
            for precision, trainer in trainers.items():
                times[precision] += timed(trainer.train_step, cl_inputs, args.steps, device)
        base, base_best = statistics.median(times["baseline"]), min(times["baseline"])
        for name, values in times.items():
            # The median is the headline; the best step shows what an idle machine gives.
            seconds, best = statistics.median(values), min(values)
            if name != "baseline":
                step_seconds[(batch, name)] = seconds
            label = "baseline (fp32, NCHW)" if name == "baseline" else f"trainer ({name})"
            rows.append(
                [
                    str(batch),
                    label,
                    f"{batch / seconds:.2f}",
                    f"{1000 * seconds:.0f}",
                    f"{flops_per_image * batch / seconds / 1e9:.0f}",
                    f"{base / seconds:.2f}x",
                    f"{batch / best:.2f}",
                    f"{base_best / best:.2f}x",
                ]
            )
            print(" ".join(rows[-1]), file=sys.stderr, flush=True)
        del trainers, baseline
    print(f"{flops_per_image / 1e9:.3g} GFLOP per image per iteration at {shape.size} px")
    header = ["batch", "step", "images/s", "ms/step", "GFLOP/s", "vs baseline", "best img/s"]
    header.append("best vs baseline")
    print(f"median (and best) of {args.rounds} rounds x {args.steps} steps, interleaved\n")
    print(table(rows, header))

    if args.data_batch:
        precision = args.precisions[-1]
        trainer = make_trainer(data, runs, shape, args, args.data_batch, precision)
        result = run_loop(trainer, args.data_steps, args.warmup)
        print(
            f"\nreal loop, batch {args.data_batch} {precision}, {args.workers} loader workers: "
            f"{result['steps'] * args.data_batch / result['seconds']:.2f} images/s, "
            f"data wait {100 * result['wait']:.1f}% of step time"
        )
    if args.trackers:
        (batch, precision), seconds = min(step_seconds.items(), key=lambda item: item[1])
        tracking_overhead(args, shape, data, runs, batch, precision, seconds)


def tracking_overhead(
    args: argparse.Namespace,
    shape: Shape,
    data: Path,
    runs: Path,
    batch: int,
    precision: str,
    step: float,
) -> None:
    """Each tracker's cost per log record and per sample grid (a real 8-pair grid), flushed
    to disk each time, against a trainer step of ``step`` seconds."""
    trainer = make_trainer(data, runs, shape, args, batch, precision, val_images=8)
    trainer.validate(save_grid=True)  # the grid of step 0
    record = {"kind": "train", "step": 0, "epoch": 0, **dict.fromkeys(trainer.objective.names, 0.5)}
    record |= {"lr": 2e-4, "images_per_s": 10.0, "data_wait": 0.01, "D_acc": 0.7}
    record |= {"GD_balance": 1.2, "D_state": "ok"}
    validation = {"kind": "val", "step": 0, "val_l1": 0.2}
    log_every, sample_every = args.log_every, args.sample_every
    rows, baseline = [], None
    for names in ([], *([name] for name in args.trackers.split(","))):
        trackers = build_trackers(names)
        with Reporter(trainer.config, trackers, True, 0, 1, progress=False) as reporter:
            per_log, per_sample = [], []
            for index in range(args.tracking_calls):
                start = time.perf_counter()
                reporter.train_record(record | {"step": index + 1})
                reporter.flush()
                per_log.append(time.perf_counter() - start)
                if index % 10 == 0:
                    start = time.perf_counter()
                    reporter.validation_record(validation)
                    reporter.flush()
                    per_sample.append(time.perf_counter() - start)
        costs = statistics.median(per_log), statistics.median(per_sample)
        baseline = baseline or costs
        added = (costs[0] - baseline[0]) / log_every + (costs[1] - baseline[1]) / sample_every
        share = f"{100 * added / step:.3f}%" if names else "(baseline)"
        milliseconds = [f"{1000 * cost:.2f}" for cost in costs]
        rows.append([", ".join(names) or "none", *milliseconds, share])
    print(
        f"\ntrackers at log_every {log_every}, sample_every {sample_every}, against a "
        f"{1000 * step:.0f} ms step (batch {batch}, {precision}); median of "
        f"{args.tracking_calls} records, each sent and flushed:"
    )
    header = ["trackers", "ms per log record", "ms per sample grid", "added to training"]
    print(table(rows, header))


def check(args: argparse.Namespace, shape: Shape, data: Path, runs: Path) -> None:
    """Train for a fixed number of steps with the fastest settings; report throughput."""
    trainer = make_trainer(data, runs, shape, args, args.batch, args.check_precision)
    device = trainer.device
    print(environment(device))
    inputs = fixed_batch(trainer, 1)
    flops_per_image = count_flops(BaselineStep(shape, device), tuple(inputs))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = run_loop(trainer, args.steps, args.warmup)
    total = time.perf_counter() - start
    images_per_s = result["steps"] * args.batch / result["seconds"]
    achieved = flops_per_image * images_per_s / 1e12
    peak, source = bf16_peak_tflops(device, args.peak_tflops)
    memory, memory_kind = peak_memory_gib(device)
    utilisation = f"{100 * achieved / peak:.1f}% of {peak:.0f} TFLOP/s" if peak else "n/a"
    # The same step on one resident batch: what the model does when the loader keeps up.
    batch_inputs = fixed_batch(trainer, args.batch)
    compute = timed(trainer.train_step, batch_inputs, max(2, args.steps // 4), device)
    compute_images_per_s = args.batch / statistics.median(compute)
    compute_achieved = flops_per_image * compute_images_per_s / 1e12
    compute_utilisation = f"{100 * compute_achieved / peak:.1f}%" if peak else "n/a"
    rows = [
        ["device", str(device)],
        [
            "settings",
            f"{args.check_precision}, channels_last={args.channels_last}, "
            f"compile={args.compile}, batch {args.batch}, {args.workers} workers",
        ],
        ["steps", f"{args.warmup} warm-up + {args.steps} timed ({total:.0f} s in all)"],
        ["images/s", f"{images_per_s:.1f}"],
        ["data wait", f"{100 * result['wait']:.1f}%"],
        ["model TFLOP/s", f"{achieved:.3g} ({flops_per_image / 1e9:.3g} GFLOP/image)"],
        ["MFU (dense bf16)", f"{utilisation} ({source})"],
        [
            "without the loader",
            f"{compute_images_per_s:.1f} images/s, {compute_achieved:.3g} TFLOP/s, "
            f"MFU {compute_utilisation} (one resident batch)",
        ],
        ["peak memory", f"{memory:.2f} GiB ({memory_kind})"],
    ]
    print(table(rows, ["gpu check", "result"], right=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--precisions", nargs="+", default=None, help="default: fp32 bf16 (+fp16 on CUDA)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--data-batch", type=int, default=16, help="0 skips the loop")
    parser.add_argument("--data-steps", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="data loader workers")
    parser.add_argument(
        "--trackers", default="tensorboard", help="comma-separated trackers to cost ('' skips)"
    )
    parser.add_argument("--tracking-calls", type=int, default=100, help="log records timed")
    parser.add_argument("--log-every", type=int, default=100, help="the presets' log_every")
    parser.add_argument("--sample-every", type=int, default=1000, help="and sample_every")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--tiny", action="store_true", help="32 px, 8 wide: a smoke test")
    parser.add_argument("--check", action="store_true", help="the fixed-step throughput check")
    parser.add_argument("--batch", type=int, default=16, help="--check: batch size")
    parser.add_argument("--check-precision", default="bf16")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="--check: MFU reference")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precisions is None:
        cuda = args.device.startswith("cuda") or (
            args.device == "auto" and torch.cuda.is_available()
        )
        args.precisions = ["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"]
    shape = TINY if args.tiny else PAPER
    largest = max([*args.batches, args.data_batch, args.batch if args.check else 0])
    steps = args.warmup + max(args.data_steps, args.steps if args.check else 0) + 1
    with tempfile.TemporaryDirectory(prefix="pix2pix-bench-") as scratch:
        scratch_path = Path(scratch)
        # Enough pairs that the timed loop mostly stays in one epoch, at most facades' 400.
        count = min(int(largest * steps / 0.8) + 3, 500)
        if args.trackers and not args.check:
            count = max(count, 90)  # 9 val pairs: a sample grid of 8, as the presets show
        data = make_dataset(scratch_path / "data", shape, count)
        runs = scratch_path / "runs"
        if args.check:
            check(args, shape, data, runs)
        else:
            compare(args, shape, data, runs)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
