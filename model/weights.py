"""Network weights as safetensors files: a module's tensors written atomically, free of wrappers.

Checkpoints (``model.checkpoint``) and the safetensors export format (``model.export_formats``)
both write weights through these functions, so a checkpoint and an export hold the same file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from model.atomic_files import write_atomic


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata=None) -> None:
    """Write a safetensors file atomically."""
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    write_atomic(path, lambda temp: save_file(contiguous, str(temp), metadata=metadata))


def state_dict_for_saving(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict without the prefixes of DDP or torch.compile wrappers."""
    module = getattr(module, "module", module)
    module = getattr(module, "_orig_mod", module)
    return dict(module.state_dict())


def save_weights(module: nn.Module, path: Path, dtype: torch.dtype | None = None) -> None:
    """Write a module's weights to ``path``; floating-point tensors cast to ``dtype`` if given."""
    tensors = state_dict_for_saving(module)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_tensors_atomic(tensors, path)
