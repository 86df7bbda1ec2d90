"""``pix2pix train``: train a generator from a TOML config, overridden by ``--key value`` pairs."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from pix2pix.commands.common import UsageError


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "train",
        help="train a generator",
        description="Train from a TOML config. Any config field can be overridden: "
        "--train.batch_size 4, --data.root DIR, or --batch_size 4 when the name is unique.",
    )
    parser.add_argument("--config", type=Path, help="TOML config (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest")
    parser.add_argument(
        "--resume-run", type=Path, metavar="RUN_DIR", help="continue RUN_DIR with its saved config"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes on this machine (runs itself under torchrun)",
    )
    parser.set_defaults(handler=run, allows_extra=True)


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """``--train.batch_size 4`` / ``--batch_size=4`` pairs -> {key: value}."""
    overrides: dict[str, str] = {}
    tokens = iter(extra)
    for token in tokens:
        if not token.startswith("--") or token == "--":
            raise UsageError(
                f"unexpected argument {token!r}; config overrides look like --key value"
            )
        key, equals, value = token[2:].partition("=")
        if not equals:
            value = next(tokens, None)
            if value is None:
                raise UsageError(f"option --{key} needs a value")
        overrides[key] = value
    return overrides


def launch_processes(args: argparse.Namespace, extra: list[str]) -> int:
    """``train --nproc N``: the same command under torchrun, N processes on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={args.nproc}", "-m", "pix2pix.cli"]
    command += ["--verbose"] if args.verbose else []
    command += ["train"] + (["--config", str(args.config)] if args.config else [])
    command += ["--resume"] if args.resume else []
    command += ["--resume-run", str(args.resume_run)] if args.resume_run else []
    command += ["--quiet"] if args.quiet else []
    return subprocess.call(command + extra)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from pix2pix.api import training_config
    from training.loop.trainer import train

    if args.nproc > 1 and "RANK" not in os.environ:
        return launch_processes(args, extra)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if not main_process:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for all
    overrides = parse_overrides(extra)
    if args.config is None and args.resume_run is None:
        raise UsageError("train needs --config FILE (or --resume-run RUN_DIR)")
    config = training_config(args.config, overrides, args.resume_run)
    resume = args.resume or args.resume_run is not None
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        summary = train(config, resume=resume, progress=not args.quiet)
    if main_process:
        print(
            f"done: {summary['step']} steps, val L1 {summary['val_l1']:.4f}; "
            f"run directory {summary['run_dir']}"
        )
    return 0
