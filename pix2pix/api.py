"""The Python API behind ``import pix2pix``: load, train, export and evaluate, as the verbs do.

Every function imports its heavy modules when it is called, so ``import pix2pix`` costs no
torch, and a translator for an ONNX model never imports it at all. The command line calls
the same functions, so both raise the same errors for the same mistakes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.export import ExportResult
    from model.translate import Translator
    from training.config import Config
    from training.evaluation.evaluate import Evaluation


def load(
    path: str | Path,
    runtime: str = "auto",
    device: str = "auto",
    *,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    batch_size: int = 8,
    inference_mode: str | None = None,
) -> Translator:
    """A translator for a model folder, run directory or checkpoint.

    ``runtime`` is ``auto`` (time what the folder and this install can run, keep the fastest)
    or one of ``model.export_formats.RUNTIMES`` (``onnx``, ``torch``, ``torch-bf16``...);
    ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. A folder holding only
    ``generator.onnx`` runs on ONNX Runtime and never imports torch.

    Images larger than ``tile_size`` (default 512, as the service and ``pix2pix translate``;
    0 never tiles) run as tiles blended over ``tile_overlap`` pixels (default 64); up to
    ``batch_size`` tiles or equal-sized images run together. Call the translator on a PIL
    image, a uint8 array, a path or a list of them; ``translator.spec`` is the model's
    contract (``input_kind``, ``palette``, ``train_size``...).

    ``inference_mode`` (``eval``, ``sample`` or ``train``) runs batch norm and dropout otherwise
    than the model's spec says; it needs the generator's weights (not an ONNX-only folder).
    """
    from model.plan import TILE_OVERLAP, TILE_SIZE
    from model.translate import Translator

    return Translator.load(
        path,
        runtime=runtime,
        device=device,
        inference_mode=inference_mode,
        tile_size=TILE_SIZE if tile_size is None else tile_size,
        tile_overlap=TILE_OVERLAP if tile_overlap is None else tile_overlap,
        batch_size=batch_size,
    )


def training_config(
    config: str | Path | Config | None,
    overrides: dict[str, Any],
    resume_run: str | Path | None = None,
) -> Config:
    """The validated config of a run: from a TOML file, a ``Config`` (copied, never changed)
    or, with no config, the saved config of ``resume_run``; then ``overrides`` on top."""
    from training.config import Config, ConfigError, load_config, set_value
    from training.loop.trainer import load_run_config

    if isinstance(config, Config):
        configured = copy.deepcopy(config)
    elif config is not None:
        return load_config(config, overrides)
    elif resume_run is not None:
        configured = load_run_config(resume_run)
        run_dir = Path(resume_run)
        configured.runs_dir, configured.name = str(run_dir.parent), run_dir.name
    else:
        raise ConfigError("train needs a config (a TOML file or a Config) or a run to resume")
    for key, value in overrides.items():
        set_value(configured, key, value)
    return configured.validate()


def train(
    config: str | Path | Config | None = None,
    *,
    resume: bool = False,
    resume_run: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a generator, as ``pix2pix train``; returns the summary (``step``, ``val_l1``,
    ``run_dir``...). The run directory holds the checkpoints, spec, metrics and samples.

    ``config`` is a TOML file or a ``training.config.Config``. ``overrides`` are the command
    line's ``--key value`` pairs as keyword arguments: a unique field name as it is
    (``max_steps=10``), a dotted one through a dict (``**{"train.batch_size": 4}``); values
    may be Python values or strings. ``resume`` continues the config's run from its latest
    checkpoint; ``resume_run`` continues that run directory with its saved config. One
    process: for several, use ``pix2pix train --nproc N``.
    """
    from training.loop.trainer import train as run_training

    configured = training_config(config, overrides, resume_run)
    return run_training(configured, resume=resume or resume_run is not None, progress=progress)


def export(
    source: str | Path,
    out: str | Path | None = None,
    format: str = "safetensors",
    *,
    half: bool = False,
    inference_mode: str | None = None,
    int8: bool = False,
    calibration: str | Path | None = None,
    calibration_images: int = 64,
    min_psnr: float = 40.0,
    recalibrate_bn: int = 0,
    temperature: float | None = None,
) -> ExportResult:
    """Export a run's generator to a model folder, as ``pix2pix export``.

    ``format`` is one of ``model.export_formats.EXPORT_FORMAT_NAMES`` (``safetensors``,
    ``onnx``, ``torchscript``); ``out`` defaults to
    ``models/<source name>``. ``int8`` (ONNX only) calibrates on ``calibration`` (a dataset
    root or a folder of inputs; default the run's dataset) and refuses a model below
    ``min_psnr`` dB against fp32. ``recalibrate_bn`` > 0 first sets batch norm's statistics
    to the generator's own over that many inputs of ``calibration`` (as
    ``train.recalibrate_bn`` does in training; ``eval`` mode only). ``temperature`` sets an
    ab_bins colorizer's decoding temperature (lower: more colorful). Returns the folder, its
    size and the parity checked.
    """
    from model.errors import CheckpointError
    from model.export import export_model
    from model.export_formats import export_format
    from training.data.calibration import calibration_inputs

    export_format(format)  # an unknown name fails before any calibration image is read
    out = Path(out) if out is not None else Path("models") / Path(source).name
    inputs = calibration_inputs(source, calibration, calibration_images) if int8 else None
    if recalibrate_bn < 0:
        raise CheckpointError(f"recalibrate_bn must be 0 (off) or more, got {recalibrate_bn}")
    recalibration = None
    if recalibrate_bn:
        recalibration = calibration_inputs(source, calibration, recalibrate_bn, "--recalibrate-bn")
    return export_model(
        source,
        out,
        format,
        half=half,
        inference_mode=inference_mode,
        int8=int8,
        calibration=inputs,
        min_psnr=min_psnr,
        recalibration=recalibration,
        temperature=temperature,
    )


def evaluate(
    model: str | Path,
    data: str | Path,
    split: str = "test",
    out: str | Path | None = "report",
    *,
    segmenter: str | Path | None = None,
    inception: str | Path | None = None,
    max_images: int = 0,
    samples: int = 8,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = False,
    palette_tolerance: int | None = None,
    inference_mode: str | None = None,
    temperature: float | None = None,
) -> Evaluation:
    """Score a generator on a dataset split, as ``pix2pix evaluate``; returns the
    ``Evaluation`` (``metrics``, ``per_class``, ``count``...) and, unless ``out`` is None,
    writes the report there (``metrics.json``, ``index.html``, figures).

    ``palette_tolerance`` is how far (per channel, 0..255) the split's label colors may stray
    from the palette; None reads them as the model's spec says it was trained.
    ``temperature`` decodes an ab_bins colorizer at another temperature than its spec's."""
    from model.runtime import resolve_device
    from training.evaluation.evaluate import evaluate_model
    from training.evaluation.report import write_report

    evaluation = evaluate_model(
        model,
        data,
        split,
        segmenter=segmenter,
        inception=inception,
        max_images=max_images,
        samples=samples,
        batch_size=batch_size,
        device=resolve_device(device),
        progress=progress,
        palette_tolerance=palette_tolerance,
        inference_mode=inference_mode,
        temperature=temperature,
    )
    if out is not None:
        write_report([evaluation], out)
    return evaluation
