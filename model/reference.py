"""Import generators trained with the reference implementation (pytorch-CycleGAN-and-pix2pix).

Its ``latest_net_G.pth`` is a state dict of a recursively nested U-Net whose blocks hold a
``model`` Sequential: ``[down..., inner block, up...]``. This module maps those names onto
``model.networks.UNetGenerator`` and writes a model folder with a spec, loading the file with
``torch.load(weights_only=True)`` so that no pickled code can run.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from model.checkpoint import save_model_folder
from model.errors import CheckpointError
from model.networks import UNetGenerator
from model.spec import GeneratorArchitecture, GeneratorSpec

REFERENCE_UNETS = {"unet_128": 7, "unet_256": 8}


def reference_key_map(num_downs: int, norm: str) -> dict[str, str]:
    """Our parameter/buffer name -> the reference's, for a U-Net with ``num_downs`` levels."""
    norm_keys = {
        "batch": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
        "instance": (),
        "none": (),
    }[norm]
    conv_bias = norm != "batch"
    mapping: dict[str, str] = {}

    def conv(ours: str, theirs: str, bias: bool) -> None:
        mapping[f"{ours}.weight"] = f"{theirs}.weight"
        if bias:
            mapping[f"{ours}.bias"] = f"{theirs}.bias"

    def batch_norm(ours: str, theirs: str) -> None:
        for key in norm_keys:
            mapping[f"{ours}.{key}"] = f"{theirs}.{key}"

    innermost = num_downs - 1
    # Outermost: model.0 = down conv, model.3 = up conv (with bias), then tanh.
    conv("encoder.0.conv", "model.model.0", conv_bias)
    conv("output.1", "model.model.3", True)
    for depth in range(1, num_downs):
        # The key prefix of the block ``depth`` levels inside the outermost one.
        prefix = "model.model.1" + ".model.3" * (depth - 1)
        if depth == innermost:
            # Innermost: [relu, down conv, relu, up conv, up norm].
            conv(f"encoder.{depth}.conv", f"{prefix}.model.1", conv_bias)
            conv("decoder.0.conv", f"{prefix}.model.3", conv_bias)
            batch_norm("decoder.0.norm", f"{prefix}.model.4")
            continue
        # Middle: [relu, down conv, down norm, inner, relu, up conv, up norm, (dropout)].
        decoder = innermost - depth
        conv(f"encoder.{depth}.conv", f"{prefix}.model.1", conv_bias)
        batch_norm(f"encoder.{depth}.norm", f"{prefix}.model.2")
        conv(f"decoder.{decoder}.conv", f"{prefix}.model.5", conv_bias)
        batch_norm(f"decoder.{decoder}.norm", f"{prefix}.model.6")
    return mapping


def load_reference_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused to load: the file needs to run pickled code ({error}). Only "
            "plain state dicts of tensors are accepted"
        ) from error
    except (RuntimeError, OSError, EOFError) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (latest_net_G.pth)")
    # DataParallel prefixes; instance-norm buffers that old reference versions saved by mistake.
    return {key.removeprefix("module."): value for key, value in state.items()}


def import_reference(
    path: str | Path,
    out: str | Path,
    net: str = "unet_256",
    norm: str = "batch",
    in_channels: int = 3,
    out_channels: int = 3,
    direction: str = "AtoB",
    dropout: bool = True,
    task: str = "",
) -> GeneratorSpec:
    """Convert a reference ``latest_net_G.pth`` into a model folder at ``out``."""
    if net not in REFERENCE_UNETS:
        raise CheckpointError(
            f"--netG {net!r} is not supported; choose {', '.join(REFERENCE_UNETS)} "
            "(ResNet generators are not part of pix2pix's U-Net family)"
        )
    num_downs = REFERENCE_UNETS[net]
    state = load_reference_state(path)
    mapping = reference_key_map(num_downs, norm)
    missing = sorted(theirs for theirs in mapping.values() if theirs not in state)
    if missing:
        raise CheckpointError(
            f"{path}: does not look like a {net} with {norm} norm; missing "
            f"{len(missing)} keys, e.g. {', '.join(missing[:3])}"
        )
    generator = UNetGenerator(in_channels, out_channels, num_downs, base_width=64, norm=norm)
    ours = {key: state[theirs] for key, theirs in mapping.items()}
    try:
        generator.load_state_dict(ours, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: shapes do not match {net} with {in_channels}->{out_channels} channels "
            f"and base width 64: {error}"
        ) from error
    size = 2**num_downs
    spec = GeneratorSpec(
        architecture=GeneratorArchitecture(
            num_downs=num_downs, base_width=64, norm=norm, dropout=dropout
        ),
        in_channels=in_channels,
        out_channels=out_channels,
        input_kind="photo" if in_channels == 3 else "grayscale",
        train_size=size,
        pad_multiple=size,
        task=task or f"reference-{net}",
        direction=direction,
        extra={"imported_from": str(path)},
    )
    save_model_folder(out, generator, spec)
    return spec
