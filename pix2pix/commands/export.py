"""``pix2pix export``: write a generator to a model folder in one of the export formats."""

from __future__ import annotations

import argparse

from model.export_formats import EXPORT_FORMAT_NAMES
from model.spec import INFERENCE_MODES


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("export", help="export a generator to a model folder")
    parser.add_argument("source", help="run directory, checkpoint or model folder")
    parser.add_argument("--format", default="safetensors", choices=EXPORT_FORMAT_NAMES)
    parser.add_argument("--out", help="model folder to write (default models/<run name>)")
    parser.add_argument(
        "--half",
        action="store_true",
        help="store weights as fp16 (half the size; ONNX computes in fp32)",
    )
    parser.add_argument(
        "--inference-mode",
        choices=INFERENCE_MODES,
        help="override the spec: eval (batch norm's running statistics, no dropout), sample "
        "(each image's own statistics, no dropout) or train (sample plus the paper's "
        "test-time dropout)",
    )
    add_temperature_option(parser)
    add_calibration_options(parser)
    parser.set_defaults(handler=run)


def add_temperature_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        help="colorizers trained by classification (ab_bins head): decode the ab bins at this "
        "temperature, in (0, 1]: lower is more colorful, higher closer to the mean color "
        "(default: the spec's)",
    )


def add_calibration_options(parser: argparse.ArgumentParser) -> None:
    """int8 quantization and batch-norm recalibration, and the images both measure."""
    parser.add_argument(
        "--int8",
        action="store_true",
        help="ONNX with int8 convolutions (about 3x faster than fp32 ONNX on CPUs with VNNI), "
        "calibrated on --calibration and refused below --min-psnr against fp32",
    )
    parser.add_argument(
        "--calibration",
        help="dataset root or folder of input images for --int8 (default: the run's dataset)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=64,
        metavar="N",
        help="images to use: three quarters calibrate, the rest check fidelity (default 64)",
    )
    parser.add_argument(
        "--min-psnr",
        type=float,
        default=40.0,
        metavar="DB",
        help="refuse an int8 model below this PSNR against fp32 (default 40)",
    )
    parser.add_argument(
        "--recalibrate-bn",
        type=int,
        default=0,
        metavar="N",
        help="eval mode: first set batch norm's statistics to the served weights' own over N "
        "inputs of --calibration, dropout off (as train.recalibrate_bn does in training)",
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from pix2pix.api import export

    names = ("half", "inference_mode", "int8", "calibration", "calibration_images", "min_psnr")
    names += ("recalibrate_bn", "temperature")
    options = {name: getattr(args, name) for name in names}
    result = export(args.source, args.out, args.format, **options)
    if result.psnr is not None:
        check = f"PSNR vs fp32 PyTorch on held-out calibration images: {result.psnr:.1f} dB"
    else:
        parity = ", ".join(f"{size}: {value:.1e}" for size, value in result.parity.items())
        check = f"max abs difference vs PyTorch: {parity or 'not checked (train-mode inference)'}"
    print(f"exported {args.format} to {result.folder} ({result.bytes / 1e6:.1f} MB); {check}")
    return 0
