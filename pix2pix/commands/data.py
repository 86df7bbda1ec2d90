"""``pix2pix data``: dataset tools (synth, download, combine, split, holdout, edges)."""

from __future__ import annotations

import argparse

from pix2pix.commands.common import UsageError


def register(verbs: argparse._SubParsersAction) -> None:
    tools = verbs.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_verb", required=True, metavar="TOOL"
    )
    register_synth(tools)
    register_download(tools)
    register_combine(tools)
    register_split(tools)
    register_holdout(tools)
    register_edges(tools)


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


# Each method's settings: (flag, EdgeOptions field, help ending in EdgeOptions' default, which
# tests/test_edges.py checks; the help is built without importing the edge code).
_EDGE_SETTINGS = {
    "canny": (
        ("--canny-sigma", "canny_sigma", "Gaussian blur before the gradient, px (0: none; 1.0)"),
        ("--canny-low", "canny_low", "lower hysteresis threshold on the gradient (60)"),
        ("--canny-high", "canny_high", "upper hysteresis threshold on the gradient (150)"),
    ),
    "xdog": (
        ("--xdog-sigma", "xdog_sigma", "the narrow Gaussian, px (1.0)"),
        ("--xdog-k", "xdog_k", "the wide Gaussian's sigma over the narrow one's (1.6)"),
        ("--xdog-tau", "xdog_tau", "weight of the wide Gaussian (0.98)"),
        ("--xdog-epsilon", "xdog_epsilon", "difference below which a line draws (-0.01)"),
        ("--xdog-phi", "xdog_phi", "steepness of the soft threshold (50)"),
    ),
}


def register_edges(tools: argparse._SubParsersAction) -> None:
    parser = tools.add_parser(
        "edges",
        help="make edges -> photo pairs from a folder of photos",
        description="Each photo in PHOTOS (not its subfolders) is resized so its shorter side "
        "is --size and center-cropped to a square; A is that square's edge map (black lines on "
        "white, gray PNG), B the square photo. Pairs are written as OUT/<split>/A/<stem>.png and "
        "OUT/<split>/B/<stem>.png, the folders layout that `pix2pix train` reads with "
        "data.root = OUT and the default data settings (configs/edges.toml), and OUT/edges.json "
        "records the options. The photos are shuffled by --seed and cut by --split; the same "
        "photos and options give byte-identical files.",
    )
    parser.add_argument("photos", help="folder of photos")
    parser.add_argument("--out", required=True, help="dataset folder to write (empty or new)")
    parser.add_argument(
        "--method",
        default="canny",
        choices=("canny", "xdog"),
        help="canny: thin contours; xdog: a sketch that shades texture",
    )
    for method, settings in _EDGE_SETTINGS.items():
        group = parser.add_argument_group(f"{method} settings")
        for flag, field, text in settings:
            group.add_argument(flag, dest=field, type=float, metavar="X", help=text)
    parser.add_argument(
        "--size", type=int, default=256, help="side of the square pairs, px (256)", metavar="PX"
    )
    parser.add_argument(
        "--split",
        default="0.8,0.1,0.1",
        help="train,val,test fractions (0.8,0.1,0.1); training needs train and val",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle before --split")
    parser.add_argument(
        "--max-images",
        type=int,
        default=0,
        help="use this many photos of the shuffled order (0: all)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT's train/val/test folders and edges.json",
    )
    parser.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave unreadable photos out, naming each, instead of refusing",
    )
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=run_edges)


def run_edges(args: argparse.Namespace, extra: list[str]) -> int:
    from training.data.edges import EdgeOptions, parse_split, write_edges_dataset

    settings = {}
    for method, entries in _EDGE_SETTINGS.items():
        given = [(flag, field) for flag, field, _ in entries if getattr(args, field) is not None]
        if given and method != args.method:
            flags = ", ".join(flag for flag, _ in given)
            raise UsageError(f"{flags} apply to --method {method}, not {args.method}")
        settings.update({field: getattr(args, field) for _, field in given})
    summary = write_edges_dataset(
        args.photos,
        args.out,
        EdgeOptions(method=args.method, **settings),
        size=args.size,
        split=parse_split(args.split),
        seed=args.seed,
        max_images=args.max_images,
        overwrite=args.overwrite,
        skip_unreadable=args.skip_unreadable,
        progress=not args.quiet,
    )
    for line in summary["skipped"]:
        print(f"skipped unreadable photo {line}")
    splits = ", ".join(f"{split} {count}" for split, count in summary["splits"].items())
    print(f"wrote {summary['pairs']} {args.method} edges -> photo pairs to {args.out}: {splits}")
    return 0


def register_holdout(tools: argparse._SubParsersAction) -> None:
    parser = tools.add_parser(
        "holdout",
        help="deal a folder of photos into train/val/test (the colorization layout)",
        description="Copies the photos of PHOTOS into OUT/train, OUT/val and OUT/test by a "
        "seeded shuffle of their sorted names: the same folder, fractions and seed give the "
        "same split anywhere.",
    )
    parser.add_argument("photos", help="folder of images (not searched recursively)")
    parser.add_argument("--out", required=True, help="data root to write (must not hold splits)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share held out as test")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share held out as val")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_holdout)


def run_holdout(args: argparse.Namespace, extra: list[str]) -> int:
    from training.data.holdout import split_photos

    counts = split_photos(
        args.photos,
        args.out,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )
    print(f"dealt photos into {args.out}: {counts}")
    return 0
