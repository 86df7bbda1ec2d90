"""Paired datasets: find A/B pairs on disk, check them, decode, augment, and encode to tensors.

Three layouts, each split into ``train/``, ``val/`` and ``test/`` folders under the root:

- ``aligned``: every file holds A and B side by side (the standard pix2pix datasets);
- ``folders``: ``<split>/A/`` and ``<split>/B/`` paired by file stem;
- ``colorization``: ``<split>/`` holds color photos; A is their lightness, B their color.

Every problem is reported with the file it concerns; nothing is skipped silently.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from model.processing import (
    InputError,
    encode_input,
    encode_target,
    list_images,
    prepare_input,
    prepare_target,
)
from model.spec import GeneratorArchitecture, GeneratorSpec, LabelClass, SpecError
from training.config import Config, DataConfig
from training.data.augment import build_transform
from training.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairFiles:
    """Where one pair lives: two files, or one aligned/colorization file (b_path is None)."""

    a_path: Path
    b_path: Path | None = None


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise DataError(
                f"{folder}: two files share the stem {path.stem!r} "
                f"({stems[path.stem].name} and {path.name}); pairing would be ambiguous"
            )
        stems[path.stem] = path
    return stems


def discover_pairs(config: DataConfig, split: str) -> list[PairFiles]:
    """All pairs of a split, checked for completeness; raises DataError otherwise."""
    root = Path(config.root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: split folder not found (expected {root}/{{train,val,test}})")
    if config.layout == "folders":
        a_dir, b_dir = split_dir / "A", split_dir / "B"
        for folder in (a_dir, b_dir):
            if not folder.is_dir():
                raise DataError(f"{folder}: folder not found (the folders layout needs A/ and B/)")
        a_files = _by_stem(list_images(a_dir), a_dir)
        b_files = _by_stem(list_images(b_dir), b_dir)
        only_a = sorted(set(a_files) - set(b_files))
        only_b = sorted(set(b_files) - set(a_files))
        if only_a or only_b:
            lines = [f"{split_dir}: unpaired files"]
            if only_a:
                lines.append(f"  in A/ without a B: {', '.join(a_files[s].name for s in only_a)}")
            if only_b:
                lines.append(f"  in B/ without an A: {', '.join(b_files[s].name for s in only_b)}")
            raise DataError("\n".join(lines))
        if config.direction == "BtoA":
            a_files, b_files = b_files, a_files
        pairs = [PairFiles(a_files[s], b_files[s]) for s in sorted(a_files)]
    else:
        pairs = [PairFiles(path) for path in list_images(split_dir)]
    if not pairs:
        raise DataError(f"{split_dir}: no images in this split")
    if config.max_images:
        pairs = pairs[: config.max_images]
    return pairs


def check_sizes(pairs: list[PairFiles], config: DataConfig) -> None:
    """Read image headers only and report every size problem in one error."""
    problems = []
    for pair in pairs:
        try:
            a_size = _header_size(pair.a_path)
            b_size = _header_size(pair.b_path) if pair.b_path else None
        except DataError as error:
            problems.append(str(error))
            continue
        if config.layout == "aligned":
            width, height = a_size
            if width % 2:
                problems.append(f"{pair.a_path}: aligned image width {width} is odd")
            elif config.aligned_square and width != 2 * height:
                problems.append(
                    f"{pair.a_path}: aligned image is {width}x{height}, expected width = 2 x "
                    f"height ({2 * height}) for two square halves "
                    "(set data.aligned_square = false for non-square halves)"
                )
        elif b_size is not None and a_size != b_size:
            problems.append(
                f"pair sizes differ: {pair.a_path} is {a_size[0]}x{a_size[1]}, "
                f"{pair.b_path} is {b_size[0]}x{b_size[1]}"
            )
    if problems:
        shown = problems[:50]
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise DataError("\n  ".join(["dataset check failed:", *shown]) + more)


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from error


def read_image(path: Path) -> Image.Image:
    """Fully decode an image, so truncated files fail here with their name."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: cannot decode image ({error})") from error


def load_palette(config: DataConfig) -> tuple[LabelClass, ...]:
    # A palette inside the data root (as datasets ship it), else a path from the working
    # directory: configs/facades-palette.json serves a downloaded or a shared facades folder.
    given = Path(config.palette)
    path = given if given.is_absolute() else Path(config.root) / given
    if not path.is_file() and not given.is_absolute() and given.is_file():
        path = given
    if not path.is_file():
        where = "" if given.is_absolute() else f" (nor {given} from the working directory)"
        raise DataError(f"{path}: palette file not found{where}; label_map inputs need one")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(entries, dict):
            entries = entries.get("classes", [])
        palette = tuple(LabelClass.from_dict(entry) for entry in entries)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{path}: invalid palette ({error}); expected a JSON list of "
            '{"id": 0, "name": "sky", "color": [r, g, b]}'
        ) from error
    if not palette:
        raise DataError(f"{path}: palette is empty")
    return palette


def make_spec(config: Config) -> GeneratorSpec:
    """The generator spec implied by a run's data and generator config."""
    data, generator = config.data, config.generator
    palette: tuple[LabelClass, ...] = ()
    one_hot = False
    palette_tolerance = 0
    color_space = "rgb"
    if data.input_kind == "label_map":
        palette = load_palette(data)
        one_hot = data.one_hot
        # Recorded so that translate and the service read label colors as training did.
        palette_tolerance = data.palette_tolerance
        in_channels = len(palette) if one_hot else 1
        out_channels = 3
    elif data.input_kind == "grayscale":
        in_channels = 1
        color_space = data.color_space if data.layout == "colorization" else "rgb"
        out_channels = 2 if color_space == "lab" else 3
    else:
        in_channels = out_channels = 3
    try:
        return GeneratorSpec(
            architecture=GeneratorArchitecture(
                num_downs=generator.num_downs,
                base_width=generator.base_width,
                norm=generator.norm,
                dropout=generator.dropout,
                upsample=generator.upsample,  # type: ignore[arg-type]
                head="ab_bins" if config.train.color_loss == "classification" else "tanh",
                spade=generator.spade,
            ),
            in_channels=in_channels,
            out_channels=out_channels,
            input_kind=data.input_kind,  # type: ignore[arg-type]
            color_space=color_space,  # type: ignore[arg-type]
            palette=palette,
            one_hot=one_hot,
            palette_tolerance=palette_tolerance,
            train_size=data.crop_size,
            pad_multiple=2**generator.num_downs,
            inference_mode=generator.inference_mode,  # type: ignore[arg-type]
            task=config.task or config.name,
            direction=data.direction,
            extra={"description": config.description} if config.description else {},
        )
    except SpecError as error:
        raise DataError(f"config does not describe a usable generator: {error}") from error


class PairedDataset(Dataset):
    """Decoded, augmented and encoded pairs of one split.

    Augmentation is seeded per (seed, epoch, index), so a run is reproducible whatever the
    number of workers, and a resumed run sees exactly the images it would have seen.
    """

    def __init__(
        self, config: DataConfig, split: str, spec: GeneratorSpec, train: bool, seed: int = 0
    ):
        self.config = config
        self.split = split
        self.spec = spec
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.pairs = discover_pairs(config, split)
        check_sizes(self.pairs, config)
        self.transform = build_transform(
            config, train=train, label_input=spec.input_kind == "label_map"
        )
        logger.info("%s split: %d pairs from %s", split, len(self.pairs), config.root)

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (A, B) arrays of one pair, before augmentation."""
        pair = self.pairs[index]
        first = read_image(pair.a_path)
        if self.config.layout == "aligned":
            width, height = first.size
            half = width // 2
            left = first.crop((0, 0, half, height))
            right = first.crop((half, 0, width, height))
            a_image, b_image = (left, right) if self.config.direction == "AtoB" else (right, left)
        elif self.config.layout == "colorization":
            a_image = b_image = first
        else:
            a_image, b_image = first, read_image(pair.b_path)  # type: ignore[arg-type]
        try:
            # As serving reads an upload: EXIF rotation applied to label maps as to photos.
            a_array = prepare_input(a_image, self.spec, self.config.palette_tolerance)
            b_array = prepare_target(b_image, self.spec)
        except InputError as error:
            raise DataError(f"{pair.a_path}: {error}") from error
        return a_array, b_array

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (A, B) arrays of one pair after augmentation (or the val/test resize)."""
        a_array, b_array = self.load_arrays(index)
        self.transform.set_random_seed(self._sample_seed(index))
        if self.config.layout == "colorization":
            b_array = self.transform(image=b_array)["image"]
            # A as serving reads the photo: RGB for Lab models (which encode its L), else gray.
            return prepare_input(Image.fromarray(b_array), self.spec), b_array
        if self.spec.input_kind == "label_map":
            out = self.transform(image=b_array, mask=a_array)
            return out["mask"], out["image"]
        out = self.transform(image=a_array, target=b_array)
        return out["image"], out["target"]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        a_array, b_array = self.arrays(index)
        return {
            "A": torch.from_numpy(encode_input(a_array, self.spec)),
            "B": torch.from_numpy(encode_target(b_array, self.spec)),
            "index": index,
        }

    def _sample_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])


def data_config_for(
    spec: GeneratorSpec, root: str | Path, split: str, palette_tolerance: int | None = None
) -> DataConfig:
    """A DataConfig that reads ``root`` the way the model was trained, at its training size.

    The layout is read from the folder: ``<split>/A`` and ``<split>/B`` mean folders; photos
    directly in ``<split>/`` mean colorization for grayscale models and aligned pairs otherwise.
    ``palette_tolerance`` maps JPEG-ed label colors to the nearest palette color within it
    (None: the spec's, the tolerance the model was trained with).
    """
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: split folder not found")
    if (split_dir / "A").is_dir():
        layout = "folders"
    elif spec.input_kind == "grayscale":
        layout = "colorization"
    else:
        layout = "aligned"
    config = DataConfig(
        root=str(root),
        layout=layout,
        direction=spec.direction,
        input_kind=spec.input_kind,
        one_hot=spec.one_hot,
        palette_tolerance=(
            spec.palette_tolerance if palette_tolerance is None else palette_tolerance
        ),
        color_space=spec.color_space,
        load_size=spec.train_size,
        crop_size=spec.train_size,
        num_workers=0,
        flip=False,
    )
    config.validate()
    return config
