"""Export a trained generator to a model folder in one of ``model.export_formats``, with its spec.

Every export is checked against eager PyTorch on random inputs of two sizes before it is
reported done, and the spec written beside it says how inputs are normalized and padded and
whether dropout/normalization run in train or eval mode at inference.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.atomic_files import make_readable
from model.checkpoint import apply_spec, load_generator
from model.errors import CheckpointError
from model.example_inputs import copy_example_inputs
from model.export_formats import EXPORT_FORMATS, ONNX, ExportFormat, export_format, write_onnx
from model.model_folders import resolve_model_folder
from model.recalibration import RECALIBRATION_BATCH, recalibrate_batch_norm
from model.runtime import OnnxRuntime, TorchRuntime, build_runtime
from model.spec import SPEC_FILENAME, GeneratorSpec

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    folder: Path
    format: str
    parity: dict[str, float]  # "HxW" -> max abs difference against eager fp32
    bytes: int
    psnr: float | None = None  # int8: dB against fp32 on held-out calibration images


def random_inputs(spec: GeneratorSpec, count: int, height: int, width: int, rng) -> np.ndarray:
    """Valid network inputs: uniform in [-1, 1], or random one-hot label maps."""
    if spec.input_kind == "label_map" and spec.one_hot:
        classes = rng.integers(0, spec.in_channels, (count, height, width))
        return np.eye(spec.in_channels, dtype=np.float32)[classes].transpose(0, 3, 1, 2)
    return rng.uniform(-1, 1, (count, spec.in_channels, height, width)).astype(np.float32)


def check_parity(reference, exported, spec: GeneratorSpec, seed: int = 0) -> dict[str, float]:
    """Max abs difference between two runtimes on random inputs of two different, non-square
    sizes that are valid network inputs."""
    rng = np.random.default_rng(seed)
    differences = {}
    multiple = spec.pad_multiple
    for height, width in ((multiple, 2 * multiple), (2 * multiple, multiple)):
        batch = random_inputs(spec, 2, height, width, rng)
        differences[f"{height}x{width}"] = float(np.abs(reference(batch) - exported(batch)).max())
    return differences


def export_model(
    source: str | Path,
    out: str | Path,
    format: str = "safetensors",
    half: bool = False,
    inference_mode: str | None = None,
    tolerance: float = 1e-4,
    int8: bool = False,
    calibration: np.ndarray | None = None,
    min_psnr: float = 40.0,
    recalibration: np.ndarray | None = None,
    temperature: float | None = None,
) -> ExportResult:
    """Write ``out`` (spec.json + weights) from a run directory, checkpoint or model folder.

    ``int8`` (ONNX only) quantizes the convolutions, calibrated on ``calibration`` inputs
    (N, C, H, W) in the network's input encoding; see ``model.quantize``. ``recalibration``
    inputs, in the same encoding, first set batch norm's statistics to the generator's own
    over them (``model.recalibration``), for ``eval`` mode. ``temperature`` sets an ab_bins
    colorizer's decoding temperature (see ``GeneratorSpec.with_temperature``).
    """
    entry = export_format(format)
    if int8 and (entry is not ONNX or half):
        raise CheckpointError("--int8 applies to --format onnx only, and not with --half")
    if int8 and calibration is None:
        raise CheckpointError("int8 export needs calibration images")
    generator, spec = _prepared_generator(source, inference_mode, recalibration, temperature)
    if spec.inference_mode == "train" and not entry.carries_dropout:  # int8 included
        carrying = "/".join(other.name for other in EXPORT_FORMATS if other.carries_dropout)
        raise CheckpointError(
            f"{entry.label} export cannot carry test-time dropout (inference mode 'train'); "
            "export with --inference-mode sample (per-image statistics, no dropout) or eval, "
            f"or use {carrying}"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        export_info = {"format": format, "half": half} | ({"int8": True} if int8 else {})
        spec = dataclasses.replace(spec, extra={**spec.extra, "export": export_info})
        spec.save(staging / SPEC_FILENAME)
        # The scenes and examples the spec lists travel with the model.
        copy_example_inputs(resolve_model_folder(source), spec, staging)
        reference = TorchRuntime(copy.deepcopy(generator), "cpu", channels_last=False)
        parity, fidelity = {}, None
        if int8:
            fidelity = _export_int8(
                generator, spec, staging, reference, calibration, min_psnr, tolerance
            )
        else:
            parity = _write_checked(entry, generator, spec, staging, reference, half, tolerance)
        if out.exists():
            shutil.rmtree(out)
        make_readable(staging)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    check = f"int8 PSNR {fidelity:.1f} dB" if fidelity is not None else f"parity {parity}"
    logger.info("exported %s to %s (%d bytes); %s", format, out, size, check)
    return ExportResult(out, format, parity, size, fidelity)


def _prepared_generator(
    source: str | Path,
    inference_mode: str | None,
    recalibration: np.ndarray | None,
    temperature: float | None = None,
) -> tuple[torch.nn.Module, GeneratorSpec]:
    """The generator to export, in the inference mode and at the decoding temperature asked
    for, its statistics recalibrated if asked, and the spec that says so."""
    generator, spec = load_generator(source, "cpu")
    if inference_mode is not None:
        spec = dataclasses.replace(spec, inference_mode=inference_mode)
    if temperature is not None:
        spec = spec.with_temperature(temperature)
    apply_spec(generator, spec)
    if recalibration is not None:
        _recalibrate(generator, spec, recalibration)
        spec = dataclasses.replace(
            spec, extra={**spec.extra, "recalibrated_bn": len(recalibration)}
        )
    return generator, spec


def _write_checked(
    entry: ExportFormat,
    generator: torch.nn.Module,
    spec: GeneratorSpec,
    staging: Path,
    reference: TorchRuntime,
    half: bool,
    tolerance: float,
) -> dict[str, float]:
    """Write the format's file into ``staging``, load it with its runtime and compare it with
    eager fp32 PyTorch (not in train mode, where dropout makes every run differ)."""
    entry.write(generator, spec, staging / entry.weight_file, half)
    exported = build_runtime(entry.runtimes[0], staging, spec, "cpu")
    parity = check_parity(reference, exported, spec) if spec.inference_mode != "train" else {}
    limit = 2e-2 if half else tolerance
    worst = max(parity.values(), default=0.0)
    if worst > limit:
        raise CheckpointError(
            f"exported {entry.name} model differs from PyTorch by {worst:.2e} "
            f"(limit {limit:.0e}); nothing was written"
        )
    return parity


def _recalibrate(generator: torch.nn.Module, spec: GeneratorSpec, inputs: np.ndarray) -> None:
    if spec.inference_mode != "eval":
        raise CheckpointError(
            f"--recalibrate-bn sets batch norm's running statistics, which inference mode "
            f"{spec.inference_mode!r} does not use (each image is normalized by its own): "
            "export with --inference-mode eval, or without --recalibrate-bn"
        )
    if len(inputs) == 0:
        raise CheckpointError("--recalibrate-bn found no inputs to measure the statistics on")
    batches = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    if not recalibrate_batch_norm(generator, lambda: batches.split(RECALIBRATION_BATCH)):
        raise CheckpointError(
            f"--recalibrate-bn: this generator has no batch norm (norm "
            f"{spec.architecture.norm!r}), so there are no statistics to measure"
        )


def _export_int8(
    generator, spec, staging: Path, reference, calibration, min_psnr, tolerance
) -> float:
    """fp32 inference graph (parity-checked) -> int8 ONNX (PSNR-checked) in ``staging``."""
    from model.quantize import check_fidelity, inference_graph, quantize_onnx, split_calibration

    calibrate, held_out = split_calibration(np.asarray(calibration, dtype=np.float32))
    fp32_path = staging / "fp32.onnx"
    write_onnx(inference_graph(generator), spec, fp32_path)
    rewritten = OnnxRuntime(fp32_path)
    worst = max(check_parity(reference, rewritten, spec).values())
    if worst > tolerance:
        raise CheckpointError(f"int8 graph rewrite differs from PyTorch by {worst:.2e}")
    del rewritten
    quantize_onnx(
        fp32_path,
        staging / ONNX.weight_file,
        calibrate,
        float_tail=spec.architecture.head == "ab_bins",
        spade=spec.architecture.spade,
    )
    fp32_path.unlink()
    return check_fidelity(reference, OnnxRuntime(staging / ONNX.weight_file), held_out, min_psnr)
