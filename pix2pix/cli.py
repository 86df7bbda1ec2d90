"""The ``pix2pix`` command line: train, translate, evaluate, data tools, export and serve.

Heavy imports happen inside each verb, so ``pix2pix --help`` is instant and training never
pays for web imports.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from model.choices import IMAGE_FORMAT_ALIASES, IMAGE_FORMAT_NAMES, RESIZE_MODES, image_format
from model.export_formats import EXPORT_FORMAT_NAMES, RUNTIMES
from model.spec import INFERENCE_MODES

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """A command-line mistake; printed without a traceback."""


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


# -- verbs --------------------------------------------------------------------------------------


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


def command_train(args: argparse.Namespace, extra: list[str]) -> int:
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


def translation_targets(items: list[str], out: Path, suffix: str) -> list[tuple[Path, Path]]:
    """(image, output) pairs: a folder's images, found through its sub-folders, keep their
    place under ``out``; an image named on its own goes straight into ``out``."""
    from model.processing import list_images

    pairs: list[tuple[Path, Path]] = []
    for item in items:
        path = Path(item)
        if not path.exists():
            raise UsageError(f"{path}: no such file or directory")
        if path.is_file():
            pairs.append((path, out / f"{path.stem}{suffix}"))
            continue
        for folder in [path, *sorted(p for p in path.rglob("*") if p.is_dir())]:
            hidden = any(part.startswith(".") for part in folder.relative_to(path).parts)
            # A rerun must not translate the outputs of the last one.
            inside_out = folder.resolve().is_relative_to(out.resolve())
            if not hidden and not inside_out:
                pairs += [
                    (image, out / image.relative_to(path).with_suffix(suffix))
                    for image in list_images(folder)
                ]
    if not pairs:
        raise UsageError("no input images found")
    sources: dict[Path, Path] = {}
    for image, target in pairs:
        if target in sources:
            raise UsageError(f"{sources[target]} and {image} would both be written to {target}")
        sources[target] = image
    return pairs


def command_translate(args: argparse.Namespace, extra: list[str]) -> int:
    from PIL import Image
    from tqdm import tqdm

    from model.errors import InputError
    from model.translate import read_input
    from pix2pix.api import load

    if args.batch_size < 1 or min(args.tile_size or 0, args.tile_overlap or 0) < 0:
        raise UsageError("--batch-size must be at least 1; tile sizes cannot be negative")
    translator = load(
        args.model,
        args.runtime,
        args.device,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        batch_size=args.batch_size,
        inference_mode=args.inference_mode,
    )
    tile_size = translator.tile_size
    suffix = image_format(args.format).suffix
    pairs = translation_targets(args.inputs, Path(args.out), suffix)
    failed: list[Path] = []
    waiting: dict[tuple[int, ...], list] = {}  # decoded inputs by size, until a batch is full

    def report(path: Path, problem: str) -> None:
        tqdm.write(problem, file=sys.stderr)
        failed.append(path)

    def run(group: list) -> None:
        outputs = translator.translate_arrays([array for _, _, array in group], args.resize)
        for (source, target, _), output in zip(group, outputs, strict=True):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(output).save(target)
            except OSError as error:
                report(source, f"{source}: cannot write {target}: {error}")
        bar.update(len(group))

    def run_waiting() -> None:
        for group in waiting.values():
            run(group)
        waiting.clear()

    with tqdm(total=len(pairs), desc="translate", unit="image", disable=args.quiet) as bar:
        for source, target in pairs:
            try:
                array = read_input(source, translator.spec, args.palette_tolerance)
            except (InputError, OSError) as error:  # each names the file
                report(source, str(error))
                bar.update()
                continue
            if tile_size and max(array.shape[:2]) > tile_size:
                run([(source, target, array)])  # its own tiles fill the batches
                continue
            group = waiting.setdefault(array.shape, [])
            group.append((source, target, array))
            if len(group) == args.batch_size:
                run(waiting.pop(array.shape))
            elif sum(map(len, waiting.values())) > 4 * args.batch_size:
                run_waiting()  # many different sizes: bound the memory they hold
        run_waiting()
    print(f"translated {len(pairs) - len(failed)} of {len(pairs)} images into {args.out}")
    if failed:
        print(f"{len(failed)} failed: {', '.join(map(str, failed))}", file=sys.stderr)
    return EXIT_FAILURE if failed else 0


def command_data_synth(args: argparse.Namespace, extra: list[str]) -> int:
    from training.data.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out, n=args.n, size=args.size, seed=args.seed, task=args.task, progress=not args.quiet
    )
    print(f"wrote {args.n} {args.task} scenes to {args.out}: {summary}")
    return 0


def command_data_download(args: argparse.Namespace, extra: list[str]) -> int:
    from training.data.download import download_dataset

    path = download_dataset(
        args.name, args.root, base_url=args.mirror, progress=not args.quiet, force=args.force
    )
    print(f"{args.name} is ready in {path}")
    return 0


def command_data_combine(args: argparse.Namespace, extra: list[str]) -> int:
    from training.data.combine import combine_folders

    summary = combine_folders(args.a_dir, args.b_dir, args.out, progress=not args.quiet)
    print(f"combined pairs into {args.out}: {summary}")
    return 0


def command_data_split(args: argparse.Namespace, extra: list[str]) -> int:
    from training.data.combine import split_aligned

    summary = split_aligned(args.data, args.out, side=args.side, progress=not args.quiet)
    print(f"split aligned images into {args.out}: {summary}")
    return 0


def command_export(args: argparse.Namespace, extra: list[str]) -> int:
    from pix2pix.api import export

    names = ("half", "inference_mode", "int8", "calibration", "calibration_images", "min_psnr")
    names += ("recalibrate_bn",)
    options = {name: getattr(args, name) for name in names}
    result = export(args.source, args.out, args.format, **options)
    if result.psnr is not None:
        check = f"PSNR vs fp32 PyTorch on held-out calibration images: {result.psnr:.1f} dB"
    else:
        parity = ", ".join(f"{size}: {value:.1e}" for size, value in result.parity.items())
        check = f"max abs difference vs PyTorch: {parity or 'not checked (train-mode inference)'}"
    print(f"exported {args.format} to {result.folder} ({result.bytes / 1e6:.1f} MB); {check}")
    return 0


def command_import_reference(args: argparse.Namespace, extra: list[str]) -> int:
    from model.reference import import_reference

    spec = import_reference(
        args.file, args.out, args.netG, args.norm, args.input_nc, args.output_nc, args.direction
    )
    print(f"imported {args.file} as {spec.task} into {args.out}")
    return 0


def command_serve(args: argparse.Namespace, extra: list[str]) -> int:
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
        # Longer than uvicorn's 5 s, so a client reusing a connection is not cut off while
        # a busy CPU delays its next request.
        timeout_keep_alive=args.keep_alive,
    )
    return 0


def evaluation_options(args: argparse.Namespace) -> dict:
    from model.runtime import resolve_device

    names = ("segmenter", "inception", "max_images", "samples", "batch_size", "palette_tolerance")
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


def command_evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    from pix2pix.api import evaluate

    options = evaluation_options(args)
    if isinstance(options.get("inference_mode"), list):
        raise UsageError("evaluate runs one model: give one --inference-mode")
    evaluation = evaluate(args.model, args.data, args.split, args.out, **options)
    print_evaluations([evaluation], Path(args.out) / "index.html")
    return 0


def command_compare(args: argparse.Namespace, extra: list[str]) -> int:
    from training.evaluation.evaluate import evaluate_models
    from training.evaluation.report import write_report

    if len(args.models) < 2:
        raise UsageError("compare needs at least two models")
    names = args.names.split(",") if args.names else None
    if names is not None and len(names) != len(args.models):
        raise UsageError(f"--names gives {len(names)} names for {len(args.models)} models")
    evaluations = evaluate_models(
        args.models, args.data, args.split, names=names, **evaluation_options(args)
    )
    print_evaluations(evaluations, write_report(evaluations, args.out, title=args.title))
    return 0


def command_segmenter_train(args: argparse.Namespace, extra: list[str]) -> int:
    from model.runtime import resolve_device
    from training.evaluation.segmenter import (
        DEFAULT_FOLDER,
        first_image_size,
        segmentation_data_config,
        train_segmenter,
    )

    options = {
        name: getattr(args, name) for name in ("layout", "direction", "palette", "tolerance")
    }
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
    train.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes on this machine (runs itself under torchrun)",
    )
    train.set_defaults(handler=command_train, allows_extra=True)

    translate = verbs.add_parser("translate", help="apply a generator to images")
    translate.add_argument("model", help="run directory, checkpoint or model folder")
    translate.add_argument("inputs", nargs="+", help="images or folders of images")
    translate.add_argument("--out", required=True, help="output folder")
    translate.add_argument(
        "--format",
        default="png",
        type=lambda name: IMAGE_FORMAT_ALIASES.get(name, name),
        choices=IMAGE_FORMAT_NAMES,
        help="output image format (jpg: the same as jpeg)",
    )
    translate.add_argument(
        "--resize",
        default="pad",
        choices=RESIZE_MODES,
        help="pad: keep the size (pad to the network multiple); fit: resize to the training size",
    )
    translate.add_argument(
        "--palette-tolerance",
        type=int,
        default=None,
        help="label maps: accept colors this far (per channel, 0..255) from a palette color "
        "(default: the tolerance the model was trained with, from its spec)",
    )
    translate.add_argument(
        "--batch-size", type=int, default=8, help="images of one size, or tiles, run together"
    )
    translate.add_argument(
        "--tile-size",
        type=int,
        metavar="PIXELS",
        help="larger images run as overlapping tiles, as the service does (default 512; 0: never)",
    )
    translate.add_argument(
        "--tile-overlap", type=int, metavar="PIXELS", help="overlap blended between tiles (64)"
    )
    translate.add_argument("--device", default="auto")
    translate.add_argument(
        "--runtime",
        default="auto",
        choices=("auto", *RUNTIMES),
        help="auto: time what the model folder and this install can run, keep the fastest",
    )
    translate.add_argument(
        "--inference-mode",
        choices=INFERENCE_MODES,
        help="batch norm and dropout as eval, sample or train instead of as the spec says "
        "(needs the generator's weights)",
    )
    translate.add_argument("--quiet", action="store_true", help="no progress bar")
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

    split = data.add_parser(
        "split",
        help="cut aligned A|B images into halves (the inverse of combine)",
        description="Writes OUT/[split/]A and B folders, or with --side A or B only that half "
        "as OUT/[split/]<stem>.png: a folder of photos for the colorization layout.",
    )
    split.add_argument("data", help="aligned dataset folder (with or without split folders)")
    split.add_argument("--out", required=True)
    split.add_argument("--side", default="both", choices=("A", "B", "both"))
    split.add_argument("--quiet", action="store_true")
    split.set_defaults(handler=command_data_split)

    export = verbs.add_parser("export", help="export a generator to a model folder")
    export.add_argument("source", help="run directory, checkpoint or model folder")
    export.add_argument("--format", default="safetensors", choices=EXPORT_FORMAT_NAMES)
    export.add_argument("--out", help="model folder to write (default models/<run name>)")
    export.add_argument(
        "--half",
        action="store_true",
        help="store weights as fp16 (half the size; ONNX computes in fp32)",
    )
    export.add_argument(
        "--inference-mode",
        choices=INFERENCE_MODES,
        help="override the spec: eval (batch norm's running statistics, no dropout), sample "
        "(each image's own statistics, no dropout) or train (sample plus the paper's "
        "test-time dropout)",
    )
    export.add_argument(
        "--int8",
        action="store_true",
        help="ONNX with int8 convolutions (about 3x faster than fp32 ONNX on CPUs with VNNI), "
        "calibrated on --calibration and refused below --min-psnr against fp32",
    )
    export.add_argument(
        "--calibration",
        help="dataset root or folder of input images for --int8 (default: the run's dataset)",
    )
    export.add_argument(
        "--calibration-images",
        type=int,
        default=64,
        metavar="N",
        help="images to use: three quarters calibrate, the rest check fidelity (default 64)",
    )
    export.add_argument(
        "--min-psnr",
        type=float,
        default=40.0,
        metavar="DB",
        help="refuse an int8 model below this PSNR against fp32 (default 40)",
    )
    export.add_argument(
        "--recalibrate-bn",
        type=int,
        default=0,
        metavar="N",
        help="eval mode: first set batch norm's statistics to the served weights' own over N "
        "inputs of --calibration, dropout off (as train.recalibrate_bn does in training)",
    )
    export.set_defaults(handler=command_export)

    reference = verbs.add_parser(
        "import-reference",
        help="convert a latest_net_G.pth of junyanz/pytorch-CycleGAN-and-pix2pix",
    )
    reference.add_argument("file")
    reference.add_argument("--netG", default="unet_256", choices=("unet_256", "unet_128"))
    reference.add_argument("--norm", default="batch", choices=("batch", "instance", "none"))
    reference.add_argument("--input-nc", type=int, default=3)
    reference.add_argument("--output-nc", type=int, default=3)
    reference.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"))
    reference.add_argument("--out", required=True, help="model folder to write")
    reference.set_defaults(handler=command_import_reference)

    serve = verbs.add_parser("serve", help="serve generators over HTTP")
    serve.add_argument("--models", default=None, help="models folder (PIX2PIX_MODELS_DIR)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--graceful-timeout", type=int, default=30, help="seconds to finish requests on SIGTERM"
    )
    serve.add_argument("--keep-alive", type=int, default=75, help="idle keep-alive seconds")
    serve.set_defaults(handler=command_serve)

    def add_evaluation_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--data", required=True, help="dataset root (train/val/test)")
        command.add_argument("--split", default="test", choices=("train", "val", "test"))
        command.add_argument("--out", default="report", help="report folder (default: report)")
        command.add_argument(
            "--segmenter",
            default=None,
            help="segmenter folder for the FCN-score (default: DATA/segmenter when present)",
        )
        command.add_argument(
            "--inception",
            default=None,
            metavar="WEIGHTS",
            help="torchvision Inception-v3 weights file; enables FID and KID",
        )
        command.add_argument("--max-images", type=int, default=0, help="0 = the whole split")
        command.add_argument(
            "--palette-tolerance",
            type=int,
            default=None,
            help="label maps: accept colors this far (per channel) from a palette color, as "
            "data.palette_tolerance (255 = nearest; default: the model's spec's)",
        )
        command.add_argument(
            "--inference-mode",
            default=None,
            help="run batch norm and dropout as eval, sample or train instead of as the model's "
            "spec says (compare: one mode, or one per model, comma-separated)",
        )
        command.add_argument("--samples", type=int, default=8, help="rows in the sample grid")
        command.add_argument("--batch-size", type=int, default=8)
        command.add_argument("--device", default="auto")
        command.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = verbs.add_parser(
        "evaluate",
        help="score a generator on a dataset split and write an HTML report",
        description="Writes OUT/metrics.json, OUT/index.html and figures; prints the table.",
    )
    evaluate.add_argument("model", help="run directory, checkpoint or model folder")
    add_evaluation_options(evaluate)
    evaluate.set_defaults(handler=command_evaluate)

    compare = verbs.add_parser(
        "compare", help="evaluate several generators on the same split, side by side"
    )
    compare.add_argument("models", nargs="+", help="run directories, checkpoints or model folders")
    compare.add_argument("--names", default=None, help="comma-separated column names")
    compare.add_argument("--title", default=None, help="report title")
    add_evaluation_options(compare)
    compare.set_defaults(handler=command_compare)

    segmenter = verbs.add_parser(
        "segmenter", help="the segmentation network behind the FCN-score"
    ).add_subparsers(dest="segmenter_verb", required=True, metavar="TOOL")
    segmenter_train = segmenter.add_parser(
        "train",
        help="train a segmenter on a label-map dataset's real photos",
        description="Trains photo -> label map on DATA's train split and saves it to "
        "DATA/segmenter (or --out), where evaluate finds it.",
    )
    segmenter_train.add_argument("--data", required=True, help="label-map dataset root")
    segmenter_train.add_argument("--out", type=Path, default=None)
    segmenter_train.add_argument("--layout", default="folders", choices=("folders", "aligned"))
    segmenter_train.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"))
    segmenter_train.add_argument("--palette", default="palette.json")
    segmenter_train.add_argument("--tolerance", type=int, default=0, help="label-color tolerance")
    segmenter_train.add_argument(
        "--size", type=int, default=0, help="training size (default: the photos' height)"
    )
    segmenter_train.add_argument("--steps", type=int, default=1500)
    segmenter_train.add_argument("--batch-size", type=int, default=8)
    segmenter_train.add_argument("--width", type=int, default=16, help="U-Net base width")
    segmenter_train.add_argument("--num-downs", type=int, default=5)
    segmenter_train.add_argument("--lr", type=float, default=2e-3)
    segmenter_train.add_argument("--seed", type=int, default=0)
    segmenter_train.add_argument("--device", default="auto")
    segmenter_train.add_argument("--quiet", action="store_true")
    segmenter_train.set_defaults(handler=command_segmenter_train)
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
