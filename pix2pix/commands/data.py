"""``pix2pix data``: dataset tools (synth, download, combine, split), one handler each."""

from __future__ import annotations

import argparse


def register(verbs: argparse._SubParsersAction) -> None:
    tools = verbs.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_verb", required=True, metavar="TOOL"
    )
    register_synth(tools)
    register_download(tools)
    register_combine(tools)
    register_split(tools)


def register_synth(tools: argparse._SubParsersAction) -> None:
    parser = tools.add_parser("synth", help="write the built-in synthetic landscape dataset")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--task", default="labels", choices=("labels", "color"), help="labels->photo or color"
    )
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=run_synth)


def run_synth(args: argparse.Namespace, extra: list[str]) -> int:
    from training.data.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out, n=args.n, size=args.size, seed=args.seed, task=args.task, progress=not args.quiet
    )
    print(f"wrote {args.n} {args.task} scenes to {args.out}: {summary}")
    return 0


def register_download(tools: argparse._SubParsersAction) -> None:
    parser = tools.add_parser("download", help="download a standard pix2pix dataset")
    parser.add_argument("name")
    parser.add_argument("--root", default="data")
    parser.add_argument("--mirror", default=None, help="base URL of a mirror")
    parser.add_argument("--force", action="store_true", help="download again")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=run_download)


def run_download(args: argparse.Namespace, extra: list[str]) -> int:
    from training.data.download import download_dataset

    path = download_dataset(
        args.name, args.root, base_url=args.mirror, progress=not args.quiet, force=args.force
    )
    print(f"{args.name} is ready in {path}")
    return 0


def register_combine(tools: argparse._SubParsersAction) -> None:
    parser = tools.add_parser("combine", help="build the aligned format from A and B folders")
    parser.add_argument("a_dir")
    parser.add_argument("b_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=run_combine)


def run_combine(args: argparse.Namespace, extra: list[str]) -> int:
    from training.data.combine import combine_folders

    summary = combine_folders(args.a_dir, args.b_dir, args.out, progress=not args.quiet)
    print(f"combined pairs into {args.out}: {summary}")
    return 0


def register_split(tools: argparse._SubParsersAction) -> None:
    parser = tools.add_parser(
        "split",
        help="cut aligned A|B images into halves (the inverse of combine)",
        description="Writes OUT/[split/]A and B folders, or with --side A or B only that half "
        "as OUT/[split/]<stem>.png: a folder of photos for the colorization layout.",
    )
    parser.add_argument("data", help="aligned dataset folder (with or without split folders)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--side", default="both", choices=("A", "B", "both"))
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=run_split)


def run_split(args: argparse.Namespace, extra: list[str]) -> int:
    from training.data.combine import split_aligned

    summary = split_aligned(args.data, args.out, side=args.side, progress=not args.quiet)
    print(f"split aligned images into {args.out}: {summary}")
    return 0
