"""Which fast CPU instructions this process may use: bf16 matrix math (AVX512-BF16, AMX)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

# oneDNN's ISA names at or above which it has bf16 dot-product kernels; ONEDNN_MAX_CPU_ISA caps
# what oneDNN dispatches to, so a cap below these means bf16 is emulated even on a CPU that
# has the instructions.
_BF16_ISAS = ("BF16", "AMX", "FP16", "AVX10")
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo; None where that file does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


@functools.cache
def native_bf16() -> bool:
    """Whether bf16 matrix math runs on bf16 instructions here rather than being emulated.

    Without them (AVX2, or AVX-512 without BF16) oneDNN emulates bf16 and a bf16 training step
    is slower than fp32. Unknown platforms (no /proc/cpuinfo) are taken to have them, so that
    an explicit choice of bf16 is respected there.
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and cap not in ("ALL", "DEFAULT") and not any(name in cap for name in _BF16_ISAS):
        return False
    flags = _cpu_flags()
    return flags is None or bool(flags & _CPU_BF16_FLAGS)
