"""Evaluate generators on a dataset split: every metric the task allows, plus sample images.

``evaluate_model`` loads a generator (run directory, checkpoint or model folder), reads a split
through the same dataset code and pre/post-processing as training (at the model's training
size), translates it and scores the decoded outputs against the targets:

- every task: L1, PSNR, SSIM and sharpness ratios (outputs' mean gradient magnitude and
  Laplacian variance over the targets'; 1.0 is as sharp as the real photos);
- every task, the two known artifacts: the checkerboard score (how much more the outputs'
  spectra peak at the periods 2, 4 and 8 that transposed convolutions leave than the targets'
  do, in dB; 0 is like the real photos) and the blob rate (the share of outputs with a
  saturated white region that their target lacks);
- grayscale -> color: PSNR of the ab channels, colorfulness of outputs and targets, and the
  share of pixels within each ab error threshold (the accuracy-vs-threshold curve and its AuC);
- label map -> photo, given a segmenter: the FCN-score (pixel accuracy, class accuracy, mean
  IoU of the segmented outputs against the input label maps) with the same segmenter's scores
  on the real photos as its upper bound;
- FID and KID, given Inception weights.

``report.write_report`` turns one or more evaluations into ``metrics.json`` and ``index.html``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.model_folders import load_spec, resolve_model_folder
from model.processing import class_positions, input_preview
from model.spec import GeneratorSpec
from model.translate import Translator
from training.data.datasets import PairedDataset, data_config_for
from training.errors import DataError
from training.evaluation import metrics
from training.evaluation.segmenter import DEFAULT_FOLDER, Segmenter

logger = logging.getLogger(__name__)

# Where the accuracy-vs-threshold curve is read off for the table.
AB_REPORTED_THRESHOLDS = (5, 10, 20)


@dataclass
class Evaluation:
    """One generator's scores on one split, and what the report shows of it."""

    name: str
    model: str
    task: str
    input_kind: str
    data: str
    split: str
    count: int
    seconds: float
    metrics: dict[str, float]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sample_indices: list[int] = field(default_factory=list)
    # Per sample: (input preview, output, target), uint8 RGB.
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    training_log: str | None = None

    def summary(self) -> dict[str, Any]:
        """The JSON-friendly part (no images)."""
        return {
            "name": self.name,
            "model": self.model,
            "task": self.task,
            "input_kind": self.input_kind,
            "data": self.data,
            "split": self.split,
            "count": self.count,
            "seconds": round(self.seconds, 2),
            "seconds_per_100_images": round(100.0 * self.seconds / max(self.count, 1), 2),
            "metrics": {k: _finite_or_none(v) for k, v in self.metrics.items()},
            "per_class": self.per_class,
            "notes": self.notes,
            "training_log": self.training_log,
        }


def _finite_or_none(value: float) -> float | None:
    return round(float(value), 6) if np.isfinite(value) else None


def is_colorization(spec: GeneratorSpec) -> bool:
    return spec.input_kind == "grayscale" and spec.out_channels in (2, 3)


def find_training_log(model: str | Path) -> Path | None:
    """The ``metrics.jsonl`` of the run a model came from, if it is still beside it."""
    folder = resolve_model_folder(model).resolve()
    for candidate in (folder, *list(folder.parents)[:3]):
        log = candidate / "metrics.jsonl"
        if log.is_file():
            return log
    return None


def sample_indices(count: int, samples: int) -> list[int]:
    """Evenly spread indices, the same for every model evaluated on the split."""
    if samples <= 0 or count == 0:
        return []
    return sorted({int(i) for i in np.linspace(0, count - 1, min(samples, count))})


def find_segmenter(data_root: str | Path, segmenter: str | Path | None) -> Path | None:
    """An explicit segmenter folder, or ``<data>/segmenter`` when one was trained there."""
    if segmenter is not None:
        return Path(segmenter)
    default = Path(data_root) / DEFAULT_FOLDER
    return default if default.is_dir() else None


class _Scores:
    """Running sums over a split, so memory stays flat however many images there are."""

    def __init__(self, spec: GeneratorSpec, segmenter: Segmenter | None, keep_images: bool):
        self.spec = spec
        self.segmenter = segmenter
        self.keep_images = keep_images
        self.per_image: dict[str, list[torch.Tensor]] = {}
        self.ab_within = np.zeros(len(metrics.AB_THRESHOLDS), dtype=np.int64)
        self.ab_pixels = 0
        self.ab_psnr: list[np.ndarray] = []
        classes = spec.num_classes
        self.confusion = np.zeros((classes, classes), dtype=np.int64)
        self.real_confusion = np.zeros((classes, classes), dtype=np.int64)
        self.lookup = class_positions(spec.palette)
        self.outputs: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []

    def _add(self, name: str, values: torch.Tensor) -> None:
        self.per_image.setdefault(name, []).append(values.double())

    def update(self, inputs: np.ndarray, outputs: np.ndarray, targets: np.ndarray) -> None:
        """Batches of canonical inputs and uint8 RGB (N, H, W, 3) outputs and targets."""
        output_units, target_units = metrics.unit_images(outputs), metrics.unit_images(targets)
        self._add("l1", metrics.l1_error(output_units, target_units))
        self._add("psnr", metrics.psnr(output_units, target_units).clamp(max=100.0))
        self._add("ssim", metrics.ssim(output_units, target_units))
        self._add("gradient_output", metrics.gradient_magnitude(output_units))
        self._add("gradient_target", metrics.gradient_magnitude(target_units))
        self._add("laplacian_output", metrics.laplacian_variance(output_units))
        self._add("laplacian_target", metrics.laplacian_variance(target_units))
        self._add("checkerboard_output", metrics.checkerboard_contrast(output_units))
        self._add("checkerboard_target", metrics.checkerboard_contrast(target_units))
        self._add("blob", metrics.has_blob(output_units, target_units))
        if is_colorization(self.spec):
            output_ab, target_ab = metrics.ab_channels(outputs), metrics.ab_channels(targets)
            self.ab_psnr.append(np.minimum(metrics.ab_psnr(output_ab, target_ab), 100.0))
            errors = metrics.ab_error(output_ab, target_ab)
            self.ab_within += metrics.count_within(errors)
            self.ab_pixels += errors.size
            self._add("checkerboard_ab_output", _chroma_checkerboard(output_ab))
            self._add("checkerboard_ab_target", _chroma_checkerboard(target_ab))
            self._add("colorfulness_output", metrics.colorfulness(output_units))
            self._add("colorfulness_target", metrics.colorfulness(target_units))
        if self.segmenter is not None:
            classes = self.spec.num_classes
            truth = self.lookup[inputs]
            predicted = self.lookup[self.segmenter.predict(outputs)]
            self.confusion += metrics.confusion_matrix(truth, predicted, classes)
            real = self.lookup[self.segmenter.predict(targets)]
            self.real_confusion += metrics.confusion_matrix(truth, real, classes)
        if self.keep_images:
            self.outputs.append(outputs)
            self.targets.append(targets)

    def mean(self, name: str) -> torch.Tensor:
        return torch.cat(self.per_image[name])

    def results(self) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, list[float]]]:
        values = {
            "l1": float(self.mean("l1").mean()),
            "psnr": float(self.mean("psnr").mean()),
            "ssim": float(self.mean("ssim").mean()),
            "sharpness_ratio": metrics.sharpness_ratio(
                self.mean("gradient_output"), self.mean("gradient_target")
            ),
            "laplacian_ratio": metrics.sharpness_ratio(
                self.mean("laplacian_output"), self.mean("laplacian_target")
            ),
            "checkerboard": metrics.checkerboard_score(
                self.mean("checkerboard_output"), self.mean("checkerboard_target")
            ),
            "blob_rate": float(self.mean("blob").mean()),
        }
        per_class: list[dict[str, Any]] = []
        curves: dict[str, list[float]] = {}
        if is_colorization(self.spec):
            accuracy = self.ab_within / max(self.ab_pixels, 1)
            curves["ab_thresholds"] = list(metrics.AB_THRESHOLDS)
            curves["ab_accuracy"] = [round(float(v), 6) for v in accuracy]
            output_color = float(self.mean("colorfulness_output").mean())
            target_color = float(self.mean("colorfulness_target").mean())
            values |= {
                "psnr_ab": float(np.concatenate(self.ab_psnr).mean()),
                "checkerboard_ab": metrics.checkerboard_score(
                    self.mean("checkerboard_ab_output"), self.mean("checkerboard_ab_target")
                ),
                "colorfulness_output": output_color,
                "colorfulness_target": target_color,
                "colorfulness_ratio": output_color / target_color if target_color else np.nan,
                **{
                    f"ab_acc_{t}": float(accuracy[metrics.AB_THRESHOLDS.index(float(t))])
                    for t in AB_REPORTED_THRESHOLDS
                },
                "ab_auc": metrics.area_under_curve(accuracy),
            }
        if self.segmenter is not None:
            generated = metrics.segmentation_scores(self.confusion)
            real = metrics.segmentation_scores(self.real_confusion)
            for prefix, scores in (("fcn", generated), ("real", real)):
                for score in ("pixel_accuracy", "class_accuracy", "mean_iou"):
                    values[f"{prefix}_{score}"] = getattr(scores, score)
            for position, label in enumerate(self.spec.palette):
                per_class.append(
                    {
                        "id": label.id,
                        "name": label.name,
                        "pixels": int(self.confusion[position].sum()),
                        "accuracy": _finite_or_none(generated.per_class_accuracy[position]),
                        "iou": _finite_or_none(generated.per_class_iou[position]),
                        "real_iou": _finite_or_none(real.per_class_iou[position]),
                    }
                )
        return values, per_class, curves


def _chroma_checkerboard(ab: np.ndarray) -> torch.Tensor:
    """(N, H, W, 2) Lab ab -> the checkerboard contrast of the color per image."""
    return metrics.chroma_checkerboard_contrast(torch.from_numpy(ab).permute(0, 3, 1, 2))


def evaluate_model(
    model: str | Path,
    data_root: str | Path,
    split: str = "test",
    *,
    name: str | None = None,
    segmenter: str | Path | None = None,
    inception: str | Path | None = None,
    max_images: int = 0,
    samples: int = 8,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = False,
    palette_tolerance: int | None = None,
    inference_mode: str | None = None,
    temperature: float | None = None,
) -> Evaluation:
    """Score one generator on ``data_root``'s ``split``; see the module docstring.

    ``palette_tolerance`` reads the split's label colors within it of the palette (None: the
    spec's, as the model was trained).

    ``inference_mode`` runs it in another mode than its spec's (eval, sample or train), to see
    which suits the data; the evaluation's name then says the mode. ``temperature`` decodes
    an ab_bins colorizer at another temperature than its spec's, and the name says it too."""
    translator = Translator.load(
        model,
        runtime="auto",
        device=device,
        batch_size=batch_size,
        inference_mode=inference_mode,
        temperature=temperature,
    )
    spec = translator.spec
    config = data_config_for(spec, data_root, split, palette_tolerance)
    config.max_images = max_images
    dataset = PairedDataset(config, split, spec, train=False)
    notes: list[str] = []
    asked = [inference_mode] if inference_mode is not None else []
    asked += [f"T {temperature:g}"] if temperature is not None else []
    if asked:
        name = name or f"{_model_name(Path(model))} ({', '.join(asked)})"

    loaded_segmenter = _load_segmenter(spec, data_root, segmenter, device, notes)
    features = _load_inception(inception, device, notes)

    scores = _Scores(spec, loaded_segmenter, keep_images=features is not None)
    chosen = sample_indices(len(dataset), samples)
    started = time.perf_counter()
    kept = _score_dataset(translator, dataset, scores, chosen, batch_size, progress)
    values, per_class, curves = scores.results()
    if features is not None:
        values |= metrics.distribution_scores(
            np.concatenate(scores.targets), np.concatenate(scores.outputs), features
        )
    seconds = time.perf_counter() - started
    log = find_training_log(model)
    return Evaluation(
        name=name or _model_name(Path(model)),
        model=str(resolve_model_folder(model)),
        task=spec.task,
        input_kind=spec.input_kind,
        data=str(data_root),
        split=split,
        count=len(dataset),
        seconds=seconds,
        metrics=values,
        per_class=per_class,
        curves=curves,
        notes=notes,
        sample_indices=chosen,
        samples=kept,
        training_log=str(log) if log else None,
    )


def _load_segmenter(spec, data_root, segmenter, device: str, notes: list[str]):
    """The FCN-score's segmenter for a label-map model, or None with a note saying why."""
    if spec.input_kind != "label_map":
        if segmenter is not None:
            notes.append("the segmenter was not used: the FCN-score needs a label-map model")
        return None
    segmenter_path = find_segmenter(data_root, segmenter)
    if segmenter_path is None:
        notes.append(
            "FCN-score skipped: no segmenter (train one with `pix2pix segmenter train "
            f"--data {data_root}`, or pass --segmenter)"
        )
        return None
    loaded = Segmenter.load(segmenter_path, device)
    loaded.check_palette(spec.palette, str(segmenter_path))
    return loaded


def _load_inception(inception, device: str, notes: list[str]):
    """The Inception features for FID and KID, or None with a note: nothing is downloaded."""
    if inception is None:
        notes.append("FID and KID skipped: pass --inception WEIGHTS (nothing is downloaded)")
        return None
    try:
        return metrics.InceptionFeatures(inception).to(device)
    except (OSError, ValueError, RuntimeError) as error:
        raise DataError(f"{inception}: cannot use these Inception weights ({error})") from error


def _score_dataset(translator, dataset, scores, chosen, batch_size: int, progress: bool):
    """Translate the split batch by batch into ``scores``; returns the ``chosen`` samples as
    (input preview, output, target)."""
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    indices = range(0, len(dataset), batch_size)
    for start in tqdm(indices, disable=not progress, desc="evaluate", unit="batch"):
        positions = range(start, min(start + batch_size, len(dataset)))
        pairs = [dataset.arrays(i) for i in positions]
        inputs = np.stack([a for a, _ in pairs])
        outputs = np.stack(translator.translate_arrays([a for a, _ in pairs]))
        targets = np.stack([_as_rgb(b) for _, b in pairs])
        scores.update(inputs, outputs, targets)
        for j, index in enumerate(positions):
            if index in chosen:
                kept.append((input_preview(pairs[j][0], translator.spec), outputs[j], targets[j]))
    return kept


def _model_name(path: Path) -> str:
    """A readable name: the run's name for runs/<name>/checkpoints/<checkpoint>."""
    path = path.resolve()
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def _as_rgb(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


def evaluate_models(
    models: list[str | Path], data_root: str | Path, split: str = "test", **options
) -> list[Evaluation]:
    """Several generators on the same split and the same sample images, for comparison."""
    kinds = {load_spec(model).input_kind for model in models}
    if len(kinds) > 1:
        raise DataError(
            f"cannot compare models with different inputs ({', '.join(sorted(kinds))}) on one "
            "dataset"
        )
    names = options.pop("names", None) or [None] * len(models)
    if len(names) != len(models):
        raise DataError(f"{len(names)} names given for {len(models)} models")
    # One inference mode for every model, or one each (the same run twice: eval against sample).
    modes = options.pop("inference_mode", None)
    modes = modes if isinstance(modes, list | tuple) else [modes] * len(models)
    if len(modes) != len(models):
        raise DataError(f"{len(modes)} inference modes given for {len(models)} models")
    return [
        evaluate_model(model, data_root, split, name=name, inference_mode=mode, **options)
        for model, name, mode in zip(models, names, modes, strict=True)
    ]
