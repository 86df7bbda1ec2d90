"""Edges -> photo pairs from a folder of photos (the edges2shoes task on any photos).

Each photo is resized so its shorter side is ``size`` and center-cropped to a square (the
trainer resizes to squares, so a square keeps the photo's aspect), and its edge map is taken
from that square: A (``<split>/A/<stem>.png``) is the edge map, black lines on white, one
gray channel; B (``<split>/B/<stem>.png``) is the square photo. That is the ``folders``
layout with ``data.input_kind = "photo"``, the trainer's defaults. Photos go to train, val and
test by a shuffle seeded with ``seed``; the same photos and options give byte-identical files.

Two edge methods: Canny (on the gray photo after a Gaussian blur, with hysteresis thresholds on
the gradient's L2 magnitude) gives thin contours; XDoG (Winnemöller et al., "XDoG: An
eXtended Difference-of-Gaussians Compendium", 2012) gives a sketch whose lines thicken with
contrast and which shades fine texture.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from model.atomic_files import write_atomic, write_text_atomic
from model.processing import IMAGE_SUFFIXES, list_images, to_rgb
from training.data.splits import SPLITS, deal, shuffled
from training.errors import DataError

logger = logging.getLogger(__name__)

METHODS = ("canny", "xdog")
# The options file in the output folder; --overwrite removes it with the split folders.
MANIFEST = "edges.json"
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


@dataclass(frozen=True)
class EdgeOptions:
    """How edges are drawn. ``canny_*`` apply to Canny only, ``xdog_*`` to XDoG only.

    Canny: ``canny_sigma`` is the Gaussian blur before the gradient (0: none), which keeps fine
    texture (grass, fur) from filling the map with short segments; ``canny_low`` and
    ``canny_high`` are the hysteresis thresholds on the gradient magnitude of the 0..255 gray
    photo. XDoG: the difference ``G(sigma) - tau * G(k * sigma)`` of the gray photo in 0..1,
    white where it is at least ``epsilon`` and ``1 + tanh(phi * (difference - epsilon))`` below
    it, so ``phi`` sets how hard the lines are and ``epsilon`` how faint an edge still draws.
    """

    method: str = "canny"
    canny_sigma: float = 1.0
    canny_low: float = 60.0
    canny_high: float = 150.0
    xdog_sigma: float = 1.0
    xdog_k: float = 1.6
    xdog_tau: float = 0.98
    xdog_epsilon: float = -0.01
    xdog_phi: float = 50.0

    def validate(self) -> EdgeOptions:
        """Raise DataError naming each bad setting by its command-line flag; return self."""
        if self.method not in METHODS:
            raise DataError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        values = {name: value for name, value in asdict(self).items() if name != "method"}
        problems = [
            f"{flag(name)} must be a finite number, not {value}"
            for name, value in values.items()
            if not math.isfinite(value)
        ]
        checks = (
            (self.canny_sigma >= 0, "--canny-sigma must be >= 0 (0: no blur)"),
            (self.canny_low >= 0, "--canny-low must be >= 0"),
            (self.canny_high >= self.canny_low, "--canny-high must be >= --canny-low"),
            (self.xdog_sigma > 0, "--xdog-sigma must be > 0"),
            (self.xdog_k > 1, "--xdog-k must be > 1 (the second Gaussian is the wider)"),
            (0 < self.xdog_tau <= 1, "--xdog-tau must be in (0, 1]"),
            (-1 < self.xdog_epsilon < 1, "--xdog-epsilon must be in (-1, 1)"),
            (self.xdog_phi > 0, "--xdog-phi must be > 0"),
        )
        problems = problems or [message for ok, message in checks if not ok]
        if problems:
            given = ", ".join(f"{flag(name)} {value:g}" for name, value in values.items())
            raise DataError(f"bad edge settings: {'; '.join(problems)} (given: {given})")
        return self


def flag(option: str) -> str:
    """The command-line flag of an EdgeOptions field: ``canny_low`` -> ``--canny-low``."""
    return "--" + option.replace("_", "-")


def edge_map(photo: np.ndarray, options: EdgeOptions) -> np.ndarray:
    """An (H, W, 3) uint8 RGB photo -> its (H, W) uint8 edge map: 255 background, dark edges."""
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    if options.method == "canny":
        if options.canny_sigma > 0:
            gray = _blur(gray, options.canny_sigma)
        edges = cv2.Canny(gray, options.canny_low, options.canny_high, L2gradient=True)
        return 255 - edges
    lightness = gray.astype(np.float32) / 255.0
    difference = _blur(lightness, options.xdog_sigma) - options.xdog_tau * _blur(
        lightness, options.xdog_k * options.xdog_sigma
    )
    shade = 1.0 + np.tanh(options.xdog_phi * (difference - options.xdog_epsilon))
    tone = np.where(difference >= options.xdog_epsilon, 1.0, shade)
    return np.round(np.clip(tone, 0.0, 1.0) * 255.0).astype(np.uint8)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    # Mirrored borders, so the frame of the photo draws no edge of its own.
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)


def square_photo(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (Lanczos), then cut the centered square."""
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_width, new_height), Image.Resampling.LANCZOS)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def parse_split(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> train, val and test fractions (each >= 0, summing to 1)."""
    try:
        fractions = tuple(float(part) for part in text.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise DataError(
            f"--split must be three fractions for train,val,test like 0.8,0.1,0.1, not {text!r}"
        )
    return check_split(fractions)  # type: ignore[arg-type]


def check_split(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    """Raise DataError unless the train, val and test fractions are >= 0, sum to 1 and give
    train a share; return them."""
    shown = ",".join(f"{value:g}" for value in fractions)
    if not all(math.isfinite(value) and value >= 0 for value in fractions):
        raise DataError(f"--split fractions must be numbers >= 0, not {shown}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"--split fractions must sum to 1, not {shown} (sum {sum(fractions):g})")
    if fractions[0] == 0:
        raise DataError(f"--split {shown} puts nothing in train")
    return fractions


def cut_splits(photos: list[Path], fractions: tuple[float, float, float]) -> dict[str, list[Path]]:
    """``photos`` (in shuffled order) dealt into train, val and test by ``fractions``
    (``training.data.splits.deal``), each split in name order."""
    needed = [split for split, fraction in zip(SPLITS, fractions, strict=True) if fraction > 0]
    dealt = deal(photos, val_fraction=fractions[1], test_fraction=fractions[2])
    if len(photos) < len(needed) or not dealt["train"]:
        named = ", ".join(needed)
        raise DataError(f"{len(photos)} photo(s) cannot fill the {len(needed)} splits {named}")
    return {split: sorted(dealt[split]) for split in SPLITS}


def write_edges_dataset(
    photos: str | Path,
    out: str | Path,
    options: EdgeOptions = EdgeOptions(),
    size: int = 256,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_images: int = 0,
    overwrite: bool = False,
    skip_unreadable: bool = False,
    progress: bool = False,
) -> dict:
    """Write edges -> photo pairs of the photos directly in ``photos`` to ``out``.

    ``max_images`` (0: all) takes that many readable photos in the shuffled order. Every photo
    used is decoded before anything is written: unreadable ones are all named in one DataError,
    or with ``skip_unreadable`` left out and listed in the summary. ``out`` must be empty or
    new; ``overwrite`` first removes its train/val/test folders and its edges.json. Returns
    ``{"out", "pairs", "splits": {split: pairs}, "skipped": ["path: reason"], "upscaled"}``,
    ``upscaled`` counting the photos whose shorter side was under ``size``.
    """
    photos, out = Path(photos), Path(out)
    options.validate()
    check_split(split)
    if size < 8:
        raise DataError(f"--size must be at least 8 pixels, not {size}")
    if max_images < 0:
        raise DataError(f"--max-images must be >= 0 (0: all), not {max_images}")
    ordered = shuffled(_list_photos(photos), seed)
    _check_out(out, overwrite)
    chosen, skipped = _select(ordered, max_images, skip_unreadable, progress)
    splits = cut_splits(chosen, split)
    for name in (*SPLITS, MANIFEST):
        _remove(out / name)
    upscaled = 0
    for split_name, paths in splits.items():
        for path in tqdm(paths, desc=f"edges {split_name}", unit="pair", disable=not progress):
            upscaled += _write_pair(path, out / split_name, options, size)
    if upscaled:
        logger.warning("%d photo(s) had a shorter side under %d px: enlarged", upscaled, size)
    counts = {name: len(paths) for name, paths in splits.items() if paths}
    manifest = {
        "source": str(photos),
        "method": options.method,
        "options": {k: v for k, v in asdict(options).items() if k.startswith(options.method)},
        "size": size,
        "seed": seed,
        "split": list(split),
        "max_images": max_images,
        "pairs": counts,
        "skipped": skipped,
    }
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    logger.info("wrote %d edges -> photo pairs to %s", len(chosen), out)
    summary = {"out": str(out), "pairs": len(chosen), "splits": counts}
    return {**summary, "skipped": skipped, "upscaled": upscaled}


def _list_photos(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist or is not a folder")
    photos = list_images(folder)
    if not photos:
        nested = (
            " (subfolders are not searched)" if any(p.is_dir() for p in folder.iterdir()) else ""
        )
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}{nested}")
    stems: dict[str, list[str]] = {}
    for path in photos:
        stems.setdefault(path.stem, []).append(path.name)
    clashes = [", ".join(names) for names in stems.values() if len(names) > 1]
    if clashes:
        raise DataError(
            f"{folder}: several photos share a stem, and pairs are named by stem: "
            + "; ".join(clashes)
        )
    return photos


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(
            f"--out {out} is not empty; pass --overwrite to replace its "
            f"{', '.join(SPLITS)} folders and {MANIFEST}"
        )


def _select(
    ordered: list[Path], max_images: int, skip_unreadable: bool, progress: bool
) -> tuple[list[Path], list[str]]:
    """The first ``max_images`` (0: all) photos of ``ordered`` that decode, and a line for each
    that does not; raises DataError naming them all unless ``skip_unreadable``."""
    chosen: list[Path] = []
    problems: list[str] = []
    for path in tqdm(ordered, desc="checking photos", unit="photo", disable=not progress):
        if max_images and len(chosen) == max_images:
            break
        try:
            with Image.open(path) as image:
                image.load()
        except (*_DECODE_ERRORS, Image.DecompressionBombError) as error:
            problems.append(f"{path}: {error}")
            continue
        chosen.append(path)
    if problems and not skip_unreadable:
        raise DataError(
            f"{len(problems)} unreadable photo(s) (--skip-unreadable leaves them out):\n  "
            + "\n  ".join(problems)
        )
    for problem in problems:
        logger.warning("skipped unreadable photo %s", problem)
    if not chosen:
        raise DataError(f"none of the {len(ordered)} photos is readable")
    return chosen, problems


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _write_pair(path: Path, folder: Path, options: EdgeOptions, size: int) -> bool:
    """Write one pair into folder/A and folder/B; returns whether the photo was enlarged."""
    try:
        with Image.open(path) as image:
            # As combine and training read photos: the rotation viewers show, in RGB.
            photo = to_rgb(ImageOps.exif_transpose(image))
    except _DECODE_ERRORS as error:
        raise DataError(f"{path} became unreadable while writing: {error}") from error
    enlarged = min(photo.size) < size
    square = square_photo(photo, size)
    edges = Image.fromarray(edge_map(np.asarray(square), options))
    for side, picture in (("A", edges), ("B", square)):
        save = functools.partial(picture.save, format="PNG")
        write_atomic(folder / side / f"{path.stem}.png", save, sync=False)
    return enlarged
