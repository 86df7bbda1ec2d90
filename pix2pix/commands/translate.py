"""``pix2pix translate``: apply a generator to images and folders of images, as the service does."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from model.choices import IMAGE_FORMAT_ALIASES, IMAGE_FORMAT_NAMES, RESIZE_MODES, image_format
from model.export_formats import RUNTIMES
from model.spec import INFERENCE_MODES
from pix2pix.commands.common import EXIT_FAILURE, UsageError, add_hidden_alias

if TYPE_CHECKING:
    import numpy as np
    from tqdm import tqdm

    from model.translate import Translator


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("translate", help="apply a generator to images")
    parser.add_argument("model", help="run directory, checkpoint or model folder")
    parser.add_argument("inputs", nargs="+", help="images or folders of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--format",
        default="png",
        type=image_format_name,
        choices=IMAGE_FORMAT_NAMES,
        help="output image format (jpg: the same as jpeg)",
    )
    parser.add_argument(
        "--resize",
        default="pad",
        choices=RESIZE_MODES,
        help="pad: keep the size (pad to the network multiple); fit: resize to the training size",
    )
    parser.add_argument(
        "--palette-tolerance",
        type=int,
        default=None,
        help="label maps: accept colors this far (per channel, 0..255) from a palette color "
        "(default: the tolerance the model was trained with, from its spec)",
    )
    add_hidden_alias(parser, "--tolerance", "palette_tolerance", type=int)
    add_running_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def add_running_options(parser: argparse.ArgumentParser) -> None:
    """How the generator runs: batches, tiles, device, runtime and inference mode."""
    parser.add_argument(
        "--batch-size", type=int, default=8, help="images of one size, or tiles, run together"
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        metavar="PIXELS",
        help="larger images run as overlapping tiles, as the service does (default 512; 0: never)",
    )
    parser.add_argument(
        "--tile-overlap", type=int, metavar="PIXELS", help="overlap blended between tiles (64)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=("auto", *RUNTIMES),
        help="auto: time what the model folder and this install can run, keep the fastest",
    )
    parser.add_argument(
        "--inference-mode",
        choices=INFERENCE_MODES,
        help="batch norm and dropout as eval, sample or train instead of as the spec says "
        "(needs the generator's weights)",
    )


def image_format_name(name: str) -> str:
    """The one spelling of an output format: what people type (jpg) maps to it (jpeg)."""
    return IMAGE_FORMAT_ALIASES.get(name, name)


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


class Batches:
    """Decoded inputs held by size until a batch of one size is full, then translated and
    written; an input larger than a tile runs at once, as its own tiles fill the batches."""

    def __init__(self, translator: Translator, batch_size: int, resize: str, bar: tqdm):
        self.translator = translator
        self.batch_size = batch_size
        self.resize = resize
        self.bar = bar
        self.waiting: dict[tuple[int, ...], list] = {}
        self.failed: list[Path] = []

    def report(self, path: Path, problem: str) -> None:
        from tqdm import tqdm

        tqdm.write(problem, file=sys.stderr)
        self.failed.append(path)

    def add(self, source: Path, target: Path, array: np.ndarray) -> None:
        tile_size = self.translator.tile_size
        if tile_size and max(array.shape[:2]) > tile_size:
            self.run([(source, target, array)])
            return
        group = self.waiting.setdefault(array.shape, [])
        group.append((source, target, array))
        if len(group) == self.batch_size:
            self.run(self.waiting.pop(array.shape))
        elif sum(map(len, self.waiting.values())) > 4 * self.batch_size:
            self.run_waiting()  # many different sizes: bound the memory they hold

    def run(self, group: list) -> None:
        from PIL import Image

        arrays = [array for _, _, array in group]
        outputs = self.translator.translate_arrays(arrays, self.resize)
        for (source, target, _), output in zip(group, outputs, strict=True):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(output).save(target)
            except OSError as error:
                self.report(source, f"{source}: cannot write {target}: {error}")
        self.bar.update(len(group))

    def run_waiting(self) -> None:
        for group in self.waiting.values():
            self.run(group)
        self.waiting.clear()


def run(args: argparse.Namespace, extra: list[str]) -> int:
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
    pairs = translation_targets(args.inputs, Path(args.out), image_format(args.format).suffix)
    with tqdm(total=len(pairs), desc="translate", unit="image", disable=args.quiet) as bar:
        batches = Batches(translator, args.batch_size, args.resize, bar)
        for source, target in pairs:
            try:
                array = read_input(source, translator.spec, args.palette_tolerance)
            except (InputError, OSError) as error:  # each names the file
                batches.report(source, str(error))
                bar.update()
                continue
            batches.add(source, target, array)
        batches.run_waiting()
    failed = batches.failed
    print(f"translated {len(pairs) - len(failed)} of {len(pairs)} images into {args.out}")
    if failed:
        print(f"{len(failed)} failed: {', '.join(map(str, failed))}", file=sys.stderr)
    return EXIT_FAILURE if failed else 0
