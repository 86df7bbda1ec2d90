"""Export a trained generator to a model folder: safetensors, ONNX or TorchScript, with its spec.

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
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.atomic_files import make_readable
from model.checkpoint import apply_inference_mode, load_generator, save_model_folder
from model.errors import CheckpointError
from model.model_folders import GENERATOR_ONNX, GENERATOR_TORCHSCRIPT
from model.recalibration import RECALIBRATION_BATCH, recalibrate_batch_norm
from model.runtime import OnnxRuntime, TorchRuntime, TorchScriptRuntime, load_model
from model.spec import SPEC_FILENAME, GeneratorSpec

logger = logging.getLogger(__name__)

FORMATS = ("safetensors", "onnx", "torchscript")
ONNX_OPSET = 17


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
) -> ExportResult:
    """Write ``out`` (spec.json + weights) from a run directory, checkpoint or model folder.

    ``int8`` (ONNX only) quantizes the convolutions, calibrated on ``calibration`` inputs
    (N, C, H, W) in the network's input encoding; see ``model.quantize``. ``recalibration``
    inputs, in the same encoding, first set batch norm's statistics to the generator's own
    over them (``model.recalibration``), for ``eval`` mode.
    """
    if format not in FORMATS:
        raise CheckpointError(f"unknown export format {format!r} (choose {', '.join(FORMATS)})")
    if int8 and (format != "onnx" or half):
        raise CheckpointError("--int8 applies to --format onnx only, and not with --half")
    if int8 and calibration is None:
        raise CheckpointError("int8 export needs calibration images")
    generator, spec = load_generator(source, "cpu")
    if inference_mode is not None:
        spec = dataclasses.replace(spec, inference_mode=inference_mode)
        apply_inference_mode(generator, inference_mode)
    if recalibration is not None:
        _recalibrate(generator, spec, recalibration)
        spec = dataclasses.replace(
            spec, extra={**spec.extra, "recalibrated_bn": len(recalibration)}
        )
    out = Path(out)
    if format == "onnx" and spec.inference_mode == "train":  # int8 included
        raise CheckpointError(
            "ONNX export cannot carry test-time dropout (inference mode 'train'); export "
            "with --inference-mode sample (per-image statistics, no dropout) or eval, or use "
            "safetensors/torchscript"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        export_info = {"format": format, "half": half} | ({"int8": True} if int8 else {})
        spec = dataclasses.replace(spec, extra={**spec.extra, "export": export_info})
        spec.save(staging / SPEC_FILENAME)
        reference = TorchRuntime(copy.deepcopy(generator), "cpu", channels_last=False)
        fidelity = None
        if int8:
            fidelity = _export_int8(
                generator, spec, staging, reference, calibration, min_psnr, tolerance
            )
        elif format == "safetensors":
            save_model_folder(staging, generator, spec, torch.float16 if half else None)
            exported = load_model(staging, runtime="torch", device="cpu").runtime
        elif format == "onnx":
            _export_onnx(generator, spec, staging / GENERATOR_ONNX)
            if half:
                store_initializers_as_fp16(staging / GENERATOR_ONNX)
            exported = OnnxRuntime(staging / GENERATOR_ONNX)
        else:
            _export_torchscript(generator, spec, staging / GENERATOR_TORCHSCRIPT)
            exported = TorchScriptRuntime(staging / GENERATOR_TORCHSCRIPT)
        # int8: the exact fp32 rewrite was checked above; the int8 model is judged by PSNR.
        checked = spec.inference_mode != "train" and not int8
        parity = check_parity(reference, exported, spec) if checked else {}
        limit = 2e-2 if half else tolerance
        worst = max(parity.values(), default=0.0)
        if worst > limit:
            raise CheckpointError(
                f"exported {format} model differs from PyTorch by {worst:.2e} "
                f"(limit {limit:.0e}); nothing was written"
            )
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
    _export_onnx(inference_graph(generator), spec, fp32_path)
    rewritten = OnnxRuntime(fp32_path)
    worst = max(check_parity(reference, rewritten, spec).values())
    if worst > tolerance:
        raise CheckpointError(f"int8 graph rewrite differs from PyTorch by {worst:.2e}")
    del rewritten
    quantize_onnx(
        fp32_path,
        staging / GENERATOR_ONNX,
        calibrate,
        float_tail=spec.architecture.head == "ab_bins",
        spade=spec.architecture.spade,
    )
    fp32_path.unlink()
    return check_fidelity(reference, OnnxRuntime(staging / GENERATOR_ONNX), held_out, min_psnr)


def _example(spec: GeneratorSpec) -> torch.Tensor:
    size = spec.pad_multiple
    return torch.zeros(1, spec.in_channels, size, size)


def _export_onnx(generator: torch.nn.Module, spec: GeneratorSpec, path: Path) -> None:
    generator.eval()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            generator,
            (_example(spec),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": axes, "output": axes},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def store_initializers_as_fp16(path: Path) -> None:
    """Halve an ONNX file: float weights stored as fp16, each cast back to fp32 at load.

    ONNX Runtime folds the casts when it builds the session, so inference still runs in
    fp32 at full speed; only the weights carry fp16 rounding.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for initializer in graph.initializer:
        if initializer.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(initializer).astype(np.float16)
        name = initializer.name
        initializer.CopyFrom(numpy_helper.from_array(values, f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _export_torchscript(generator: torch.nn.Module, spec: GeneratorSpec, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(generator, _example(spec), check_trace=False)
        torch.jit.save(traced, str(path))
