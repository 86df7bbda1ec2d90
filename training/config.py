"""Run configuration: typed dataclasses loaded from TOML and overridden by command-line flags."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from model.spec import (
    COLOR_SPACES,
    DIRECTIONS,
    INFERENCE_MODES,
    INPUT_KINDS,
    NORM_KINDS,
    UPSAMPLE_KINDS,
)


class ConfigError(ValueError):
    """A configuration file or flag is invalid; the message names the key and the problem."""


@dataclass
class DataConfig:
    root: str = "data/synth-labels"
    # aligned: A|B side by side in one file; folders: <split>/A and <split>/B paired by stem;
    # colorization: <split>/ of color photos.
    layout: str = "folders"
    direction: str = "AtoB"
    # What A is: photo, grayscale or label_map.
    input_kind: str = "photo"
    # label_map only: JSON file (relative to root) listing {"id", "name", "color"}.
    palette: str = "palette.json"
    one_hot: bool = True
    # Max per-channel difference when mapping color-coded label maps to palette colors.
    palette_tolerance: int = 0
    # colorization only: "lab" (L in, ab out) or "rgb" (gray in, RGB out).
    color_space: str = "lab"
    # resize_and_crop: resize to load_size then random crop_size; crop: random crop only;
    # resize: resize to crop_size (no crop).
    preprocess: str = "resize_and_crop"
    load_size: int = 286
    crop_size: int = 256
    flip: bool = True
    # Aligned files must be exactly twice as wide as tall (square halves).
    aligned_square: bool = True
    num_workers: int = 2
    max_images: int = 0  # 0 = all

    def validate(self) -> None:
        _choice("data.layout", self.layout, ("aligned", "folders", "colorization"))
        _choice("data.direction", self.direction, DIRECTIONS)
        _choice("data.input_kind", self.input_kind, INPUT_KINDS)
        _choice("data.color_space", self.color_space, COLOR_SPACES)
        _choice("data.preprocess", self.preprocess, ("resize_and_crop", "crop", "resize"))
        if self.layout == "colorization" and self.input_kind != "grayscale":
            raise ConfigError("data.layout = 'colorization' needs data.input_kind = 'grayscale'")
        if self.crop_size < 1 or self.load_size < self.crop_size:
            raise ConfigError(
                f"data.load_size ({self.load_size}) must be >= "
                f"data.crop_size ({self.crop_size}) > 0"
            )
        _positive("data.num_workers", self.num_workers, allow_zero=True)


@dataclass
class GeneratorConfig:
    num_downs: int = 8
    base_width: int = 64
    # batch | instance (no affine, the paper's) | group (affine) | demod (each conv's filters
    # scaled to a fixed norm instead of normalizing activations: StyleGAN2's demodulation) | none.
    norm: str = "batch"
    dropout: bool = True
    # transpose: the paper's 4x4 stride-2 transposed convs; resize: nearest 2x + 3x3 conv,
    # which leaves no checkerboard grid.
    upsample: str = "transpose"
    # Batch norm and dropout at inference. eval: running statistics, no dropout; sample: each
    # image normalized by its own statistics, as in training at batch 1, no dropout; train:
    # sample plus dropout, the pix2pix paper's test time.
    inference_mode: str = "eval"
    # The input (a one-hot label map, or the image: a color-coded label image, say) sets a
    # per-pixel scale and shift after every decoder norm (SPADE, Park et al. 2019).
    spade: bool = False

    @property
    def per_sample_statistics(self) -> bool:
        """Batch norm normalizes each image by its own statistics at inference."""
        return self.norm == "batch" and self.inference_mode != "eval"

    def validate(self) -> None:
        _choice("generator.norm", self.norm, NORM_KINDS)
        _choice("generator.upsample", self.upsample, UPSAMPLE_KINDS)
        _choice("generator.inference_mode", self.inference_mode, INFERENCE_MODES)
        if not 1 <= self.num_downs <= 10:
            raise ConfigError(f"generator.num_downs must be 1..10, got {self.num_downs}")
        _positive("generator.base_width", self.base_width)
        if self.spade and self.norm == "none":
            raise ConfigError(
                "generator.spade = true modulates normalized features: it needs "
                "generator.norm = 'batch', 'instance', 'group' or 'demod', not 'none'"
            )


@dataclass
class DiscriminatorConfig:
    n_layers: int = 3
    base_width: int = 64
    norm: str = "batch"
    # pix2pixHD's multi-scale PatchGAN: this many discriminators of the shape above, each with
    # its own weights, the k-th judging the pair average-pooled k times by 2 (so at 2 scales a
    # 70x70 patch also covers 140x140 pixels); the adversarial loss averages the scales.
    num_scales: int = 1
    # Spectral normalization (Miyato et al. 2018) of every convolution in D: each divided by
    # its largest singular value, so D stays 1-Lipschitz per layer.
    spectral_norm: bool = False
    # Width of the segmenting discriminator that train.lambda_semantic switches on (a U-Net of
    # 4 levels, widths x1, 2, 4, 8, 8).
    semantic_width: int = 16

    def validate(self) -> None:
        _choice("discriminator.norm", self.norm, NORM_KINDS)
        if not 0 <= self.n_layers <= 8:
            raise ConfigError(f"discriminator.n_layers must be 0..8, got {self.n_layers}")
        _positive("discriminator.base_width", self.base_width)
        _positive("discriminator.num_scales", self.num_scales)
        _positive("discriminator.semantic_width", self.semantic_width)


D_AUGMENTS = ("color", "translation", "cutout")
# What train.trackers may name (training.loop.tracking implements each).
TRACKERS = ("tensorboard", "mlflow", "wandb")
# The semantic discriminator halves the image this many times (the trainer builds it so), so
# the crop size must be a multiple of 2 ** SEMANTIC_LEVELS.
SEMANTIC_LEVELS = 4


@dataclass
class TrainConfig:
    batch_size: int = 1
    epochs: int = 100  # epochs at the initial learning rate
    epochs_decay: int = 100  # epochs of linear decay to zero afterwards
    max_steps: int = 0  # stop after this many steps (0 = run all epochs)
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    gan_mode: str = "vanilla"  # vanilla | lsgan | hinge
    lambda_l1: float = 100.0
    lambda_gan: float = 1.0  # 0 turns the adversarial term off (L1-only regression)
    d_steps: int = 1  # discriminator updates per generator update
    pool_size: int = 0  # history of generated pairs shown to D (0 = off, as in pix2pix)
    # D's own learning rate (TTUR, Heusel et al. 2017; 0 = train.lr); the schedule decays it
    # like G's.
    lr_d: float = 0.0
    # pix2pixHD's feature matching: G also matches D's activations (after every LeakyReLU) on
    # real pairs, in L1, weighted 4 / layers per scale and averaged over scales (0 = off;
    # pix2pixHD uses 10). Costs one more D forward on the real pair per G step.
    lambda_feat: float = 0.0
    # Focal frequency loss (Jiang et al. 2021): G's output and B compared as 2-D spectra, each
    # frequency weighted by how wrong it is, so the high frequencies L1 blurs away weigh in
    # (0 = off; the paper's weight is 1).
    lambda_frequency: float = 0.0
    # The L1 weight falls with the learning rate over the decay epochs, by this share of it
    # (0 = constant; 0.9 takes lambda_l1 100 to 10): L1 holds the structure early and pulls
    # towards the blurry mean late.
    l1_decay: float = 0.0
    # L1 compares G's output and B as the means of l1_pool x l1_pool pixel blocks (1 = pixel by
    # pixel): it holds colors and layout down to that scale and leaves the texture inside a
    # block to the discriminator and feature matching (frequency separation, Fritsche et al.
    # 2019). G_L1 logs the blocks' L1; validation's L1 stays per pixel.
    l1_pool: int = 1
    # Lazy R1 penalty (Mescheder et al. 2018, as in StyleGAN2): every r1_every D steps,
    # r1_gamma / 2 * E ||grad_B D(A, B)||^2 on real pairs, times r1_every, joins D's loss
    # (0 = off). D(A, B) is the mean patch logit; multi-scale D sums the scales' penalties.
    r1_gamma: float = 0.0
    r1_every: int = 16
    # OASIS (Schoenfeld et al. 2021), for one-hot label maps: a second discriminator segments
    # the image alone into the map's classes + "fake" (class-balanced cross-entropy), and G's
    # loss gains lambda_semantic x its cross-entropy on G's output against the map (0 = off).
    lambda_semantic: float = 0.0
    # Comma-separated class names of the palette whose pixels the semantic discriminator's
    # terms leave out (empty = none): catch-alls such as facades' "background" (sky, trees,
    # the black fill of a rectified photo).
    semantic_ignore: str = ""
    # DiffAugment (Zhao et al. 2020): the pairs D judges, real and generated, go through random
    # differentiable transforms, a comma-separated choice of "color", "translation" and
    # "cutout" (empty = off), e.g. "translation,cutout".
    d_augment: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "fp32"  # fp32 | bf16 | fp16
    channels_last: bool = True
    compile: bool = False
    # Distributed runs only (torchrun): batch norm statistics over all processes (CUDA only).
    sync_batchnorm: bool = False
    deterministic: bool = False
    log_every: int = 50
    sample_every: int = 500
    save_every: int = 1000  # steps between refreshes of checkpoints/latest
    save_epochs: int = 5  # keep a checkpoint every N epochs (0 = only latest)
    val_images: int = 8  # pairs in each sample grid, spread evenly over the val split
    early_stop_patience: int = 0  # validations without val_l1 improving before a stop (0 = off)
    early_stop_min_delta: float = 0.0  # smaller val_l1 improvements do not count
    # Decay of an exponential moving average of the generator's weights (0 = off, e.g. 0.999);
    # the average is what validation, samples, export and serving use.
    ema_decay: float = 0.0
    # Batch norm at inference (inference_mode "eval") with statistics measured on the served
    # generator itself: before every validation and checkpoint, each norm gets its input's mean
    # and variance over this many training pairs (spread over the split, whole, dropout off),
    # the norms before it already set (0 = off: the running average of the last training
    # batches, taken with dropout on and, with an EMA, from the raw generator's weights).
    recalibrate_bn: int = 0
    # Colorization with data.color_space = "lab" only. l1: regress ab (the paper), which fades
    # rare colors towards the mean; classification: predict ab bins under a rebalanced
    # cross-entropy (Zhang et al. 2016), weighted by lambda_classification. lambda_l1 and
    # lambda_gan then act on the decoded ab.
    color_loss: str = "l1"
    lambda_classification: float = 1.0
    # Where the curves and sample grids go as the run goes, besides metrics.jsonl: any of
    # "tensorboard" (runs/<name>/tensorboard), "mlflow" and "wandb" (the extras pix2pix[mlflow]
    # and pix2pix[wandb]); [] = none. On the command line: --train.trackers tensorboard,mlflow.
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])

    @property
    def d_augment_policy(self) -> tuple[str, ...]:
        return _names(self.d_augment)

    @property
    def semantic_ignore_names(self) -> tuple[str, ...]:
        return _names(self.semantic_ignore)

    def validate(self) -> None:
        _choice("train.gan_mode", self.gan_mode, ("vanilla", "lsgan", "hinge"))
        _choice("train.precision", self.precision, ("fp32", "bf16", "fp16"))
        _choice("train.color_loss", self.color_loss, ("l1", "classification"))
        above_zero = ("lr", "batch_size", "d_steps", "r1_every", "log_every", "sample_every")
        above_zero += ("l1_pool",)
        for key in (*above_zero, "save_every", "val_images"):
            _positive(f"train.{key}", getattr(self, key))
        counts = ("epochs", "epochs_decay", "max_steps", "early_stop_patience", "recalibrate_bn")
        weights = ("lr_d", "lambda_l1", "lambda_gan", "lambda_feat", "r1_gamma", "lambda_semantic")
        weights += ("lambda_frequency", "lambda_classification")
        for key in (*counts, *weights, "early_stop_min_delta"):
            _positive(f"train.{key}", getattr(self, key), allow_zero=True)
        for policy in self.d_augment_policy:
            _choice("train.d_augment", policy, D_AUGMENTS)
        for tracker in self.trackers:
            if tracker not in TRACKERS:
                raise ConfigError(
                    f"train.trackers: unknown tracker {tracker!r}; known: {', '.join(TRACKERS)} "
                    "(an empty list, or --train.trackers '', turns tracking off)"
                )
        if len(set(self.trackers)) < len(self.trackers):
            raise ConfigError(f"train.trackers names a tracker twice: {self.trackers}")
        if self.epochs + self.epochs_decay == 0 and self.max_steps == 0:
            raise ConfigError("train.epochs + train.epochs_decay is 0: nothing to train")
        for key in ("lambda_feat", "r1_gamma", "lambda_semantic"):
            if getattr(self, key) > 0 and self.lambda_gan == 0:
                raise ConfigError(
                    f"train.{key} acts through the discriminator, which train.lambda_gan = 0 "
                    f"leaves untrained: set train.lambda_gan > 0 or train.{key} = 0"
                )
        if not 0 <= self.l1_decay <= 1:
            raise ConfigError(
                f"train.l1_decay is the share of lambda_l1 the decay takes away, from 0 "
                f"(constant) to 1 (down to 0); got {self.l1_decay}"
            )
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(
                f"train.ema_decay must be 0 (off) or between 0 and 1, e.g. 0.999; "
                f"got {self.ema_decay}"
            )


def _names(text: str) -> tuple[str, ...]:
    """The parts of a comma-separated list, stripped, empty ones dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    runs_dir: str = "runs"
    task: str = ""
    # What the model was trained on and how, in a sentence: it travels in the spec (extra) to
    # /v1/models and the web page.
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> Config:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"name {self.name!r} cannot be used as a run directory name")
        self.data.validate()
        self.generator.validate()
        self.discriminator.validate()
        self.train.validate()
        if self.data.crop_size % (2**self.generator.num_downs):
            raise ConfigError(
                f"data.crop_size ({self.data.crop_size}) must be a multiple of "
                f"2**generator.num_downs ({2**self.generator.num_downs})"
            )
        if self.data.crop_size % self.train.l1_pool:
            raise ConfigError(
                f"train.l1_pool ({self.train.l1_pool}) must divide data.crop_size "
                f"({self.data.crop_size}): L1 compares whole blocks of that side"
            )
        if self.generator.spade and self.data.input_kind == "label_map" and not self.data.one_hot:
            raise ConfigError(
                "generator.spade = true modulates with the label map one-hot: it needs "
                "data.one_hot = true with data.input_kind = 'label_map'"
            )
        lab = self.data.layout == "colorization" and self.data.color_space == "lab"
        if self.train.color_loss == "classification" and not lab:
            raise ConfigError(
                "train.color_loss = 'classification' predicts Lab ab bins: it needs "
                "data.layout = 'colorization' with data.color_space = 'lab'"
            )
        if self.train.color_loss == "classification" and self.generator.spade:
            raise ConfigError(
                "generator.spade = true is built for the regression head, not for "
                "train.color_loss = 'classification'"
            )
        if self.train.semantic_ignore_names and self.train.lambda_semantic == 0:
            raise ConfigError(
                "train.semantic_ignore leaves classes out of the semantic discriminator, which "
                "train.lambda_semantic = 0 turns off: set train.lambda_semantic > 0"
            )
        if self.train.lambda_semantic > 0:
            if self.data.input_kind != "label_map" or not self.data.one_hot:
                raise ConfigError(
                    "train.lambda_semantic > 0 teaches a discriminator the label map's classes: "
                    "it needs data.input_kind = 'label_map' with data.one_hot = true"
                )
            if self.data.crop_size % 2**SEMANTIC_LEVELS:
                raise ConfigError(
                    f"train.lambda_semantic > 0: data.crop_size ({self.data.crop_size}) must be a "
                    f"multiple of {2**SEMANTIC_LEVELS} (the semantic discriminator's "
                    f"{SEMANTIC_LEVELS} levels)"
                )
        if self.train.recalibrate_bn and self.generator.norm != "batch":
            raise ConfigError(
                f"train.recalibrate_bn re-estimates batch-norm statistics, and generator.norm = "
                f"{self.generator.norm!r} has none: set it to 0"
            )
        if self.train.recalibrate_bn and self.generator.per_sample_statistics:
            raise ConfigError(
                "train.recalibrate_bn re-estimates the running statistics, which "
                f"generator.inference_mode = {self.generator.inference_mode!r} does not use (it "
                "normalizes each image by its own): set it to 0, or inference_mode = 'eval'"
            )
        if self.train.sync_batchnorm and self.generator.per_sample_statistics:
            raise ConfigError(
                "train.sync_batchnorm normalizes over every GPU's batch, which "
                f"generator.inference_mode = {self.generator.inference_mode!r} (each image by its "
                "own statistics at inference) would not match: use inference_mode = 'eval'"
            )
        if self.discriminator.num_scales > 1:
            # Each scale pools by 2, rounding up.
            coarsest = -(-self.data.crop_size // 2 ** (self.discriminator.num_scales - 1))
            n_layers = self.discriminator.n_layers
            if n_layers and coarsest < 3 * 2**n_layers:
                raise ConfigError(
                    f"discriminator.num_scales = {self.discriminator.num_scales}: the coarsest "
                    f"scale sees {coarsest} px of data.crop_size = {self.data.crop_size}, fewer "
                    f"than the {3 * 2**n_layers} px that discriminator.n_layers = {n_layers} "
                    "needs; use fewer scales or layers"
                )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


SECTIONS = ("data", "generator", "discriminator", "train")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    """A finite number above 0 (or at least 0): NaN and infinity fail too."""
    if not 0 <= value < float("inf") or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Check a TOML value, or convert a command-line string, to the field's type."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if typing.get_origin(kind) is list:
        return _coerce_list(key, value, typing.get_args(kind)[0])
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if kind is bool:
                lowered = text.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return lowered in ("true", "1", "yes")
            if kind in (int, float):
                return kind(text)
        except ValueError:
            raise ConfigError(f"{key} expects {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key} expects {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _coerce_list(key: str, value: Any, item_kind: type) -> list:
    """A TOML array, or a comma-separated command-line string (an empty one: the empty list)."""
    if isinstance(value, str):
        value = list(_names(value))
    if not isinstance(value, list | tuple):
        raise ConfigError(
            f"{key} expects a list of {item_kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return [_coerce(f"{key}[{index}]", item, item_kind) for index, item in enumerate(value)]


def _apply(target: Any, values: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(target))
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown config key {full!r} (known here: {known})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} must be a table [{full}]")
            _apply(current, value, prefix=f"{full}.")
        else:
            setattr(target, key, _coerce(full, value, hints[key]))


def load_config(path: str | Path | None = None, overrides: dict[str, str] | None = None) -> Config:
    """Defaults, then the TOML file, then ``section.key`` overrides; validated."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: invalid TOML: {error}") from error
        try:
            _apply(config, values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from error
    for key, value in (overrides or {}).items():
        set_value(config, key, value)
    return config.validate()


def resolve_key(config: Config, key: str) -> str:
    """``batch_size`` -> ``train.batch_size`` when unambiguous; dotted keys pass through."""
    key = key.replace("-", "_")
    if "." in key or key in typing.get_type_hints(Config):
        return key
    matches = [
        f"{section}.{key}"
        for section in SECTIONS
        if key in typing.get_type_hints(type(getattr(config, section)))
    ]
    if not matches:
        raise ConfigError(f"unknown option --{key}")
    if len(matches) > 1:
        raise ConfigError(f"option --{key} is ambiguous: use one of --{', --'.join(matches)}")
    return matches[0]


def set_value(config: Config, key: str, value: str) -> None:
    dotted = resolve_key(config, key)
    *sections, name = dotted.split(".")
    values: dict[str, Any] = {name: value}
    for section in reversed(sections):
        values = {section: values}
    _apply(config, values)


def config_from_dict(values: dict[str, Any]) -> Config:
    config = Config()
    _apply(config, values)
    return config.validate()
