"""``qbench run``: config -> components -> FP32 and quantized forwards in lockstep -> reports.

DESIGN.md §8. Metrics stream (each batch is seen once and dropped), the quantized twin is
prepared once (weights quantized once), and reporters write atomically.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .config import MEMORY_FORMATS, Config, load_config
from .errors import QBenchError
from .memory import objects_frozen
from .plugins import get
from .types import BatchOutputs


@dataclass
class RunResult:
    """What a run produced: the report mapping, where it was written, and the files."""

    report: dict[str, Any]
    out_dir: Path
    files: list[Path] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.report["metrics"]


def resolve_device(requested: str | None) -> str:
    import torch

    requested = requested or "auto"
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise QBenchError(
            "device 'cuda' was requested but CUDA is not available here; use --device cpu or auto"
        )
    if requested not in ("cpu", "cuda"):
        raise QBenchError(f"unknown device {requested!r}; allowed: auto, cpu, cuda")
    return requested


def resolve_memory_format(requested: str | None, device: str, model: Any) -> str:
    """``contiguous`` or ``channels_last`` for a run's 4-D tensors. ``auto`` picks channels-last
    on CPU for a model with 2-D convolutions: oneDNN convolves NHWC data without the reorders
    NCHW costs on every call (resnet18's FP32 forward at batch 16 is about 25% faster on a
    2-core x86 VM), and the quantizer, the layer-wise sums and the audit read either layout
    in one linear sweep. On CUDA (IEEE FP32, no TF32) ``auto`` keeps the contiguous layout:
    on an H200, channels-last made a resnet18 run no faster."""
    import torch

    requested = requested or "auto"
    if requested not in MEMORY_FORMATS:
        raise QBenchError(
            f"unknown memory_format {requested!r}; allowed: {', '.join(MEMORY_FORMATS)}"
        )
    if requested != "auto":
        return requested
    convolves = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return "channels_last" if device == "cpu" and convolves else "contiguous"


#: Where each TF32 switch lives under torch.backends: the legacy ``allow_tf32`` flag, and
#: the newer ``fp32_precision`` setting for the same kernels.
_TF32_SWITCHES = ((("cudnn",), ("cudnn", "conv")), (("cuda", "matmul"), ("cuda", "matmul")))


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """FP32 means IEEE FP32 on CUDA too, for as long as the block runs.

    torch lets cuDNN convolutions use TF32 (a 10-bit mantissa) by default on Ampere and
    later GPUs, and a user may have allowed it for matmuls: the "FP32" reference would then
    carry rounding of its own, near bf16's, and a study of a format would blame the format
    for it. Both switches are turned off here and restored after, whichever of torch's two
    APIs for them (``allow_tf32`` or the newer ``fp32_precision``) the user has set. On CPU
    they change nothing.
    """
    import torch

    restore: list[tuple[Any, str, Any]] = []
    try:
        for legacy_path, new_path in _TF32_SWITCHES:
            holder, name, value = _backend(torch, legacy_path), "allow_tf32", False
            try:  # torch refuses the legacy flag once the new API has set this switch
                before = getattr(holder, name)
            except RuntimeError:
                holder, name, value = _backend(torch, new_path), "fp32_precision", "ieee"
                before = getattr(holder, name)
            setattr(holder, name, value)
            restore.append((holder, name, before))
        yield
    finally:
        for holder, name, before in reversed(restore):
            setattr(holder, name, before)


def _backend(torch: Any, path: Iterable[str]) -> Any:
    holder = torch.backends
    for part in path:
        holder = getattr(holder, part)
    return holder


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", part).strip("._") or "unnamed"


class _FanOut:
    """One observer for ``qbench.prepare.observe`` that forwards to every metric that observes."""

    def __init__(self, observers: list[Any]):
        self.observers = observers

    def on_tensor(self, layer: str, role: str, result: Any) -> None:
        for observer in self.observers:
            observer.on_tensor(layer, role, result)


@objects_frozen()  # full collections during a run skip what existed before it
@full_fp32()  # the reference is IEEE FP32 on CUDA too, not TF32
def run(
    config: str | os.PathLike[str] | Mapping[str, Any] | Config,
    *,
    limit: int | None = None,
    device: str | None = None,
    output: str | os.PathLike[str] | None = None,
    progress: Callable[[Iterable[Any], int | None, str], Iterable[Any]] | None = None,
) -> RunResult:
    """Run one config end to end and write its reports. Returns a :class:`RunResult`."""
    import torch

    from .prepare import observe, preparation_report, prepare

    cfg = config if isinstance(config, Config) else load_config(config)
    data = cfg.data
    dev = resolve_device(device or data.get("device"))
    torch.manual_seed(int(data.get("seed", 0)))
    started = time.perf_counter()

    model_options = dict(data["model"])
    bundle = get("adapter", model_options["adapter"]).build(model_options, device=dev)
    reference = bundle.model.to(dev).eval()
    requested_layout = data.get("memory_format") or "auto"
    layout = resolve_memory_format(requested_layout, dev, reference)
    if layout == "channels_last":  # before prepare: the twin is a copy, quantizing these weights
        reference = reference.to(memory_format=torch.channels_last)

    dataset_options = dict(data["dataset"])
    if limit is not None:
        if limit < 1:
            raise QBenchError(f"--limit must be >= 1, found {limit}")
        dataset_options["limit"] = limit
    batches = get("dataset", dataset_options["name"]).build(dataset_options, bundle=bundle)
    total = _length(batches)
    if layout == "channels_last":
        batches, runs = _runs_channels_last(reference, batches, dev, requested_layout)
        if not runs:  # auto, and the model cannot: back to the contiguous layout
            reference = reference.to(memory_format=torch.contiguous_format)
            layout = "contiguous"
    channels_last = layout == "channels_last"

    quantization = dict(data.get("quantization") or {})
    quantized = prepare(reference, quantization).to(dev).eval()
    prep = preparation_report(quantized)

    evaluation = data.get("evaluation") or {}
    metrics: dict[str, Any] = {}
    for name in evaluation.get("metrics", []):
        metrics[name] = get("metric", name)(evaluation.get(name))
    context = {
        "config_dir": cfg.directory,
        "device": dev,
        "bundle": bundle,
        "quantization": quantization,
        "preparation": prep,
    }
    for metric in metrics.values():
        metric.attach(reference, quantized, context)

    observers = [m for m in metrics.values() if hasattr(m, "on_tensor")]
    images = 0
    try:
        with contextlib.ExitStack() as stack:
            if observers:
                stack.enter_context(observe(quantized, _FanOut(observers)))
            # no_grad, not inference_mode: inference tensors carry no version counter, which
            # the ops use to share one quantization of a tensor between consecutive layers.
            stack.enter_context(torch.no_grad())
            iterator = progress(batches, total, cfg.name) if progress is not None else batches
            for index, (inputs, targets) in enumerate(iterator):
                inputs = inputs.to(dev, non_blocking=True)
                if channels_last and inputs.dim() == 4:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                reference_logits = reference(inputs)
                quantized_logits = quantized(inputs)
                batch = BatchOutputs(targets.to(dev), reference_logits, quantized_logits, index)
                for metric in metrics.values():
                    metric.update(batch)
                images += int(targets.shape[0])
    finally:
        for metric in metrics.values():
            close = getattr(metric, "close", None)
            if close is not None:
                close()
    if images == 0:
        raise QBenchError(
            f"dataset {dataset_options['name']!r} yielded no images; check its root/split/limit"
        )

    report: dict[str, Any] = {
        "qbench_version": __version__,
        "name": cfg.name,
        "model": bundle.name,
        "config_file": str(cfg.path) if cfg.path is not None else None,
        "dataset": {
            "name": dataset_options["name"],
            "split": dataset_options.get("split"),
            "images": images,
        },
        "device": dev,
        "memory_format": layout,
        "elapsed_s": round(time.perf_counter() - started, 3),
        "quantization": quantization,
        "preparation": prep,
        "metrics": {name: metric.result() for name, metric in metrics.items()},
    }
    # Relative output dirs are relative to the working directory, like every other CLI path.
    out_root = Path(output) if output is not None else Path(data["output"]["dir"])
    out_dir = out_root / _safe(bundle.name) / _safe(cfg.name)
    files: list[Path] = []
    for reporter_name in data["output"]["reporters"]:
        files.extend(Path(p) for p in get("reporter", reporter_name).write(report, out_dir))
    return RunResult(report, out_dir, files)


def _runs_channels_last(
    model: Any, batches: Iterable[Any], device: str, requested: str
) -> tuple[Iterable[Any], bool]:
    """Whether ``model``, converted to channels-last, runs on one image of the first batch:
    a forward that reshapes an activation with ``view`` (``x.view(n, -1)`` after a
    convolution, common in older models) cannot take a channels-last tensor. Returns the
    batches to iterate (the first one put back in front) and the answer. Where the config
    asked for ``channels_last`` itself, a model that cannot is a user error; under ``auto``
    the run goes on contiguous (and a model that fails either way fails in the run proper,
    with its own error)."""
    import torch

    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        return [], True
    batches = itertools.chain([first], iterator)
    inputs = first[0]
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or inputs.shape[0] == 0:
        return batches, True
    sample = inputs[:1].to(device).contiguous(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            model(sample)
    except RuntimeError as exc:
        if requested != "channels_last":
            return batches, False
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QBenchError(
            f"memory_format: channels_last: the model cannot run on channels-last tensors "
            f"({reason[:200]}); allowed: auto (falls back to contiguous) or contiguous"
        ) from exc
    return batches, True


def _length(batches: Any) -> int | None:
    try:
        return len(batches)
    except TypeError:
        return None
