"""Keep freed memory in the process for reuse: glibc malloc tuning for ``qbench run``.

A run allocates and frees the same activation-sized tensors batch after batch, twice over
(the FP32 model and its twin) plus what the metrics hold. glibc's malloc serves every block
above its mmap threshold (128 KiB, growing to at most 32 MiB) with a fresh ``mmap`` and
gives it back with ``munmap`` when freed, so each batch pays a page fault, and the zeroing
of a page, for every 4 KiB it touches: on resnet18 at batch 16, about a million faults per
run, a tenth to a fifth of the run's time. With mmap turned off for heap blocks and the
trim threshold raised, freed blocks stay in the heap and the next batch reuses them (no
fault, no zeroing). Memory is not returned to the OS before the process ends, so the
resident size stays at the run's peak, which the run reaches on its first batch anyway.

This is what ``qbench run`` does at start; :func:`keep_freed_memory` does it for a program
that calls :func:`qbench.run` itself. A process-wide setting: ``QBENCH_MALLOC_TUNING=0``
turns it off. Elsewhere than Linux with glibc it does nothing.

:func:`objects_frozen` is the other half, for Python objects: every :func:`qbench.run`
keeps the objects that existed before it out of the garbage collector's passes (see there).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
from collections.abc import Iterator

#: mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Free memory at the top of the heap kept rather than trimmed (bytes; mallopt takes an int).
TRIM_THRESHOLD = 2**31 - 1

_applied: bool | None = None


def enabled() -> bool:
    """Whether the tuning is allowed here (QBENCH_MALLOC_TUNING is not 0/false/no)."""
    return os.environ.get("QBENCH_MALLOC_TUNING", "1").strip().lower() not in ("0", "false", "no")


def keep_freed_memory() -> bool:
    """Tune glibc malloc to keep freed blocks for reuse (see the module docstring), once per
    process. True if the tuning is in effect."""
    global _applied
    if _applied is None:
        _applied = enabled() and sys.platform.startswith("linux") and _mallopt()
    return _applied


def _mallopt() -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols to load, or no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # glibc returns 1 on success; musl's stub returns 0 (and has nothing to tune).
    # Large blocks then come from the heap; glibc still falls back to mmap where the heap
    # cannot grow, so no allocation fails for it.
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


@contextlib.contextmanager
def objects_frozen() -> Iterator[bool]:
    """Leave the objects that exist on entry out of the garbage collector's passes until exit.

    A process with torch, its compiler and a prepared model loaded tracks half a million
    Python objects or more, and a full collection walks every one (measured: see
    benchmarks/README.md). A run's churn of objects triggers such collections: about one in two
    runs repeated in one process, several in a fresh process's first run, whose compiled
    kernels add objects of their own. ``gc.freeze`` moves the existing objects aside, so
    collections during the run only walk what the run made; ``gc.unfreeze`` at exit hands
    them back, so garbage among them is only collected later, never lost. If something else
    froze objects already, nothing is done (unfreezing would release theirs too). Yields
    whether it froze.
    """
    if gc.get_freeze_count():
        yield False
        return
    gc.freeze()
    try:
        yield True
    finally:
        gc.unfreeze()
