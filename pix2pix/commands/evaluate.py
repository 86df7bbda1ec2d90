"""``pix2pix evaluate``: score a generator on a dataset split and write an HTML report.

Its options are also ``compare``'s, which evaluates several generators the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.spec import INFERENCE_MODES
from pix2pix.commands.common import UsageError


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "evaluate",
        help="score a generator on a dataset split and write an HTML report",
        description="Writes OUT/metrics.json, OUT/index.html and figures; prints the table.",
    )
    parser.add_argument("model", help="run directory, checkpoint or model folder")
    add_evaluation_options(parser)
    parser.set_defaults(handler=run)


def add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``evaluate`` and ``compare``: the data, the metrics and the report."""
    parser.add_argument("--data", required=True, help="dataset root (train/val/test)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--out", default="report", help="report folder (default: report)")
    parser.add_argument(
        "--segmenter",
        default=None,
        help="segmenter folder for the FCN-score (default: DATA/segmenter when present)",
    )
    parser.add_argument(
        "--inception",
        default=None,
        metavar="WEIGHTS",
        help="torchvision Inception-v3 weights file; enables FID and KID",
    )
    parser.add_argument("--max-images", type=int, default=0, help="0 = the whole split")
    parser.add_argument(
        "--palette-tolerance",
        type=int,
        default=None,
        help="label maps: accept colors this far (per channel) from a palette color, as "
        "data.palette_tolerance (255 = nearest; default: the model's spec's)",
    )
    parser.add_argument(
        "--inference-mode",
        default=None,
        help="run batch norm and dropout as eval, sample or train instead of as the model's "
        "spec says (compare: one mode, or one per model, comma-separated)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        metavar="T",
        help="colorizers trained by classification (ab_bins head): decode at this temperature "
        "instead of the spec's (needs the generator's PyTorch weights)",
    )
    parser.add_argument("--samples", type=int, default=8, help="rows in the sample grid")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def evaluation_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of an evaluation, from ``add_evaluation_options``' flags."""
    from model.runtime import resolve_device

    names = ("segmenter", "inception", "max_images", "samples", "batch_size", "palette_tolerance")
    names += ("temperature",)
    options = {name: getattr(args, name) for name in names}
    if args.inference_mode is not None:
        modes = args.inference_mode.split(",")
        for mode in modes:
            if mode not in INFERENCE_MODES:
                raise UsageError(
                    f"--inference-mode {mode!r}: choose from {', '.join(INFERENCE_MODES)}"
                )
        options["inference_mode"] = modes[0] if len(modes) == 1 else modes
    return options | {"device": resolve_device(args.device), "progress": not args.quiet}


def print_evaluations(evaluations: list, page: Path) -> None:
    from training.evaluation.report import format_table

    print(format_table(evaluations))
    for note in sorted({note for evaluation in evaluations for note in evaluation.notes}):
        print(f"note: {note}")
    for evaluation in evaluations:
        per_100 = 100.0 * evaluation.seconds / max(evaluation.count, 1)
        print(
            f"{evaluation.name}: {evaluation.count} images in {evaluation.seconds:.1f}s "
            f"({per_100:.1f}s per 100)"
        )
    print(f"report: {page}")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from pix2pix.api import evaluate

    options = evaluation_options(args)
    if isinstance(options.get("inference_mode"), list):
        raise UsageError("evaluate runs one model: give one --inference-mode")
    evaluation = evaluate(args.model, args.data, args.split, args.out, **options)
    print_evaluations([evaluation], Path(args.out) / "index.html")
    return 0
