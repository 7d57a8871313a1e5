"""glibc malloc settings for the process that trains.

Ray Train runs the training function on a thread of the worker process, not on its main
thread, and glibc gives such a thread its own malloc arena. A thread arena's heap is
shrunk with ``madvise(MADV_DONTNEED)`` whenever its free top grows past the trim
threshold, and torch's CPU allocator hands every activation and gradient buffer back to
malloc at the end of a step: the next step faults the same pages in again and the kernel
zeroes them (``perf`` on the CNN: 11 % of the training thread's time in the kernel, page
faults and ``clear_page`` first, against 3 % in a plain DDP process; README
"Performance"). Keeping those pages is what the main thread's arena already does through
glibc's dynamic thresholds.

``keep_freed_memory`` sets the two thresholds that make a thread arena behave that way:
buffers up to 32 MiB (glibc's largest ``M_MMAP_THRESHOLD``) come from the heap rather than
their own ``mmap``, and the heap's free top is returned to the kernel only past 1 GiB.
The cost is that a worker keeps the memory of its largest step resident between steps,
which it needs again at the next one anyway.

Configuring malloc yourself (``MALLOC_*_`` variables or ``glibc.malloc`` tunables) wins:
then nothing is changed. Not glibc (musl, macOS): nothing is changed either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's maximum on 64-bit (``HEAP_MAX_SIZE / 2``); larger values are refused."""
TRIM_THRESHOLD = 1024 * 1024 * 1024

_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX")


def user_configured(env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """The variable through which the user configured the allocator, if any."""
    for name in _USER_SETTINGS:
        if env.get(name):
            return name
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (see the module docstring).
    True when they were set; False when the user configured malloc, or this is not glibc."""
    if (why := user_configured()) is not None:
        log.debug("malloc left as configured (%s)", why)
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 for a value out of range.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
