"""Keep the memory a process frees for reuse, instead of handing it back to
the OS and page-faulting it in again.

By default glibc gives allocations above an adaptive threshold (at most 32
MiB) their own fresh mapping and returns the top of its heap to the OS
whenever more than twice that is free. A gradient loop frees its activations
after every chunk and allocates the same sizes again for the next one, so
each chunk page-faults them back in. On the 2-core development machine that
made the audit of 256 digits 1.75x slower (2.00 s against 1.14 s, best of 3,
``benchmarks/audit.py``), a conv net's
SmoothGrad call spent up to a third of its time in the kernel, and how much
varied from process to process with its allocation history.

It is a setting of the whole process that lasts for its life (glibc has no
way back to its adaptive defaults), so the library never makes it on its
own: the ``fastattr`` command does, for its own process (``fastattr.cli.main``
called from Python leaves the caller's allocator alone), and a script can
call :func:`keep_freed_memory` at its start. ``FASTATTR_DEFAULT_HEAP=1``
keeps glibc's defaults in both.
"""
from __future__ import annotations

import ctypes
import os

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Never trim (the largest value mallopt takes) and no separate mappings: freed
# memory stays in the heap for the next chunk.
_KEEP = ((_M_TRIM_THRESHOLD, 2**31 - 1), (_M_MMAP_MAX, 0))
OPT_OUT = "FASTATTR_DEFAULT_HEAP"


def keep_freed_memory() -> bool:
    """Make this process's C allocator keep the memory it frees for reuse
    (for the rest of the process's life); True when it did, i.e. in a glibc
    process without ``FASTATTR_DEFAULT_HEAP=1``. Freed memory then stays
    mapped: the process's resident size stays at its peak."""
    if os.environ.get(OPT_OUT, "0") not in ("", "0"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc: nothing to tune
        return False
    return all(mallopt(param, value) == 1 for param, value in _KEEP)
