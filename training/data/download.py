"""Fetch the standard pix2pix datasets from a public mirror and check their aligned layout.

Each archive holds one folder `{name}/` with split folders (`train/`, `val/`, sometimes `test/`)
of "aligned" images: the input A and the target B side by side in one file, so every image is
twice as wide as it is tall.
"""

import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from model.atomic_files import replace_folder
from model.processing import IMAGE_SUFFIXES, list_images
from training.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_MIRROR = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets"
MIRROR_ENVIRONMENT_VARIABLE = "PIX2PIX_DATASET_MIRROR"

CHUNK_BYTES = 1 << 20
# Long enough for a slow mirror to answer, short enough that a dead one fails within a minute.
SOCKET_TIMEOUT_SECONDS = 30.0
# A layout error on a dataset of 100k images must stay readable.
MAXIMUM_LISTED_FILES = 20


@dataclass(frozen=True)
class DatasetInfo:
    """What the mirror holds for one dataset."""

    name: str
    size_megabytes: int
    splits: tuple[str, ...]
    description: str

    @property
    def archive(self) -> str:
        return f"{self.name}.tar.gz"


# Sizes are those of the archives on the Berkeley mirror, rounded; they only inform the user.
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "facades",
            30,
            ("train", "val", "test"),
            "CMP Facades: label maps to building facades, 400 training pairs.",
        ),
        DatasetInfo(
            "cityscapes",
            100,
            ("train", "val"),
            "Cityscapes: street photos and semantic label maps, 2975 training pairs.",
        ),
        DatasetInfo(
            "maps",
            240,
            ("train", "val"),
            "Google Maps: aerial photos and map tiles of New York, 1096 training pairs.",
        ),
        DatasetInfo(
            "edges2shoes",
            2200,
            ("train", "val"),
            "UT Zappos50K: edge maps to shoe photos, about 50k training pairs.",
        ),
        DatasetInfo(
            "edges2handbags",
            8600,
            ("train", "val"),
            "iGAN handbags: edge maps to handbag photos, about 137k training pairs.",
        ),
        DatasetInfo(
            "night2day",
            1900,
            ("train", "val", "test"),
            "Transient Attributes: the same webcam scene at night and by day, about 17k pairs.",
        ),
    )
}


def download_dataset(
    name: str,
    root: str | Path,
    base_url: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Download, extract and check; returns root/name.

    Skips the download if root/name already passes the layout check (unless force). A complete
    archive already at root/{name}.tar.gz (for instance one fetched by hand) is used instead of
    downloading, unless force. Whatever fails, root is left without a partial dataset folder, and
    an existing root/name is replaced only by a new copy that passed the check.
    """
    info = DATASETS.get(name)
    if info is None:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name

    if target.is_dir() and not force:
        try:
            counts = check_aligned_layout(target, progress=progress)
        except DataError as error:
            logger.warning(
                "existing %s fails the layout check, downloading again: %s", target, error
            )
        else:
            logger.info("%s already present at %s (%s), skipping download", name, target, counts)
            return target

    archive = root / info.archive
    url = f"{resolve_mirror(base_url)}/{info.archive}"
    if force or not archive.is_file():
        logger.info("downloading %s (about %d MB) from %s", name, info.size_megabytes, url)
        _fetch(url, archive, progress=progress)
    else:
        logger.info("using the archive already at %s", archive)

    extraction = Path(tempfile.mkdtemp(prefix=f".{name}.extract-", dir=root))
    try:
        _extract(archive, extraction)
        extracted = extraction / name
        if not extracted.is_dir():
            found = sorted(path.name for path in extraction.iterdir())
            raise DataError(
                f"archive {archive} has no top-level folder {name}/ (it holds: {found}); "
                f"the archive was removed"
            )
        # Name the archive, not the temporary folder that is about to disappear.
        counts = check_aligned_layout(
            extracted,
            progress=progress,
            label=f"{archive} (not installed; the archive was removed)",
        )
        missing = [split for split in info.splits if not (extracted / split).is_dir()]
        if missing:
            logger.warning("%s has no %s split folder(s)", name, ", ".join(missing))
        replace_folder(extracted, target)
    except DataError:
        archive.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(extraction, ignore_errors=True)

    archive.unlink(missing_ok=True)
    logger.info("%s ready at %s: %s", name, target, counts)
    return target


def resolve_mirror(base_url: str | None = None) -> str:
    """The mirror to use: the argument, else the environment variable, else the Berkeley one."""
    chosen = base_url or os.environ.get(MIRROR_ENVIRONMENT_VARIABLE) or DEFAULT_MIRROR
    return chosen.rstrip("/")


def check_aligned_layout(
    folder: str | Path, progress: bool = False, label: str | None = None
) -> dict[str, int]:
    """Check an aligned dataset folder; returns the number of images in each split folder.

    Requires a `train/` folder with images; every image in every split folder must be readable
    and exactly twice as wide as it is tall (A and B side by side). Raises DataError naming the
    offending files relative to folder; label names the folder in messages (default: its path).
    """
    folder = Path(folder)
    label = label or str(folder)
    if not (folder / "train").is_dir():
        found = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
        raise DataError(f"{label} has no train/ folder (it holds: {found})")

    splits = sorted(
        path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")
    )
    images_by_split = {split.name: list_images(split) for split in splits}
    if not images_by_split["train"]:
        raise DataError(
            f"train/ in {label} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})"
        )

    problems: list[str] = []
    every_image = [image for images in images_by_split.values() for image in images]
    for path in tqdm(
        every_image, desc=f"checking {folder.name}", unit="image", disable=not progress
    ):
        problem = _aligned_image_problem(path)
        if problem is not None:
            problems.append(f"{path.relative_to(folder).as_posix()} ({problem})")

    if problems:
        listed = "\n  ".join(problems[:MAXIMUM_LISTED_FILES])
        more = len(problems) - MAXIMUM_LISTED_FILES
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DataError(
            f"{len(problems)} image(s) in {label} are not aligned A|B pairs "
            f"(width must be even and equal to 2 x height):\n  {listed}{tail}"
        )
    return {split: len(images) for split, images in images_by_split.items()}


def _aligned_image_problem(path: Path) -> str | None:
    try:
        # Opening reads only the header, so checking a large dataset stays quick.
        with Image.open(path) as image:
            width, height = image.size
    except UnidentifiedImageError:
        return "unreadable: not an image file"
    except OSError as error:
        return f"unreadable: {error}"
    if width % 2:
        return f"{width}x{height}, odd width"
    if width != 2 * height:
        return f"{width}x{height}, width is not 2 x height"
    return None


def _fetch(url: str, archive: Path, progress: bool) -> None:
    """Stream url into a temporary file next to archive; rename it only once complete."""
    partial = archive.with_name(f".{archive.name}.part")
    hint = (
        f"You can download {url} by hand and place it at {archive}, or set "
        f"{MIRROR_ENVIRONMENT_VARIABLE} to the base URL of a mirror that holds {archive.name}."
    )
    try:
        try:
            request = urllib.request.Request(
                url, headers={"User-Agent": "pix2pix-dataset-downloader"}
            )
            response = urllib.request.urlopen(request, timeout=SOCKET_TIMEOUT_SECONDS)
        except urllib.error.HTTPError as error:
            raise DataError(
                f"could not download {url}: the server answered HTTP {error.code} {error.reason}. "
                f"{hint}"
            ) from error
        except urllib.error.URLError as error:
            raise DataError(
                f"could not download {url}: {error.reason}. The host is unreachable; are you "
                f"offline or behind a firewall? {hint}"
            ) from error
        except ValueError as error:
            raise DataError(
                f"{url} is not a URL urllib can fetch ({error}); check the base URL or "
                f"{MIRROR_ENVIRONMENT_VARIABLE}"
            ) from error
        except (OSError, HTTPException) as error:
            raise DataError(f"could not download {url}: {error}. {hint}") from error

        with response:
            length_header = response.headers.get("Content-Length")
            expected = int(length_header) if length_header and length_header.isdigit() else None
            received = 0
            try:
                with (
                    open(partial, "wb") as file,
                    tqdm(
                        total=expected,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=archive.name,
                        disable=not progress,
                    ) as bar,
                ):
                    while chunk := response.read(CHUNK_BYTES):
                        file.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            except (OSError, HTTPException) as error:
                raise DataError(
                    f"download of {url} failed after {received} bytes: {error}. {hint}"
                ) from error

        if expected is not None and received != expected:
            raise DataError(
                f"download of {url} is incomplete: received {received} of {expected} bytes "
                f"(the connection was cut). Try again. {hint}"
            )
        os.replace(partial, archive)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("downloaded %s (%d bytes)", archive, received)


def _extract(archive: Path, destination: Path) -> None:
    """Extract archive into destination, refusing any member that could land outside it."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _checked_members(tar, archive, destination)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, members=members, filter="data")
            else:
                tar.extractall(destination, members=members)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:  # not our DataError
        # The data filter raises FilterError (a TarError) for members our own check let through.
        filter_error = getattr(tarfile, "FilterError", None)
        if filter_error is not None and isinstance(error, filter_error):
            raise DataError(
                f"archive {archive} holds an unsafe member ({error}); refusing to extract it, "
                f"the archive was removed"
            ) from error
        raise DataError(
            f"archive {archive} is corrupt or truncated ({error}); it was removed, "
            f"try the download again"
        ) from error


def _checked_members(
    tar: tarfile.TarFile, archive: Path, destination: Path
) -> Iterator[tarfile.TarInfo]:
    # Checking while iterating keeps extraction to one pass over the compressed stream, which
    # matters for the multi-gigabyte archives.
    base = os.path.realpath(destination)

    def inside(path: str) -> bool:
        resolved = os.path.realpath(path)
        return resolved == base or resolved.startswith(base + os.sep)

    def refuse(member: tarfile.TarInfo, reason: str) -> DataError:
        return DataError(
            f"archive {archive} holds an unsafe member {member.name!r} ({reason}); refusing to "
            f"extract it, the archive was removed"
        )

    for member in tar:
        name = member.name.replace("\\", "/")
        if name.startswith("/") or name[1:2] == ":":
            raise refuse(member, "absolute path")
        if ".." in PurePosixPath(name).parts:
            raise refuse(member, "path goes up with '..'")
        if not inside(os.path.join(base, name)):
            raise refuse(member, "path resolves outside the destination")
        if member.isdev() or member.isfifo():
            raise refuse(member, "device or pipe")
        if member.issym():
            link = member.linkname.replace("\\", "/")
            target = os.path.join(base, os.path.dirname(name), link)
            if PurePosixPath(link).is_absolute() or not inside(target):
                raise refuse(member, f"symbolic link to {member.linkname!r} outside the dataset")
        if member.islnk() and not inside(os.path.join(base, member.linkname)):
            raise refuse(member, f"hard link to {member.linkname!r} outside the dataset")
        yield member
