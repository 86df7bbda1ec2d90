"""The export formats: the file each one puts in a model folder, how it is written, what runs it.

One ``ExportFormat`` entry per format. Export (``model.export``), model-folder detection
(``model.model_folders``), runtime selection (``model.runtime``) and the command line's choices
all read this table: a new format is an entry here with its writer, plus a runtime in
``model.runtime`` when no existing one can run its file.

Importing this module costs no torch (an ONNX-only service reads it): each writer imports what
it needs when it runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from model.errors import CheckpointError
from model.spec import GeneratorSpec

if TYPE_CHECKING:
    import torch

ONNX_OPSET = 17

Writer = Callable[["torch.nn.Module", GeneratorSpec, Path, bool], None]


@dataclass(frozen=True)
class ExportFormat:
    """One format a generator is exported to.

    ``write(generator, spec, path, half)`` writes ``weight_file`` at ``path``; ``half`` asks for
    fp16 storage where the format has it. ``runtimes`` are the names ``model.runtime`` runs the
    file under, the full-precision one first (the one ``auto`` times). ``fixes_inference_mode``:
    the file is a graph traced in one inference mode, so running another needs the weights.
    ``carries_dropout``: the file can run inference mode ``train`` (dropout at test time).
    """

    name: str
    label: str  # the format's name in messages
    weight_file: str
    runtimes: tuple[str, ...]
    package: str  # the package its runtimes import
    fixes_inference_mode: bool
    carries_dropout: bool
    write: Writer


def write_safetensors(generator: torch.nn.Module, spec: GeneratorSpec, path: Path, half: bool):
    """The weights alone: PyTorch rebuilds the network from the spec."""
    import torch

    from model.weights import save_weights

    save_weights(generator, path, torch.float16 if half else None)


def _example(spec: GeneratorSpec) -> torch.Tensor:
    import torch

    size = spec.pad_multiple
    return torch.zeros(1, spec.in_channels, size, size)


def write_onnx(generator: torch.nn.Module, spec: GeneratorSpec, path: Path, half: bool = False):
    """An ONNX graph with free batch, height and width; ``half`` stores its weights as fp16."""
    import torch

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
    if half:
        store_initializers_as_fp16(path)


def store_initializers_as_fp16(path: Path) -> None:
    """Halve an ONNX file: float weights stored as fp16, each cast back to fp32 at load.

    ONNX Runtime folds the casts when it builds the session, so inference still runs in
    fp32 at full speed; only the weights carry fp16 rounding.
    """
    import numpy as np
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


def write_torchscript(generator: torch.nn.Module, spec: GeneratorSpec, path: Path, half: bool):
    """A traced graph, in fp32 (``half`` does not apply)."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(generator, _example(spec), check_trace=False)
        torch.jit.save(traced, str(path))


SAFETENSORS = ExportFormat(
    name="safetensors",
    label="safetensors",
    weight_file="generator.safetensors",
    runtimes=("torch", "torch-bf16", "torch-fp16", "torch-compile", "torch-compile-bf16"),
    package="torch",
    fixes_inference_mode=False,
    carries_dropout=True,
    write=write_safetensors,
)
ONNX = ExportFormat(
    name="onnx",
    label="ONNX",
    weight_file="generator.onnx",
    runtimes=("onnx",),
    package="onnxruntime",
    fixes_inference_mode=True,
    carries_dropout=False,
    write=write_onnx,
)
TORCHSCRIPT = ExportFormat(
    name="torchscript",
    label="TorchScript",
    weight_file="generator.torchscript.pt",
    runtimes=("torchscript",),
    package="torch",
    fixes_inference_mode=True,
    carries_dropout=True,
    write=write_torchscript,
)

EXPORT_FORMATS = (SAFETENSORS, ONNX, TORCHSCRIPT)
EXPORT_FORMAT_NAMES = tuple(entry.name for entry in EXPORT_FORMATS)
RUNTIMES = tuple(runtime for entry in EXPORT_FORMATS for runtime in entry.runtimes)


def export_format(name: str) -> ExportFormat:
    """The format called ``name``; an unknown name is an error that lists the known ones."""
    for entry in EXPORT_FORMATS:
        if entry.name == name:
            return entry
    raise CheckpointError(
        f"unknown export format {name!r} (choose {', '.join(EXPORT_FORMAT_NAMES)})"
    )


def format_of_runtime(runtime: str) -> ExportFormat:
    """The format whose file ``runtime`` runs; an unknown runtime is an error listing them."""
    for entry in EXPORT_FORMATS:
        if runtime in entry.runtimes:
            return entry
    raise CheckpointError(f"unknown runtime {runtime!r} (choose from auto, {', '.join(RUNTIMES)})")
