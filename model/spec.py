"""The generator spec: the input/output contract that travels with a generator's weights.

Everything downstream (translate, serve, export, evaluate) reads the spec and never guesses:
architecture and size, channels, color space, label palette, value range, training size,
padding multiple, and whether dropout/normalization run in train or eval mode at inference.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from model.atomic_files import write_text_atomic
from model.errors import SpecError

SPEC_VERSION = 1
SPEC_FILENAME = "spec.json"

InputKind = Literal["photo", "grayscale", "label_map"]
ColorSpace = Literal["rgb", "lab"]
NormKind = Literal["batch", "instance", "group", "demod", "none"]
UpsampleKind = Literal["transpose", "resize"]
HeadKind = Literal["tanh", "ab_bins"]
InferenceMode = Literal["eval", "sample", "train"]

INPUT_KINDS = ("photo", "grayscale", "label_map")
COLOR_SPACES = ("rgb", "lab")
NORM_KINDS = ("batch", "instance", "group", "demod", "none")
UPSAMPLE_KINDS = ("transpose", "resize")
HEAD_KINDS = ("tanh", "ab_bins")
INFERENCE_MODES = ("eval", "sample", "train")
DIRECTIONS = ("AtoB", "BtoA")


def _require_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(f"{name} must be one of {choices}, got {value!r}")


def _check_palette_tolerance(tolerance: object, input_kind: str) -> None:
    if isinstance(tolerance, bool) or not isinstance(tolerance, int):
        raise SpecError(f"palette_tolerance must be a whole number, got {tolerance!r}")
    if not 0 <= tolerance <= 255:
        raise SpecError(f"palette_tolerance must be in 0..255, got {tolerance}")
    if tolerance and input_kind != "label_map":
        raise SpecError(
            f"palette_tolerance ({tolerance}) applies to label maps only, "
            f"not to {input_kind} inputs"
        )


@dataclass(frozen=True)
class LabelClass:
    """One entry of a label palette: class index, human name, and display color."""

    id: int
    name: str
    color: tuple[int, int, int]

    def __post_init__(self) -> None:
        if not 0 <= self.id <= 255:
            raise SpecError(f"label class id {self.id} is outside 0..255")
        if len(self.color) != 3 or not all(0 <= c <= 255 for c in self.color):
            raise SpecError(f"label class {self.name!r} has invalid color {self.color!r}")
        object.__setattr__(self, "color", tuple(int(c) for c in self.color))

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> LabelClass:
        """A palette entry as JSON holds it: ``{"id": 0, "name": "sky", "color": [r, g, b]}``."""
        return cls(id=int(entry["id"]), name=str(entry["name"]), color=tuple(entry["color"]))


@dataclass(frozen=True)
class GeneratorArchitecture:
    """The U-Net's shape: enough to rebuild the network before loading its weights.

    ``norm`` is ``batch``, ``instance`` (without affine parameters, as in the paper), ``group``
    (group norm with affine parameters; see ``model.networks.group_count``) or ``none``.

    ``upsample`` is how the decoder doubles its maps: ``transpose`` (the paper's 4x4 stride-2
    transposed convolution) or ``resize`` (nearest-neighbour 2x, then a 3x3 convolution; see
    ``model.networks.ResizeConv``). Specs written before the option existed mean ``transpose``,
    and a ``transpose`` spec is written without the field.

    ``head`` is what turns the last layer into outputs: ``tanh`` (regression, the paper) or
    ``ab_bins`` (Lab colorization by classification: one logit per ab bin of side ``ab_grid``,
    decoded to ab by the annealed mean at ``temperature``; see ``model.color_bins``). A spec
    without a head means ``tanh``, and a ``tanh`` spec is written without these three fields.

    ``spade``: every decoder level's normalization loses its affine parameters and is followed
    by a per-pixel scale and shift computed from the generator's input (SPADE; see
    ``model.networks.SpatiallyAdaptiveNorm``): a one-hot label map, or the image itself for
    the other input kinds (a color-coded label image, say), never label ids. Not with the
    ``ab_bins`` head. A spec without the field means false, and one without SPADE is written
    without it.
    """

    name: str = "unet"
    num_downs: int = 8
    base_width: int = 64
    norm: NormKind = "batch"
    dropout: bool = True
    upsample: UpsampleKind = "transpose"
    head: HeadKind = "tanh"
    ab_grid: int = 10
    temperature: float = 0.38
    spade: bool = False

    def __post_init__(self) -> None:
        if self.name != "unet":
            raise SpecError(f"unknown generator architecture {self.name!r} (expected 'unet')")
        if not 1 <= self.num_downs <= 10:
            raise SpecError(f"num_downs must be between 1 and 10, got {self.num_downs}")
        if self.base_width < 1:
            raise SpecError(f"base_width must be positive, got {self.base_width}")
        _require_choice("norm", self.norm, NORM_KINDS)
        _require_choice("upsample", self.upsample, UPSAMPLE_KINDS)
        _require_choice("head", self.head, HEAD_KINDS)
        if not 1 <= self.ab_grid <= 55:
            raise SpecError(f"ab_grid must be between 1 and 55 (Lab units), got {self.ab_grid}")
        if not 0 < self.temperature <= 1:
            raise SpecError(f"temperature must be in (0, 1], got {self.temperature}")
        if not isinstance(self.spade, bool):
            raise SpecError(f"spade must be true or false, got {self.spade!r}")
        if self.spade and self.norm == "none":
            raise SpecError("spade modulates normalized features: it needs a norm, not 'none'")
        if self.spade and self.head != "tanh":
            raise SpecError(f"spade is built for the tanh head, not {self.head!r}")


@dataclass(frozen=True)
class GeneratorSpec:
    """What a generator expects as input and produces as output.

    - ``input_kind``: ``photo`` (RGB image), ``grayscale`` (one channel, or L of Lab when
      ``color_space`` is ``lab``) or ``label_map`` (class indices through ``palette``).
    - ``color_space``: ``rgb``, or ``lab`` for colorization (L in, ab out, recombined with L).
    - ``one_hot``: label maps enter the network as one channel per palette class.
    - ``palette_tolerance``: how far (per channel, 0..255) a color-coded label map's colors
      may stray from the palette and still count as its nearest color, as in training (JPEG-ed
      maps drift; 255 takes the nearest color whatever it is). A spec without it means 0,
      and one at 0 is written without it.
    - ``value_range``: the range of image tensors at the network's boundary.
    - ``train_size``: the crop size the generator was trained on.
    - ``pad_multiple``: inputs are padded (by reflection) to a multiple of this and cropped back.
    - ``inference_mode``: how batch norm and dropout behave at inference. ``eval`` uses the
      running statistics gathered in training and no dropout; ``sample`` normalizes each image
      by its own statistics (batch norm's statistics at batch size 1, as in training at batch 1)
      without dropout; ``train`` adds the dropout to that: the pix2pix paper's test time.
    """

    architecture: GeneratorArchitecture
    in_channels: int
    out_channels: int
    input_kind: InputKind = "photo"
    color_space: ColorSpace = "rgb"
    palette: tuple[LabelClass, ...] = ()
    one_hot: bool = False
    palette_tolerance: int = 0
    value_range: tuple[float, float] = (-1.0, 1.0)
    train_size: int = 256
    pad_multiple: int = 256
    inference_mode: InferenceMode = "eval"
    task: str = ""
    direction: str = "AtoB"
    version: int = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_choice("input_kind", self.input_kind, INPUT_KINDS)
        _require_choice("color_space", self.color_space, COLOR_SPACES)
        _require_choice("inference_mode", self.inference_mode, INFERENCE_MODES)
        if self.input_kind == "label_map":
            if not self.palette:
                raise SpecError("a label_map generator needs a palette")
            ids = [c.id for c in self.palette]
            if len(set(ids)) != len(ids):
                raise SpecError("palette class ids must be unique")
            colors = [c.color for c in self.palette]
            if len(set(colors)) != len(colors):
                raise SpecError("palette colors must be unique")
            expected = len(self.palette) if self.one_hot else 1
            if self.in_channels != expected:
                raise SpecError(
                    f"a label_map generator with {len(self.palette)} classes and "
                    f"one_hot={self.one_hot} takes {expected} input channels, "
                    f"not {self.in_channels}"
                )
        _check_palette_tolerance(self.palette_tolerance, self.input_kind)
        if self.architecture.spade and self.input_kind == "label_map" and not self.one_hot:
            raise SpecError("a spade generator on label maps needs them one-hot, not as ids")
        if self.color_space == "lab":
            if self.input_kind != "grayscale" or self.in_channels != 1 or self.out_channels != 2:
                raise SpecError("a lab generator takes grayscale L (1 channel) and returns ab (2)")
        elif self.architecture.head == "ab_bins":
            raise SpecError("the ab_bins head decodes to Lab ab: it needs color_space 'lab'")
        elif self.out_channels not in (1, 3):
            raise SpecError(f"an rgb generator returns 1 or 3 channels, not {self.out_channels}")
        if self.input_kind == "photo" and self.in_channels not in (1, 3):
            raise SpecError(f"a photo generator takes 1 or 3 channels, not {self.in_channels}")
        if self.input_kind == "grayscale" and self.in_channels != 1:
            raise SpecError(f"a grayscale generator takes 1 channel, not {self.in_channels}")
        if self.pad_multiple < 1:
            raise SpecError(f"pad_multiple must be positive, got {self.pad_multiple}")
        _require_choice("direction", self.direction, DIRECTIONS)

    # -- serialization ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["palette"] = [
            {"id": c.id, "name": c.name, "color": list(c.color)} for c in self.palette
        ]
        data["value_range"] = list(self.value_range)
        # An option at its default is left out, as specs were before it existed (and as they
        # are read back).
        if self.architecture.upsample == "transpose":
            del data["architecture"]["upsample"]
        if self.architecture.head == "tanh":
            for key in ("head", "ab_grid", "temperature"):
                del data["architecture"][key]
        if not self.architecture.spade:
            del data["architecture"]["spade"]
        if not self.palette_tolerance:
            del data["palette_tolerance"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorSpec:
        if not isinstance(data, dict):
            raise SpecError("a spec must be a JSON object")
        data = dict(data)
        version = data.get("version", SPEC_VERSION)
        if version > SPEC_VERSION:
            raise SpecError(
                f"spec version {version} is newer than this program understands ({SPEC_VERSION})"
            )
        for key in ("architecture", "in_channels", "out_channels"):
            if key not in data:
                raise SpecError(f"spec is missing the field {key!r}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise SpecError(f"spec has unknown fields: {', '.join(unknown)}")
        try:
            data["architecture"] = GeneratorArchitecture(**data["architecture"])
            data["palette"] = tuple(LabelClass.from_dict(c) for c in data.get("palette", ()))
        except (TypeError, KeyError) as error:
            raise SpecError(f"spec field is malformed: {error}") from error
        if "value_range" in data:
            data["value_range"] = tuple(float(v) for v in data["value_range"])
        try:
            return cls(**data)
        except TypeError as error:
            raise SpecError(f"spec is malformed: {error}") from error

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GeneratorSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpecError(f"spec is not valid JSON: {error}") from error
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the spec atomically; ``path`` is a file or a directory (gets spec.json)."""
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILENAME
        write_text_atomic(path, self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> GeneratorSpec:
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILENAME
        if not path.is_file():
            raise SpecError(f"{path}: no spec file here")
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except SpecError as error:
            raise SpecError(f"{path}: {error}") from error

    def with_temperature(self, temperature: float) -> GeneratorSpec:
        """This spec decoding its ab bins at ``temperature`` (lower: more colorful, higher:
        closer to the mean color, more accurate); only the ``ab_bins`` head has one."""
        if self.architecture.head != "ab_bins":
            raise SpecError(
                "a decoding temperature applies to colorizers with the ab_bins head "
                f"(train.color_loss = 'classification'); this one's head is "
                f"{self.architecture.head!r}"
            )
        architecture = dataclasses.replace(self.architecture, temperature=float(temperature))
        return dataclasses.replace(self, architecture=architecture)

    # -- derived facts ---------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.palette)
