"""Inference runtimes behind one interface: NumPy (N, C, H, W) float32 in, the same out.

- ``torch``: eager PyTorch in fp32, channels_last on the CPU;
- ``torch-bf16`` / ``torch-fp16``: the same under autocast (fp16 on CUDA only);
- ``torch-compile`` / ``torch-compile-bf16``: ``torch.compile`` (inductor, weights frozen into
  prepacked constants), fp32 or under bf16 autocast; the fastest on CPUs with bf16 support;
- ``torchscript``: a traced ``generator.torchscript.pt``;
- ``onnx``: ONNX Runtime on ``generator.onnx`` (CPU, or CUDA when its provider is present).

The ONNX path imports neither torch nor anything that does, so a CPU serving install can be
onnxruntime + numpy + pillow + fastapi + uvicorn. ``auto`` times the full-precision candidates
on a short warm-up and keeps the fastest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from model.errors import CheckpointError
from model.export_formats import (
    EXPORT_FORMATS,
    ONNX,
    SAFETENSORS,
    TORCHSCRIPT,
    format_of_runtime,
)
from model.model_folders import load_spec, resolve_model_folder
from model.spec import GeneratorSpec

logger = logging.getLogger(__name__)


class Runtime(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked install
        return False


def torch_available() -> bool:
    return _installed("torch")


def onnxruntime_available() -> bool:
    return _installed("onnxruntime")


def resolve_device(name: str, onnx_only: bool = False) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``.

    ``onnx_only``: only ONNX Runtime will run, so ask it for its CUDA provider instead, and
    an ONNX model never pays for importing torch.
    """
    if name != "auto":
        return name
    if onnx_only and onnxruntime_available():
        import onnxruntime

        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    if torch_available():
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


class TorchRuntime:
    """Eager (optionally compiled) PyTorch, fp32 or under bf16/fp16 autocast."""

    def __init__(
        self,
        generator,
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        channels_last: bool | None = None,
    ):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type == "cpu":
            raise CheckpointError("fp16 inference needs a GPU; use bf16 on the CPU")
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        # channels_last lets oneDNN/cuDNN pick their fastest convolution layouts.
        self.channels_last = True if channels_last is None else channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.generator = generator.to(self.device, memory_format=self.memory_format)
        # Compiled modules are built lazily, at the first call and at each new input shape, so
        # inductor's freezing is switched on around every call, not only here.
        self.freezing = _freezing_switch() if compile else contextlib.nullcontext
        self.module = torch.compile(self.generator) if compile else self.generator
        suffix = "" if precision == "fp32" else f"-{precision}"
        self.name = f"torch-compile{suffix}" if compile else f"torch{suffix}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            inputs = inputs.to(self.device).contiguous(memory_format=self.memory_format)
            enabled = self.dtype is not None
            autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)
            with self.freezing(), autocast:
                output = self.module(inputs)
            return output.float().cpu().numpy()


@functools.cache
def _freezing_switch():
    """A context that turns on inductor's freezing (weights folded into prepacked constants,
    inference only; 39 -> 66 ms per 256 px bf16 image without it), or a no-op where this torch's
    inductor no longer has the switch (a private API), said once.

    ``torch.compile(options={"freezing": True})`` is accepted but does not freeze on torch 2.14.
    """
    import torch

    try:
        import torch._inductor.config as inductor_config

        if not isinstance(inductor_config.freezing, bool):
            raise AttributeError("freezing is not a switch")
        return functools.partial(inductor_config.patch, freezing=True)
    except (ImportError, AttributeError) as error:
        logger.warning("torch %s: compiling without freezing (%s)", torch.__version__, error)
        return contextlib.nullcontext


class TorchScriptRuntime(TorchRuntime):
    """A traced ``generator.torchscript.pt``, run in fp32 as ``TorchRuntime`` runs a module."""

    def __init__(self, path: Path, device: str = "cpu"):
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated, still works
            module = torch.jit.load(str(path), map_location=torch.device(device))
        super().__init__(module, device, channels_last=False)
        self.name = "torchscript"


class OnnxRuntime:
    """ONNX Runtime session; uses the CUDA provider when it is installed and asked for."""

    def __init__(self, path: Path, device: str = "cpu", threads: int = 0, spinning: bool = True):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            # Idle pool threads sleep instead of spinning, which in a service takes the CPU
            # from the event loop and from the threads doing the other requests' work.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = onnxruntime.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=providers
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({error})") from error
        self.input_name = self.session.get_inputs()[0].name
        metadata = self.session.get_modelmeta().custom_metadata_map
        # model.quantize.QUANTIZATION_KEY (not imported: this path stays free of torch)
        quantized = metadata.get("pix2pix.quantization") == "int8"
        self.name = "onnx" + ("-int8" if quantized else "")
        if providers[0].startswith("CUDA"):
            self.name += "-cuda"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        inputs = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: inputs})[0]


@dataclass
class LoadedModel:
    spec: GeneratorSpec
    runtime: Runtime
    folder: Path
    timings_ms: dict[str, float]


def candidate_names(folder: Path, device: str) -> list[str]:
    """The full-precision runtimes this folder and this install can run.

    Reduced precision changes the numbers slightly, so ``auto`` never picks it on its own:
    ask for torch-bf16 or torch-fp16 by name.
    """
    return [
        entry.runtimes[0]
        for entry in EXPORT_FORMATS
        if (folder / entry.weight_file).is_file() and _installed(entry.package)
    ]


def build_runtime(
    name: str,
    folder: Path,
    spec: GeneratorSpec,
    device: str,
    threads: int = 0,
    spinning: bool = True,
):
    """Runtime ``name`` on the file of its export format in ``folder``."""
    entry = format_of_runtime(name)
    path = folder / entry.weight_file
    if not path.is_file():
        raise CheckpointError(f"{folder}: runtime {name} needs {entry.weight_file}")
    if spec.inference_mode == "train" and not entry.carries_dropout:
        raise CheckpointError(
            f"{folder}: the spec asks for train-mode inference (dropout at test time), which "
            f"the {entry.label} export does not carry; use the torch runtime"
        )
    if not _installed(entry.package):
        raise CheckpointError(f"runtime {name} needs {entry.package}, which is not installed")
    return OPENERS[entry.name](name, path, spec, device, threads, spinning)


def _open_torch(
    name: str, path: Path, spec: GeneratorSpec, device: str, threads: int, spinning: bool
) -> Runtime:
    """The generator rebuilt from its weights, in the caller's spec's inference mode."""
    from model.checkpoint import apply_spec, load_generator

    generator, _ = load_generator(path.parent, device)
    apply_spec(generator, spec)  # the caller's spec may override the mode and temperature
    precision = "bf16" if name.endswith("bf16") else "fp16" if name.endswith("fp16") else "fp32"
    return TorchRuntime(generator, device, precision, compile=name.startswith("torch-compile"))


def _open_onnx(
    name: str, path: Path, spec: GeneratorSpec, device: str, threads: int, spinning: bool
) -> Runtime:
    return OnnxRuntime(path, device, threads, spinning)


def _open_torchscript(
    name: str, path: Path, spec: GeneratorSpec, device: str, threads: int, spinning: bool
) -> Runtime:
    return TorchScriptRuntime(path, device)


# The runtime of each export format's file, by format name (``model.export_formats`` names
# the runtimes). Each opener takes (runtime name, file, spec, device, threads, spinning).
OPENERS: dict[str, Callable[..., Runtime]] = {
    SAFETENSORS.name: _open_torch,
    ONNX.name: _open_onnx,
    TORCHSCRIPT.name: _open_torchscript,
}


def time_runtime(runtime: Runtime, spec: GeneratorSpec, repeats: int = 2) -> float:
    """Milliseconds per call on one training-size input, after one warm-up call."""
    size = max(spec.train_size, spec.pad_multiple)
    size = -(-size // spec.pad_multiple) * spec.pad_multiple
    batch = np.zeros((1, spec.in_channels, size, size), dtype=np.float32)
    runtime(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        runtime(batch)
    return (time.perf_counter() - start) / repeats * 1000.0


def _overridden(
    folder: Path,
    spec: GeneratorSpec,
    runtime: str,
    inference_mode: str | None,
    temperature: float | None,
) -> tuple[GeneratorSpec, str]:
    """The spec in ``inference_mode`` at ``temperature`` (None: the spec's) and the runtime to
    run it: where either differs from the export's, only a runtime that rebuilds the network
    from its weights can (``auto`` picks it)."""
    exported = spec
    changes = []
    if inference_mode is not None and inference_mode != spec.inference_mode:
        spec = dataclasses.replace(spec, inference_mode=inference_mode)  # checks the name
        changes.append(f"in inference mode {inference_mode!r}")
    if temperature is not None:
        tempered = spec.with_temperature(temperature)  # refuses a head without one
        if tempered != spec:
            spec = tempered
            changes.append(f"at temperature {temperature:g}")
    if not changes:
        return spec, runtime
    weights = (folder / SAFETENSORS.weight_file).is_file()
    if runtime == "auto" and weights:
        runtime = SAFETENSORS.runtimes[0]
    if runtime == "auto" or format_of_runtime(runtime).fixes_inference_mode:
        fixed = " or ".join(entry.label for entry in EXPORT_FORMATS if entry.fixes_inference_mode)
        kept = f"inference mode {exported.inference_mode!r}"
        if exported.architecture.head == "ab_bins":
            kept += f" and temperature {exported.architecture.temperature:g}"
        raise CheckpointError(
            f"{folder}: running it {' and '.join(changes)} needs the generator's weights "
            f"({SAFETENSORS.weight_file}) and PyTorch; an {fixed} export keeps the {kept} "
            "it was exported with"
        )
    return spec, runtime


def load_model(
    path: str | Path,
    runtime: str = "auto",
    device: str = "auto",
    threads: int = 0,
    spinning: bool = True,
    inference_mode: str | None = None,
    temperature: float | None = None,
) -> LoadedModel:
    """Spec plus a ready runtime for a model folder, checkpoint or run directory.

    ``auto`` builds every runtime the folder and install support, times each on a warm-up
    batch and keeps the fastest; a runtime that fails to build is logged and skipped.
    ``spinning=False`` lets ONNX Runtime's idle threads sleep (for a service sharing the CPU).
    ``inference_mode`` runs the generator in another mode than its spec's (see
    ``GeneratorSpec``), ``temperature`` decodes an ab_bins colorizer at another temperature;
    ONNX and TorchScript files carry theirs, so either takes the weights.
    """
    folder = resolve_model_folder(path)
    spec = load_spec(folder)
    spec, runtime = _overridden(folder, spec, runtime, inference_mode, temperature)
    if runtime != "auto":
        device = resolve_device(device, onnx_only=format_of_runtime(runtime) is ONNX)
        built = build_runtime(runtime, folder, spec, device, threads, spinning)
        return LoadedModel(spec, built, folder, {built.name: time_runtime(built, spec)})
    names = candidate_names(folder, device)
    if spec.inference_mode == "train":
        names = [name for name in names if format_of_runtime(name).carries_dropout]
    device = resolve_device(device, onnx_only=names == list(ONNX.runtimes))
    if not names:
        raise CheckpointError(
            f"{folder}: no runtime can load this model here (onnxruntime installed: "
            f"{onnxruntime_available()}, torch installed: {torch_available()})"
        )
    best, best_name, timings, errors = None, "", {}, []
    for name in names:
        try:
            candidate = build_runtime(name, folder, spec, device, threads, spinning)
            timings[name] = time_runtime(candidate, spec)
        except (CheckpointError, RuntimeError, OSError) as error:
            errors.append(f"{name}: {error}")
            logger.warning("runtime %s unavailable for %s: %s", name, folder, error)
            continue
        if best is None or timings[name] < timings[best_name]:
            best, best_name = candidate, name
    if best is None:
        raise CheckpointError(f"{folder}: no runtime could load it: " + "; ".join(errors))
    logger.info(
        "%s: runtime %s (%s)",
        folder.name,
        best.name,
        ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()),
    )
    return LoadedModel(spec, best, folder, timings)
