"""What produced a report, recorded in it so that a number can be traced and rerun.

Published quantization tables often fail to reproduce because of preprocessing and version
drift. Every report carries ``provenance``: the resolved config with its defaults filled in,
QBench's version and every plugin distribution's, torch's, torchvision's and Python's, the
device and thread count, the seed, a fingerprint of the evaluated data and one of the model's
weights, and the start time. :func:`compare` says whether a rerun gave the same numbers
(``qbench run --reproduce report.json``).
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .version import __version__


def collect(
    config: Mapping[str, Any],
    config_dir: str,
    device: str,
    *,
    weights: str,
    data: str | None,
    started: datetime.datetime,
) -> dict[str, Any]:
    """The provenance of a run (see the module docstring); ``weights`` and ``data`` are the
    fingerprints (:func:`weights_fingerprint`, :func:`data_fingerprint`)."""
    import torch

    from .plugins import host

    versions = {"qbench": __version__, "python": platform.python_version()}
    versions["torch"] = torch.__version__
    torchvision = sys.modules.get("torchvision")
    if torchvision is not None:
        versions["torchvision"] = torchvision.__version__
    return {
        "started": started.isoformat(timespec="seconds"),
        "config": dict(config),
        "config_dir": config_dir,
        "versions": versions,
        "plugins": sorted(
            {f"{p.distribution} {p.version}" for p in host().plugins if p.status == "ok"}
        ),
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "seed": config.get("seed", 0),
        "weights_sha256": weights,
        "data_sha256": data,
    }


def device_name(device: str) -> str:
    """``cuda: NVIDIA H200`` / ``cpu: <processor model>``."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                "",
            )
    except OSError:
        pass
    return f"cpu: {model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def weights_fingerprint(model: Any) -> str:
    """SHA-256 over the model's state_dict: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        # the tensor's own bytes, read in place (core does not depend on numpy)
        digest.update(ctypes.string_at(data.data_ptr(), data.numel() * data.element_size()))
    return digest.hexdigest()


def data_fingerprint(batches: Any) -> str | None:
    """SHA-256 over the evaluated samples: each file's path, size and label (or an in-memory
    sample's bytes), in order; None where the dataset does not list its samples."""
    samples = getattr(batches, "samples", None)
    if samples is None:
        return None
    digest = hashlib.sha256()
    for sample in samples:
        item, label = (sample[0], sample[1]) if isinstance(sample, tuple) else (sample, "")
        digest.update(_sample_bytes(item) + f"|{label}\n".encode())
    return digest.hexdigest()


def _sample_bytes(item: Any) -> bytes:
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        return f"{os.path.basename(path)}|{size}".encode()
    tobytes = getattr(item, "tobytes", None)
    if callable(tobytes):
        return hashlib.sha256(tobytes()).digest()
    numpy = getattr(item, "numpy", None)
    if callable(numpy):
        return hashlib.sha256(numpy().tobytes()).digest()
    return repr(item).encode()


#: Result keys compared by :func:`compare` (exactly: the same code on the same data and
#: machine gives the same bits; another machine may differ in the last digits).
COMPARED = ("accuracy", "compliance", "layerwise")


def compare(before: Mapping[str, Any], after: Mapping[str, Any], *, rel: float = 0.0) -> list[str]:
    """The numbers that differ between two reports' metrics (empty: they match), one line
    each, with both values; ``rel`` is the relative tolerance for floats."""
    differences: list[str] = []
    old, new = before.get("metrics") or {}, after.get("metrics") or {}
    for name in sorted(set(old) | set(new)):
        differences.extend(_differ(old.get(name), new.get(name), name, rel))
    if (before.get("dataset") or {}).get("images") != (after.get("dataset") or {}).get("images"):
        differences.append(
            f"dataset.images: {before['dataset'].get('images')} then "
            f"{after['dataset'].get('images')}"
        )
    return differences


def _differ(a: Any, b: Any, where: str, rel: float) -> Iterable[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            if key in ("elapsed_s", "warnings"):
                continue
            yield from _differ(a.get(key), b.get(key), f"{where}.{key}", rel)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b)):
            yield from _differ(x, y, f"{where}[{index}]", rel)
    elif isinstance(a, float) and isinstance(b, float):
        same = a == b or (a != a and b != b) or abs(a - b) <= rel * max(abs(a), abs(b))
        if not same:
            yield f"{where}: {a!r} then {b!r}"
    elif a != b:
        yield f"{where}: {_short(a)} then {_short(b)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
