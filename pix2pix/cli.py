"""The ``pix2pix`` command line: train, translate, data tools, export and serve.

Heavy imports happen inside each verb, so ``pix2pix --help`` is instant and training never
pays for web imports.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """A command-line mistake; printed without a traceback."""


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """``--train.batch_size 4`` / ``--batch_size=4`` pairs -> {key: value}."""
    overrides: dict[str, str] = {}
    index = 0
    while index < len(extra):
        token = extra[index]
        if not token.startswith("--") or token == "--":
            raise UsageError(
                f"unexpected argument {token!r}; config overrides look like --key value"
            )
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if index + 1 >= len(extra):
                raise UsageError(f"option --{key} needs a value")
            index += 1
            value = extra[index]
        overrides[key] = value
        index += 1
    return overrides


# -- verbs --------------------------------------------------------------------------------------


def command_train(args: argparse.Namespace, extra: list[str]) -> int:
    from training.config import load_config, set_value
    from training.trainer import load_run_config, train

    overrides = parse_overrides(extra)
    if args.config is None and args.resume_run is None:
        raise UsageError("train needs --config FILE (or --resume RUN_DIR)")
    if args.config is not None:
        config = load_config(args.config, overrides)
    else:
        config = load_run_config(args.resume_run)
        run_dir = Path(args.resume_run)
        config.runs_dir, config.name = str(run_dir.parent), run_dir.name
        for key, value in overrides.items():
            set_value(config, key, value)
        config.validate()
    resume = args.resume or args.resume_run is not None
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        summary = train(config, resume=resume, progress=not args.quiet)
    print(
        f"done: {summary['step']} steps, val L1 {summary['val_l1']:.4f}; "
        f"run directory {summary['run_dir']}"
    )
    return 0


def command_translate(args: argparse.Namespace, extra: list[str]) -> int:
    from PIL import Image, UnidentifiedImageError

    from model.errors import InputError
    from model.translate import Translator

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    translator = Translator.load(args.model, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = []
    for item in args.inputs:
        path = Path(item)
        if path.is_dir():
            inputs += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            inputs.append(path)
        else:
            raise UsageError(f"{path}: no such file or directory")
    if not inputs:
        raise UsageError("no input images found")
    failures = 0
    for path in inputs:
        try:
            with Image.open(path) as image:
                image.load()
                result = translator.translate(image, resize=args.resize, tolerance=args.tolerance)
        except (UnidentifiedImageError, OSError, InputError) as error:
            print(f"{path}: {error}", file=sys.stderr)
            failures += 1
            continue
        target = out / f"{path.stem}.{args.format}"
        result.save(target)
        print(f"{path} -> {target} ({result.width}x{result.height})")
    return EXIT_FAILURE if failures else 0


def command_data_synth(args: argparse.Namespace, extra: list[str]) -> int:
    from training.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out, n=args.n, size=args.size, seed=args.seed, task=args.task, progress=not args.quiet
    )
    print(f"wrote {args.n} {args.task} scenes to {args.out}: {summary}")
    return 0


def command_data_download(args: argparse.Namespace, extra: list[str]) -> int:
    from training.download import download_dataset

    path = download_dataset(
        args.name, args.root, base_url=args.mirror, progress=not args.quiet, force=args.force
    )
    print(f"{args.name} is ready in {path}")
    return 0


def command_data_combine(args: argparse.Namespace, extra: list[str]) -> int:
    from training.combine import combine_folders

    summary = combine_folders(args.a_dir, args.b_dir, args.out, progress=not args.quiet)
    print(f"combined pairs into {args.out}: {summary}")
    return 0


def command_serve(args: argparse.Namespace, extra: list[str]) -> int:
    import os

    import uvicorn

    # Flags win over the environment; the app reads its settings from PIX2PIX_* variables.
    if args.models is not None:
        os.environ["PIX2PIX_MODELS_DIR"] = str(args.models)
    from app.main import create_app
    from app.settings import Settings

    settings = Settings()
    if not Path(settings.models_dir).is_dir():
        raise UsageError(f"models directory {settings.models_dir} does not exist")
    print(f"serving models from {settings.models_dir} at http://{args.host}:{args.port}")
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="info",
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pix2pix", description="Paired image-to-image translation (pix2pix)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    train = verbs.add_parser(
        "train",
        help="train a generator",
        description="Train from a TOML config. Any config field can be overridden: "
        "--train.batch_size 4, --data.root DIR, or --batch_size 4 when the name is unique.",
    )
    train.add_argument("--config", type=Path, help="TOML config (see configs/)")
    train.add_argument("--resume", action="store_true", help="continue the run from its latest")
    train.add_argument(
        "--resume-run", type=Path, metavar="RUN_DIR", help="continue RUN_DIR with its saved config"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=command_train, allows_extra=True)

    translate = verbs.add_parser("translate", help="apply a generator to images")
    translate.add_argument("model", help="run directory, checkpoint or model folder")
    translate.add_argument("inputs", nargs="+", help="images or folders of images")
    translate.add_argument("--out", required=True, help="output folder")
    translate.add_argument("--format", default="png", choices=("png", "jpg", "webp"))
    translate.add_argument(
        "--resize",
        default="pad",
        choices=("pad", "fit"),
        help="pad: keep the size (pad to the network multiple); fit: resize to the training size",
    )
    translate.add_argument("--tolerance", type=int, default=0, help="label-color tolerance")
    translate.add_argument("--device", default="auto")
    translate.set_defaults(handler=command_translate)

    data = verbs.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_verb", required=True, metavar="TOOL"
    )
    synth = data.add_parser("synth", help="write the built-in synthetic landscape dataset")
    synth.add_argument("--out", required=True)
    synth.add_argument("--n", type=int, default=500)
    synth.add_argument("--size", type=int, default=256)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--task", default="labels", choices=("labels", "color"), help="labels->photo or color"
    )
    synth.add_argument("--quiet", action="store_true")
    synth.set_defaults(handler=command_data_synth)

    download = data.add_parser("download", help="download a standard pix2pix dataset")
    download.add_argument("name")
    download.add_argument("--root", default="data")
    download.add_argument("--mirror", default=None, help="base URL of a mirror")
    download.add_argument("--force", action="store_true", help="download again")
    download.add_argument("--quiet", action="store_true")
    download.set_defaults(handler=command_data_download)

    combine = data.add_parser("combine", help="build the aligned format from A and B folders")
    combine.add_argument("a_dir")
    combine.add_argument("b_dir")
    combine.add_argument("--out", required=True)
    combine.add_argument("--quiet", action="store_true")
    combine.set_defaults(handler=command_data_combine)

    serve = verbs.add_parser("serve", help="serve generators over HTTP")
    serve.add_argument("--models", default=None, help="models folder (PIX2PIX_MODELS_DIR)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--graceful-timeout", type=int, default=30, help="seconds to finish requests on SIGTERM"
    )
    serve.set_defaults(handler=command_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "allows_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from model.errors import CheckpointError, InputError, SpecError
    from training.config import ConfigError
    from training.errors import DataError, TrainingError

    expected = (
        UsageError,
        ConfigError,
        DataError,
        CheckpointError,
        SpecError,
        InputError,
        TrainingError,
    )
    try:
        return args.handler(args, extra)
    except expected as error:
        print(f"pix2pix {args.verb}: error: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, UsageError | ConfigError) else EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
