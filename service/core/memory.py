"""What a loaded model costs in memory: the process's resident set, read before and after a load.

ONNX Runtime does not say what a session holds, so the loader measures it: give freed heap back to
the system (glibc keeps freed pages of a load's transient buffers, ~6 MiB a model, unless asked),
read the resident set, load and warm, do both again. Concurrent inference can move the figure a
little either way; it is what GET /models, vaeserve_model_memory_bytes and
VAESERVE_MAX_LOADED_BYTES go by.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from functools import cache


def resident_bytes() -> int | None:
    """The process's resident set size (Linux /proc); None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_freed_memory() -> None:
    """Return freed heap pages to the system (glibc malloc_trim); nothing elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
