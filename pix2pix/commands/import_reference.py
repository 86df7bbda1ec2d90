"""``pix2pix import-reference``: convert a generator of junyanz/pytorch-CycleGAN-and-pix2pix."""

from __future__ import annotations

import argparse


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "import-reference",
        help="convert a latest_net_G.pth of junyanz/pytorch-CycleGAN-and-pix2pix",
    )
    parser.add_argument("file")
    parser.add_argument("--netG", default="unet_256", choices=("unet_256", "unet_128"))
    parser.add_argument("--norm", default="batch", choices=("batch", "instance", "none"))
    parser.add_argument("--input-nc", type=int, default=3)
    parser.add_argument("--output-nc", type=int, default=3)
    parser.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"))
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from model.reference import import_reference

    spec = import_reference(
        args.file, args.out, args.netG, args.norm, args.input_nc, args.output_nc, args.direction
    )
    print(f"imported {args.file} as {spec.task} into {args.out}")
    return 0
