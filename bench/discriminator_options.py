"""What the discriminator options cost per training step, against the paper's discriminator.

Times ``Trainer.train_step`` for each variant at one shape (by default 128 px, U-Net of 7
levels and width 32, 70x70 PatchGAN of width 32, bf16, batch 1), in interleaved rounds of the
same process on the same batch, after a warm-up. Each round is a multiple of ``train.r1_every``
steps, so the lazy R1 penalty is counted at its average. The table gives the mean CPU time of
the process per step, which is what a step costs even on a machine shared with other work
(run it with ``OMP_NUM_THREADS=1`` so that no idle worker threads spin), and the median wall
time of a round per step.

Usage:
  OMP_NUM_THREADS=1 python bench/discriminator_options.py
  python bench/discriminator_options.py --size 64 --rounds 1 --steps 16   # proves it works
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from training.config import load_config
from training.data.synth import write_synthetic_dataset
from training.loop.trainer import Trainer

ONE_HOT = {"data.input_kind": "label_map", "data.one_hot": "true"}
VARIANTS = {
    "paper D": {},
    "2 scales + feature matching 10": {
        "discriminator.num_scales": "2",
        "train.lambda_feat": "10",
    },
    "feature matching 10 (1 scale)": {"train.lambda_feat": "10"},
    "spectral norm": {"discriminator.spectral_norm": "true"},
    "R1 gamma 1 (every 16 D steps)": {"train.r1_gamma": "1", "train.r1_every": "16"},
    # The price of one R1 pass, to choose r1_every by.
    "R1 gamma 1 (every D step)": {"train.r1_gamma": "1", "train.r1_every": "1"},
    "DiffAugment (all three)": {"train.d_augment": "color,translation,cutout"},
    # The synthetic landscapes' label maps, one-hot: the semantic discriminator needs classes.
    "one-hot maps: paper D": ONE_HOT,
    "one-hot maps: semantic D w16": ONE_HOT | {"train.lambda_semantic": "1"},
    "one-hot maps: semantic D w8": ONE_HOT
    | {"train.lambda_semantic": "1", "discriminator.semantic_width": "8"},
}


def make_trainer(data: Path, runs: Path, args: argparse.Namespace, name: str, options: dict):
    num_downs = max(1, args.size.bit_length() - 1)  # 128 px: 7 levels, down to 1x1
    overrides = {
        "name": name.replace(" ", "-"),
        "runs_dir": str(runs),
        "data.root": str(data),
        "data.input_kind": "photo",
        "data.load_size": str(args.size + args.size // 8),
        "data.crop_size": str(args.size),
        "data.num_workers": "0",
        "generator.num_downs": str(num_downs),
        "generator.base_width": str(args.width),
        "discriminator.base_width": str(args.width),
        "discriminator.n_layers": str(args.d_layers),
        "train.batch_size": str(args.batch),
        "train.precision": args.precision,
        "train.val_images": "1",
        **options,
    }
    return Trainer(load_config(None, overrides), progress=False)


def batch(trainer: Trainer, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` training pairs (repeated if the set is smaller), on the device."""
    items = [trainer.train_set[i % len(trainer.train_set)] for i in range(size)]
    return tuple(trainer._to_device(torch.stack([item[k] for item in items])) for k in "AB")


def run(trainer: Trainer, inputs: tuple[torch.Tensor, torch.Tensor], steps: int):
    """``steps`` iterations; returns (CPU seconds, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        trainer.train_step(*inputs)
        trainer.step += 1  # the R1 schedule counts steps
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--d-layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--steps", type=int, default=16, help="steps per round (x of r1_every)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        write_synthetic_dataset(data, n=4, size=args.size + args.size // 8, seed=0, task="labels")
        trainers = {
            name: make_trainer(data, Path(folder) / "runs", args, name, options)
            for name, options in VARIANTS.items()
        }
        # Each trainer its own batch: the label-map variants read A one-hot.
        inputs = {name: batch(trainer, args.batch) for name, trainer in trainers.items()}
        for name, trainer in trainers.items():
            run(trainer, inputs[name], args.warmup)
        cpu = {name: 0.0 for name in trainers}
        wall: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                seconds, elapsed = run(trainer, inputs[name], args.steps)
                cpu[name] += seconds
                wall[name].append(elapsed / args.steps)
                print(f"{name}: {1000 * seconds / args.steps:.0f} ms CPU", file=sys.stderr)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.size} px, "
        f"batch {args.batch}, {args.precision}, U-Net width {args.width}, PatchGAN "
        f"{args.d_layers} layers width {args.width}; {args.rounds} rounds x {args.steps} steps\n"
    )
    base = cpu["paper D"]
    print(f"{'variant':<32} {'CPU ms/step':>12} {'vs paper D':>11} {'wall ms/step':>13}")
    for name in trainers:
        per_step = 1000 * cpu[name] / (args.rounds * args.steps)
        median_wall = 1000 * statistics.median(wall[name])
        print(f"{name:<32} {per_step:>12.0f} {cpu[name] / base:>10.2f}x {median_wall:>13.0f}")


if __name__ == "__main__":
    main()
