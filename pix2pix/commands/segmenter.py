"""``pix2pix segmenter``: the segmentation network behind the FCN-score (``segmenter train``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pix2pix.commands.common import add_hidden_alias


def register(verbs: argparse._SubParsersAction) -> None:
    tools = verbs.add_parser(
        "segmenter", help="the segmentation network behind the FCN-score"
    ).add_subparsers(dest="segmenter_verb", required=True, metavar="TOOL")
    parser = tools.add_parser(
        "train",
        help="train a segmenter on a label-map dataset's real photos",
        description="Trains photo -> label map on DATA's train split and saves it to "
        "DATA/segmenter (or --out), where evaluate finds it.",
    )
    parser.add_argument("--data", required=True, help="label-map dataset root")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--layout", default="folders", choices=("folders", "aligned"))
    parser.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"))
    parser.add_argument("--palette", default="palette.json")
    parser.add_argument(
        "--palette-tolerance",
        type=int,
        default=0,
        help="accept label colors this far (per channel, 0..255) from a palette color, as "
        "data.palette_tolerance (255 = nearest)",
    )
    add_hidden_alias(parser, "--tolerance", "palette_tolerance", type=int)
    parser.add_argument(
        "--size", type=int, default=0, help="training size (default: the photos' height)"
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=16, help="U-Net base width")
    parser.add_argument("--num-downs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace, extra: list[str]) -> int:
    from model.runtime import resolve_device
    from training.evaluation.segmenter import (
        DEFAULT_FOLDER,
        first_image_size,
        segmentation_data_config,
        train_segmenter,
    )

    options = {name: getattr(args, name) for name in ("layout", "direction", "palette")}
    options["tolerance"] = args.palette_tolerance
    multiple = 2**args.num_downs
    size = args.size or first_image_size(segmentation_data_config(args.data, multiple, **options))
    size = max(size // multiple * multiple, multiple)
    data = segmentation_data_config(args.data, size, **options)
    out = args.out or Path(args.data) / DEFAULT_FOLDER
    names = ("steps", "batch_size", "num_downs", "lr", "seed")
    summary = train_segmenter(
        data,
        out,
        base_width=args.width,
        device=resolve_device(args.device),
        progress=not args.quiet,
        **{name: getattr(args, name) for name in names},
    )
    print(
        f"segmenter ({size} px) saved to {summary['out']} after {summary['seconds']:.0f}s: "
        f"val pixel accuracy {summary['val_pixel_accuracy']:.3f}, "
        f"mean IoU {summary['val_mean_iou']:.3f}"
    )
    return 0
