"""Where a run trains: the device it picks and the autocast precision it can have there."""

from __future__ import annotations

import logging

import torch

from model.cpu_features import native_bf16
from training.config import ConfigError

logger = logging.getLogger(__name__)


def select_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r}, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device = {name!r}, but MPS is not available here")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision = 'fp16' needs a GPU; use 'bf16' on the CPU")
    if precision == "bf16" and device.type == "cpu" and not native_bf16():
        # Emulated bf16 ran 0.7x (AVX-512) to 0.06x (AVX2) the speed of fp32 in bench/train.py.
        logger.warning(
            "train.precision = 'bf16' asked for, but this CPU has no bf16 instructions "
            "(AVX512-BF16 or AMX), where bf16 is emulated and slower than fp32: training in fp32"
        )
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16
