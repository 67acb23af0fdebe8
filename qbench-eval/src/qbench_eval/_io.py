"""Small helpers shared by the reporters: JSON-safe values and atomic file writes."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with every leaf turned into something strict JSON can hold.

    Strict JSON has no NaN or infinity (RFC 8259 §6), so non-finite floats become the strings
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` rather than being dropped: a report must not
    hide that a layer produced NaN. Tensors and numpy scalars become Python numbers or lists,
    paths become strings, tuples and sets become lists.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [json_safe(v) for v in sorted(value, key=repr)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # torch tensors, numpy arrays and scalars
    if callable(tolist):
        return json_safe(tolist())
    return str(value)


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    POSIX has no call that only reads the umask: ``os.umask`` sets it and returns the old one,
    which for a moment changes it for every thread. Linux >= 4.7 shows it in
    ``/proc/self/status`` (proc(5), "Umask:"), so that is read first; elsewhere it is set to
    the common 0o022 (never to 0, so a file another thread creates meanwhile is never
    world-writable) and restored at once, under a lock so two callers cannot interleave.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half.

    The temporary file lives in the destination directory because ``os.replace`` is atomic
    only within one filesystem (POSIX rename(2)); it is fsynced before the rename so a crash
    cannot leave an empty file under the final name. ``mkstemp`` creates the file 0600
    whatever the umask, so it is given the mode ``open()`` would have given a new file
    (0o666 less the umask) before the rename: reports are shared like any other output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o666 & ~current_umask()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), mode)
            else:  # Windows before Python 3.13: only the read-only bit exists anyway
                os.chmod(tmp_name, mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return path
