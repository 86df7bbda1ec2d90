"""Memory given back to the operating system (glibc): big buffers through mmap, few malloc arenas,
and what a stopped model version freed returned at once.

Requests allocate and free buffers of tens of MB (decoded images, tiles, outputs) on many
threads, and every model version loaded and stopped leaves its own allocations behind. glibc's
defaults keep freed memory in per-thread arenas, so under mixed load the RSS ratchets up by
hundreds of MB. A fixed mmap threshold returns big buffers when they are freed; ``malloc_trim``
returns the free pages left between the small allocations that stay.
"""

from __future__ import annotations

import ctypes
import functools
import platform

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def configure_malloc() -> None:
    """Serve buffers of 128 KB and more with mmap, and cap malloc arenas at two."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(M_ARENA_MAX, 2)


def give_back_freed_memory() -> None:
    """Return every free page of the malloc arenas to the operating system (a few ms; call it
    off the event loop)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
