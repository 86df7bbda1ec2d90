"""Build the aligned A|B dataset format from a folder of inputs and a folder of targets, and
cut it apart again.

Files pair by stem (`0001.png` in A with `0001.jpg` in B) and each pair is written as one PNG
with A on the left and B on the right, the format `training.data.download` fetches and checks.
"""

import functools
import logging
from collections import defaultdict
from pathlib import Path

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from model.atomic_files import write_atomic
from model.processing import IMAGE_SUFFIXES, list_images, to_rgb
from training.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# EXIF orientations that rotate by a quarter turn, so the displayed width and height swap.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})

# (split, stem): split is "" when the folders have no split subfolders.
PairKey = tuple[str, str]


def combine_folders(
    a_dir: str | Path, b_dir: str | Path, out: str | Path, progress: bool = False
) -> dict:
    """Write each A/B pair side by side as out/[<split>/]<stem>.png; returns a summary.

    If both folders have split subfolders (train/val/test) they are mirrored in out, otherwise
    pairs are written into out directly. Every problem found before writing (missing partners
    either way, duplicate stems, size mismatches, unreadable images, empty input) is reported
    in one DataError that names the files. The summary is
    `{"out": str, "pairs": int, "splits": {split: pairs written}}`, with `splits` empty when the
    folders have no split subfolders.
    """
    a_dir, b_dir, out = Path(a_dir), Path(b_dir), Path(out)
    for label, folder in (("A", a_dir), ("B", b_dir)):
        if not folder.is_dir():
            raise DataError(f"{label} folder {folder} does not exist or is not a folder")

    pairs = _match(a_dir, b_dir, _common_splits(a_dir, b_dir))
    _check_pairs(pairs, progress)

    written: dict[str, int] = defaultdict(int)
    for (split, stem), (a_path, b_path) in tqdm(
        sorted(pairs.items()), desc="combining", unit="pair", disable=not progress
    ):
        a_image = _load_rgb(a_path)
        b_image = _load_rgb(b_path)
        if a_image.size != b_image.size:
            raise DataError(
                f"size mismatch after EXIF rotation: {a_path} is "
                f"{a_image.width}x{a_image.height} but {b_path} is {b_image.width}x{b_image.height}"
            )
        combined = Image.new("RGB", (a_image.width + b_image.width, a_image.height))
        combined.paste(a_image, (0, 0))
        combined.paste(b_image, (a_image.width, 0))
        destination = out / split / f"{stem}.png"
        # A killed run must not leave a truncated PNG that passes for a finished pair.
        write_atomic(destination, functools.partial(combined.save, format="PNG"), sync=False)
        written[split] += 1

    total = sum(written.values())
    logger.info("wrote %d aligned pairs to %s", total, out)
    return {
        "out": str(out),
        "pairs": total,
        "splits": {split: count for split, count in written.items() if split},
    }


def split_aligned(
    data: str | Path, out: str | Path, side: str = "both", progress: bool = False
) -> dict:
    """The inverse of ``combine_folders``: each aligned A|B image of data/[<split>/] is cut in
    half and written as out/[<split>/]A/<stem>.png and B/<stem>.png (``side`` = "both"), or only
    the A or B half as out/[<split>/]<stem>.png, the colorization layout's folder of photos.

    Every image is checked (readable, even width) before anything is written, and all problems
    are reported at once naming the files. Returns ``{"out", "images", "splits"}``.
    """
    if side not in ("A", "B", "both"):
        raise DataError(f"side must be A, B or both, not {side!r}")
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise DataError(f"{data} does not exist or is not a folder")
    splits = _split_names(data) or [""]
    files = {key: paths[0] for key, paths in _images_by_key(data, splits).items()}
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {data}")
    problems = []
    for path in files.values():
        size = _displayed_size(path, problems)
        if size is not None and size[0] % 2:
            problems.append(f"{path}: width {size[0]} is odd, so it is not an A|B pair")
    if problems:
        raise DataError(f"{len(problems)} problem(s) with the images:\n  " + "\n  ".join(problems))
    written: dict[str, int] = defaultdict(int)
    for (split, stem), path in tqdm(
        sorted(files.items()), desc="splitting", unit="image", disable=not progress
    ):
        image = _load_rgb(path)
        half = image.width // 2
        for name, left, right in (("A", 0, half), ("B", half, image.width)):
            if side in (name, "both"):
                folder = out / split / name if side == "both" else out / split
                picture = image.crop((left, 0, right, image.height))
                save = functools.partial(picture.save, format="PNG")
                write_atomic(folder / f"{stem}.png", save, sync=False)
        written[split] += 1
    total = sum(written.values())
    logger.info("split %d aligned images into %s", total, out)
    return {"out": str(out), "images": total, "splits": {k: v for k, v in written.items() if k}}


def _split_names(folder: Path) -> list[str]:
    return [split for split in SPLITS if (folder / split).is_dir()]


def _common_splits(a_dir: Path, b_dir: Path) -> list[str]:
    a_splits, b_splits = _split_names(a_dir), _split_names(b_dir)
    if a_splits and b_splits:
        # A split present on one side only shows up below as files without a partner.
        return [split for split in SPLITS if split in a_splits or split in b_splits]
    if a_splits or b_splits:
        with_splits, without = (a_dir, b_dir) if a_splits else (b_dir, a_dir)
        found = ", ".join(a_splits or b_splits)
        raise DataError(
            f"{with_splits} has split folders ({found}) but {without} has none; "
            f"give both folders the same train/val/test subfolders, or neither"
        )
    return [""]


def _images_by_key(folder: Path, splits: list[str]) -> dict[PairKey, list[Path]]:
    images: dict[PairKey, list[Path]] = defaultdict(list)
    for split in splits:
        if (folder / split).is_dir():
            for path in list_images(folder / split):
                images[(split, path.stem)].append(path)
    return dict(images)


def _match(a_dir: Path, b_dir: Path, splits: list[str]) -> dict[PairKey, tuple[Path, Path]]:
    a_files, b_files = _images_by_key(a_dir, splits), _images_by_key(b_dir, splits)
    empty = [str(folder) for folder, files in ((a_dir, a_files), (b_dir, b_files)) if not files]
    if empty:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {' and '.join(empty)}")

    problems: list[str] = []
    for label, folder, files in (("A", a_dir, a_files), ("B", b_dir, b_files)):
        duplicates = [paths for paths in files.values() if len(paths) > 1]
        if duplicates:
            listed = "; ".join(
                ", ".join(path.relative_to(folder).as_posix() for path in paths)
                for paths in duplicates
            )
            problems.append(f"{label} ({folder}) has several files with the same stem: {listed}")
    for label, folder, files, other_label, other_files in (
        ("A", a_dir, a_files, "B", b_files),
        ("B", b_dir, b_files, "A", a_files),
    ):
        unmatched = [paths[0] for key, paths in sorted(files.items()) if key not in other_files]
        if unmatched:
            listed = ", ".join(path.relative_to(folder).as_posix() for path in unmatched)
            problems.append(
                f"{len(unmatched)} file(s) in {label} ({folder}) have no partner in "
                f"{other_label}: {listed}"
            )
    if problems:
        raise DataError("cannot pair the folders:\n  " + "\n  ".join(problems))

    return {key: (paths[0], b_files[key][0]) for key, paths in a_files.items()}


def _check_pairs(pairs: dict[PairKey, tuple[Path, Path]], progress: bool) -> None:
    """Read every header before writing anything, so all problems are reported at once."""
    problems: list[str] = []
    for a_path, b_path in tqdm(
        pairs.values(), desc="checking pairs", unit="pair", disable=not progress
    ):
        a_size = _displayed_size(a_path, problems)
        b_size = _displayed_size(b_path, problems)
        if a_size is not None and b_size is not None and a_size != b_size:
            problems.append(
                f"size mismatch: {a_path} is {a_size[0]}x{a_size[1]} but "
                f"{b_path} is {b_size[0]}x{b_size[1]}"
            )
    if problems:
        raise DataError(f"{len(problems)} problem(s) with the images:\n  " + "\n  ".join(problems))


def _displayed_size(path: Path, problems: list[str]) -> tuple[int, int] | None:
    try:
        with Image.open(path) as image:
            width, height = image.size
            # A PNG's EXIF may follow the pixel data, so reading it would decode the whole file;
            # the write pass checks sizes again after rotation.
            orientation = (
                None if image.format == "PNG" else image.getexif().get(ExifTags.Base.Orientation)
            )
    except (UnidentifiedImageError, OSError) as error:
        problems.append(f"unreadable image {path}: {error}")
        return None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def _load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            # Photos from phones store their rotation in EXIF; pair what viewers show. The
            # conversion is the one training and serving use, so a combined pair holds the
            # pixels the model would have read from the two files.
            return to_rgb(ImageOps.exif_transpose(image))
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(
            f"unreadable image {path}: {error} (pairs before it in sorted order were written)"
        ) from error
