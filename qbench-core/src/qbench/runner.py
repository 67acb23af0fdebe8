"""``qbench run``: config -> components -> FP32 and quantized forwards in lockstep -> reports.

Metrics stream (each batch is seen once and dropped), the quantized twin is prepared once
(weights quantized once), and reporters write atomically.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from . import provenance
from .config import DEFAULT_MIN_WEIGHT_COVERAGE, MEMORY_FORMATS, Config, load_config
from .errors import QBenchError
from .kernels import expecting, stays_eager
from .lockstep import Lockstep
from .memory import objects_frozen
from .output import check_location, run_key, write_report_set
from .plugins import get
from .types import BatchOutputs
from .version import __version__


@dataclass
class RunResult:
    """What a run produced: the report mapping, where it was written, and the files."""

    report: dict[str, Any]
    out_dir: Path
    files: list[Path] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.report["metrics"]

    @property
    def failed(self) -> list[str]:
        """The metrics whose verdict (a result's ``status``) is ``FAIL``: the audit's, say."""
        return [
            name
            for name, result in self.metrics.items()
            if isinstance(result, Mapping) and result.get("status") == "FAIL"
        ]


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
    NCHW costs on every call, and the quantizer, the layer-wise sums and the audit read either
    layout in one linear sweep. On CUDA (IEEE FP32, no TF32) ``auto`` keeps the contiguous
    layout: there channels-last made a resnet18 run no faster (measured: see
    benchmarks/README.md)."""
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


class _FanOut:
    """One observer for ``qbench.preparation.observe``, forwarding to every metric that observes."""

    def __init__(self, observers: list[Any]):
        self.observers = observers

    def on_tensor(self, layer: str, role: str, result: Any) -> None:
        for observer in self.observers:
            observer.on_tensor(layer, role, result)


@dataclass
class _Reference:
    """The FP32 side a group of runs shares: one model on one device and layout, one dataset.
    Twins of configs that agree on all of it (:func:`reference_key`) are run beside it in
    lockstep, so each batch's FP32 forward is computed once for all of them."""

    cfg: Config
    dev: str
    bundle: Any
    model: Any
    layout: str
    requested_layout: str
    dataset_options: dict[str, Any]
    batches: Any
    total: int | None
    classes: int | None
    key: str
    built_s: float
    calibration_batches: int = 0  # the first batches, which calibrate and are not evaluated
    probed: bool = False  # the channels-last probe ran (on the first pass)
    _fingerprints: tuple[str, str | None] | None = None

    def fingerprints(self) -> tuple[str, str | None]:
        """(weights SHA-256, data SHA-256), computed once for every twin of the group."""
        if self._fingerprints is None:
            self._fingerprints = (
                provenance.weights_fingerprint(self.bundle.model),
                provenance.data_fingerprint(self.batches),
            )
        return self._fingerprints


@dataclass
class _Twin:
    """One config's quantized model, its metrics and where its reports go."""

    cfg: Config
    location: Any
    reporters: list[tuple[str, Any, str]]
    quantization: dict[str, Any]
    result_key: str
    extra: dict[str, Any]
    model: Any = None
    prep: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    rng: list[Any] = field(default_factory=list)
    prepare_s: float = 0.0


#: Top-level config keys a group of twins must agree on to share one FP32 reference (the
#: call groups too: the FP32 model's call sites are recorded for the layer-wise comparison).
SHARED_KEYS = ("model", "dataset", "device", "memory_format", "seed", "calibration")


def reference_key(cfg: Config, limit: int | None = None, device: str | None = None) -> str:
    """What twins must agree on to share an FP32 reference (see :data:`SHARED_KEYS`)."""
    import json

    data = cfg.data
    shared = {key: data.get(key) for key in SHARED_KEYS}
    shared["device"] = device or data.get("device")
    shared["limit"] = limit
    shared["functions"] = (data.get("quantization") or {}).get("functions")
    shared["config_dir"] = str(cfg.directory)
    return json.dumps(shared, sort_keys=True, default=str)


def run(
    config: str | os.PathLike[str] | Mapping[str, Any] | Config,
    *,
    limit: int | None = None,
    device: str | None = None,
    output: str | os.PathLike[str] | None = None,
    progress: Callable[[Iterable[Any], int | None, str], Iterable[Any]] | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Run one config end to end and write its reports. Returns a :class:`RunResult`.

    The output location is checked before the first batch (``overwrite`` allows replacing
    the report of another run there); the reports are written as one set (``qbench.output``).
    """
    cfg = _single(config, "run")
    reference = build_reference(cfg, limit=limit, device=device)
    twin = plan_twin(reference, cfg, output=output, overwrite=overwrite)
    return run_twins(reference, [twin], progress=progress)[0]


def _single(config: str | os.PathLike[str] | Mapping[str, Any] | Config, what: str) -> Config:
    """``config`` loaded, refused if it is a sweep (its own quantization may name no format:
    the grid does)."""
    cfg = config if isinstance(config, Config) else load_config(config)
    if cfg.data.get("sweep"):
        raise QBenchError(
            f"{cfg.path or cfg.name}: a config with a sweep section is many configs; "
            f"allowed: qbench run (or qbench.sweep.run_sweep), or {what} one config of its "
            "grid (qbench.sweep.expand)"
        )
    return cfg


def build_reference(
    cfg: Config, *, limit: int | None = None, device: str | None = None
) -> _Reference:
    """Build the FP32 model and the dataset of ``cfg`` (the shared side of a run)."""
    import torch

    started = time.perf_counter()
    data = cfg.data
    dev = resolve_device(device or data.get("device"))
    torch.manual_seed(int(data.get("seed", 0)))
    model_options = dict(data["model"])
    bundle = get("adapter", model_options["adapter"]).build(model_options, device=dev)
    model = bundle.model.to(dev).eval()
    requested_layout = data.get("memory_format") or "auto"
    layout = resolve_memory_format(requested_layout, dev, model)
    if layout == "channels_last":  # before prepare: the twin is a copy, quantizing these weights
        model = model.to(memory_format=torch.channels_last)
    dataset_options = _dataset_options(data, limit)
    calibration = int((data.get("calibration") or {}).get("batches", 0))
    read = dict(dataset_options)  # what the dataset is asked for; the report keeps the limit
    if calibration and read.get("limit") is not None:
        # a limit counts evaluated images: the calibration images come on top of them
        read["limit"] += calibration * int(read["batch_size"])
    batches = get("dataset", read["name"]).build(read, bundle=bundle)
    return _Reference(
        cfg=cfg,
        dev=dev,
        bundle=bundle,
        model=model,
        layout=layout,
        requested_layout=requested_layout,
        dataset_options=dataset_options,
        batches=batches,
        total=_length(batches),
        classes=_dataset_classes(batches),
        key=run_key(model_options, dataset_options),
        built_s=time.perf_counter() - started,
        calibration_batches=calibration,
    )


def plan_twin(
    reference: _Reference,
    cfg: Config,
    *,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> _Twin:
    """Check where ``cfg``'s reports go (before any batch) and identify its result: the
    result key hashes the resolved config, the versions of QBench and its plugins, the
    model's weights and the data (see :func:`result_key`)."""
    location = check_location(
        _output_root(cfg.data, output),
        reference.bundle.name,
        cfg.name,
        reference.key,
        overwrite=overwrite,
    )
    reporters = [(name, *_reporter(name)) for name in cfg.data["output"]["reporters"]]
    return _Twin(
        cfg=cfg,
        location=location,
        reporters=reporters,
        quantization=dict(cfg.data.get("quantization") or {}),
        result_key=result_key(reference, cfg),
        extra=dict(extra or {}),
    )


def load_finished(twin: _Twin) -> RunResult | None:
    """The finished result of ``twin`` when its report folder holds a report with its result
    key (report sets are written whole, so a report there is complete); else None."""
    import json

    path = twin.location.out_dir / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("result_key") != twin.result_key:
        return None
    files = sorted(p for p in twin.location.out_dir.iterdir() if p.is_file())
    return RunResult(report, twin.location.out_dir, files)


def result_key(reference: _Reference, cfg: Config) -> str:
    """SHA-256 naming one config's result: its resolved config (less its name and output),
    the effective data options and device, QBench's and every plugin's version, torch's, and
    the fingerprints of the weights and the data. A finished report carrying the same key
    holds the numbers a rerun would compute (a sweep skips it)."""
    import hashlib
    import json

    import torch

    from .plugins import host

    weights, samples = reference.fingerprints()
    resolved = {
        key: value for key, value in cfg.data.items() if key not in ("name", "output", "sweep")
    }
    resolved.update(dataset=reference.dataset_options, device=reference.dev)
    text = json.dumps(
        {
            "config": resolved,
            "config_dir": str(cfg.directory),
            "qbench": __version__,
            "torch": torch.__version__,
            "plugins": sorted(
                f"{p.distribution} {p.version}" for p in host().plugins if p.status == "ok"
            ),
            "weights": weights,
            "data": samples,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@objects_frozen()  # full collections during a run skip what existed before it
@full_fp32()  # the reference is IEEE FP32 on CUDA too, not TF32
def run_twins(
    reference: _Reference,
    twins: list[_Twin],
    *,
    progress: Callable[[Iterable[Any], int | None, str], Iterable[Any]] | None = None,
    label: str | None = None,
) -> list[RunResult]:
    """Prepare ``twins`` and run them beside ``reference`` in lockstep: each batch goes
    through the FP32 model once, then through every twin; each twin's metrics see the FP32
    outputs of that one forward. Every twin draws its random numbers (stochastic rounding)
    from a generator state of its own, seeded like a run of it alone, so a twin's numbers do
    not depend on which twins ran beside it. Writes each twin's reports; returns the results
    in order."""
    import torch

    from .preparation import observe, preparation_report, prepare

    started = time.perf_counter()
    started_at = provenance.now()
    seed = int(reference.cfg.data.get("seed", 0))
    model, dev, bundle = reference.model, reference.dev, reference.bundle
    stream: Iterable[Any] = reference.batches
    if reference.layout == "channels_last" and not reference.probed:
        stream, runs = _runs_channels_last(
            model, reference.batches, dev, reference.requested_layout
        )
        reference.probed = True
        if not runs:  # auto, and the model cannot: back to the contiguous layout
            reference.model = model = model.to(memory_format=torch.contiguous_format)
            reference.layout = "contiguous"
    for twin in twins:
        begun = time.perf_counter()
        torch.manual_seed(seed)
        twin.model = prepare(model, twin.quantization).to(dev).eval()
        twin.prep = preparation_report(twin.model)
        twin.rng = _rng_state(dev)
        twin.prepare_s = time.perf_counter() - begun
    channels_last = reference.layout == "channels_last"
    stream = iter(stream)
    if reference.calibration_batches:  # before any metric watches: not evaluated
        _calibrate(reference, twins, stream, channels_last)
    # metrics attach once every twin is prepared: a twin is a deep copy of the FP32 model,
    # which would copy the hooks the metrics of the twins before it put there
    for twin in twins:
        evaluation = twin.cfg.data.get("evaluation") or {}
        for name in evaluation.get("metrics", []):
            twin.metrics[name] = get("metric", name)(evaluation.get(name))
        context = {
            "config_dir": twin.cfg.directory,
            "device": dev,
            "bundle": bundle,
            "quantization": twin.quantization,
            "preparation": twin.prep,
        }
        for metric in twin.metrics.values():
            metric.attach(model, twin.model, context)

    images = 0
    batches_started = time.perf_counter()
    evaluated = None if reference.total is None else reference.total - reference.calibration_batches
    # One twin of a short run: its forward and the FP32 model's run layer by layer in
    # lockstep, so the FP32 outputs the metrics hold wait a layer or so, not a whole forward
    # (a first result's peak memory). Several twins all need every FP32 output of the batch:
    # the FP32 forward runs once, before them. A long run (kernels compiled) keeps that order
    # too: there the hand-overs cost more than the memory is worth (run_overhead.py
    # --model resnet18: 3.07 in lockstep against 2.77, one quiet run each).
    # On a CPU of two threads, the FP32 side's ops run on one (see Lockstep: two OpenMP teams
    # on two cores make every parallel op of the twin's side wake its helper from sleep).
    lockstep = (
        Lockstep(
            model,
            twins[0].model,
            (partial(_rng_state, dev), partial(_set_rng_state, dev)),
            reference_threads=1 if _on_small_cpu(dev) else None,
        )
        if len(twins) == 1 and stays_eager(evaluated)
        else None
    )
    try:
        with contextlib.ExitStack() as stack:
            # a short run keeps kernels it has not compiled yet eager (kernels.expecting);
            # twins of other formats call other kernels: each kernel sees ``total`` batches
            stack.enter_context(expecting(evaluated))
            for twin in twins:
                observers = [m for m in twin.metrics.values() if hasattr(m, "on_tensor")]
                if observers:
                    stack.enter_context(observe(twin.model, _FanOut(observers)))
            # no_grad, not inference_mode: inference tensors carry no version counter, which
            # the ops use to share one quantization of a tensor between consecutive layers.
            stack.enter_context(torch.no_grad())
            name = label or twins[0].cfg.name
            iterator = progress(stream, evaluated, name) if progress is not None else stream
            for index, (inputs, targets) in enumerate(iterator):
                inputs = inputs.to(dev, non_blocking=True)
                if channels_last and inputs.dim() == 4:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                if lockstep is not None:
                    twin = twins[0]
                    reference_logits, quantized_logits, twin.rng = lockstep.forward(
                        inputs, twin.rng
                    )
                else:
                    reference_logits = model(inputs)
                if index == 0:
                    _check_output_width(reference_logits, targets, reference.classes, bundle.name)
                targets = targets.to(dev)
                outer = _rng_state(dev)  # the data's stream, whatever the twins draw
                for twin in twins:
                    if lockstep is None:
                        _set_rng_state(dev, twin.rng)
                        quantized_logits = twin.model(inputs)
                        twin.rng = _rng_state(dev)
                    batch = BatchOutputs(targets, reference_logits, quantized_logits, index)
                    for metric in twin.metrics.values():
                        metric.update(batch)
                _set_rng_state(dev, outer)
                images += int(targets.shape[0])
    finally:
        if lockstep is not None:
            lockstep.close()
        for twin in twins:
            for metric in twin.metrics.values():
                close = getattr(metric, "close", None)
                if close is not None:
                    close()
    if images == 0:
        calibrated = reference.calibration_batches
        raise QBenchError(
            f"dataset {reference.dataset_options['name']!r} yielded no images"
            + (
                f" after the {calibrated} calibration batch(es); allowed: calibration.batches "
                "below the dataset's number of batches"
                if calibrated
                else "; check its root/split/limit"
            )
        )
    batches_s = time.perf_counter() - batches_started
    return [_finish(reference, twin, images, started_at, batches_s, started) for twin in twins]


def _calibrate(
    reference: _Reference, twins: list[_Twin], stream: Iterator[Any], channels_last: bool
) -> None:
    """Run every twin on the first ``calibration.batches`` batches inside the ops'
    ``calibrating`` (each input/activation quantizer records its amax), then ``freeze``
    (static scales from then on). Each twin's report states which images calibrated it."""
    import torch

    from .preparation import ops_with

    ops = ops_with("calibrating")
    if not ops:
        raise QBenchError(
            "calibration: no installed op calibrates static scales (qbench-ops provides "
            "one); allowed: install qbench-ops, or remove the calibration section"
        )
    wanted, dev = reference.calibration_batches, reference.dev
    images = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        for twin in twins:
            for op in ops:
                stack.enter_context(op.calibrating(twin.model))
        for _ in range(wanted):
            batch = next(stream, None)
            if batch is None:
                break
            inputs = batch[0].to(dev, non_blocking=True)
            if channels_last and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            for twin in twins:
                _set_rng_state(dev, twin.rng)
                twin.model(inputs)
                twin.rng = _rng_state(dev)
            images += int(inputs.shape[0])
    samples = getattr(reference.batches, "samples", None)
    used = []
    if samples is not None:
        used = [_sample_id(sample) for sample in list(samples)[:images]]
    for twin in twins:
        frozen: dict[str, Any] = {"static": [], "dynamic": []}
        for op in ops:
            found = op.freeze(twin.model)
            frozen["static"] += list(found.get("static") or ())
            frozen["dynamic"] += list(found.get("dynamic") or ())
        twin.extra["calibration"] = {
            "batches": wanted,
            "images": images,
            # the first images of the dataset's order; the evaluation starts after them
            "samples": used,
            "samples_sha256": _digest(used) if used else None,
            **frozen,
        }
    if images == 0:
        raise QBenchError(
            f"calibration: dataset {reference.dataset_options['name']!r} yielded no image to "
            "calibrate on; check its root/split/limit"
        )


def _sample_id(sample: Any) -> Any:
    """A dataset sample's id as a report states it: its path or index."""
    item = sample[0] if isinstance(sample, tuple) else sample
    return item if isinstance(item, (int, str)) else str(item)


def _digest(items: list[Any]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(items, default=str).encode("utf-8")).hexdigest()


def _finish(
    reference: _Reference,
    twin: _Twin,
    images: int,
    started_at: Any,
    batches_s: float,
    started: float,
) -> RunResult:
    """One twin's results summarised into its report, and the report set written."""
    from .preparation import OBSERVABLES_ATTRIBUTE

    begun = time.perf_counter()
    cfg, data, prep = twin.cfg, twin.cfg.data, twin.prep
    assert prep is not None
    _merge_installed(twin.model, prep, OBSERVABLES_ATTRIBUTE)
    dataset_options = reference.dataset_options
    dataset_report: dict[str, Any] = {
        "name": dataset_options["name"],
        "split": dataset_options.get("split"),
        "images": images,
    }
    skipped = list(getattr(reference.batches, "skipped", None) or [])
    if skipped:
        dataset_report["skipped_count"] = len(skipped)
        dataset_report["skipped"] = skipped[:MAX_SKIPPED_LISTED]
    results = {name: metric.result() for name, metric in twin.metrics.items()}
    evaluation = data.get("evaluation") or {}
    weights, samples = reference.fingerprints()
    timings = {
        "build": reference.built_s,
        "prepare": twin.prepare_s,
        "batches": batches_s,
        "results": time.perf_counter() - begun,
    }
    report: dict[str, Any] = {
        "qbench_version": __version__,
        "name": cfg.name,
        "model": reference.bundle.name,
        "config_file": str(cfg.path) if cfg.path is not None else None,
        "run_key": reference.key,
        "result_key": twin.result_key,
        **twin.extra,
        "provenance": provenance.collect(
            {**data, "dataset": dataset_options, "device": reference.dev},
            str(cfg.directory),
            reference.dev,
            weights=weights,
            data=samples,
            started=started_at,
        ),
        "warnings": _warnings(
            dataset_options["name"],
            skipped,
            images,
            prep,
            float(evaluation.get("min_weight_coverage", DEFAULT_MIN_WEIGHT_COVERAGE)),
            results,
        ),
        "dataset": dataset_report,
        "device": reference.dev,
        "memory_format": reference.layout,
        "elapsed_s": round(reference.built_s + time.perf_counter() - started, 3),
        # where the time went: model and data built, twin prepared, batches run (forwards of
        # the FP32 model and of every twin beside it, quantization, metric updates), results
        # summarised (the reports come after)
        "timings": {key: round(value, 3) for key, value in timings.items()},
        "quantization": twin.quantization,
        "preparation": prep,
        "metrics": results,
    }
    files = write_report_set(twin.location, report, twin.reporters)
    twin.model = None  # the twin's memory is free once its report is written
    twin.metrics = {}
    return RunResult(report, twin.location.out_dir, files)


def _rng_state(device: str) -> list[Any]:
    import torch

    states = [torch.get_rng_state()]
    if device == "cuda":
        states.append(torch.cuda.get_rng_state())
    return states


def _set_rng_state(device: str, states: list[Any]) -> None:
    import torch

    torch.set_rng_state(states[0])
    if device == "cuda" and len(states) > 1:
        torch.cuda.set_rng_state(states[1])


def check(
    config: str | os.PathLike[str] | Mapping[str, Any] | Config,
    *,
    limit: int | None = None,
    device: str | None = None,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> tuple[list[str], list[str]]:
    """What ``qbench validate`` checks beyond the schema, reading no images: the model builds
    (weights loaded), the twin prepares (layer patterns, scale methods, formats), the dataset
    finds its files, the metrics accept their options, the output location is writable and
    holds no other run's report. Returns (what was checked, what could not be) as lines;
    raises :class:`QBenchError` on the first problem."""
    from .preparation import prepare

    cfg = _single(config, "validate")
    data = cfg.data
    dev = resolve_device(device or data.get("device"))
    model_options = dict(data["model"])
    bundle = get("adapter", model_options["adapter"]).build(model_options, device="cpu")
    twin = prepare(bundle.model.eval(), dict(data.get("quantization") or {}))
    layers = sum(1 for _ in twin.modules())
    dataset_options = _dataset_options(data, limit)
    batches = get("dataset", dataset_options["name"]).build(dataset_options, bundle=bundle)
    evaluation = data.get("evaluation") or {}
    for name in evaluation.get("metrics", []):
        get("metric", name)(evaluation.get(name))
    location = check_location(
        _output_root(data, output),
        bundle.name,
        cfg.name,
        run_key(model_options, dataset_options),
        overwrite=overwrite,
        create=False,
    )
    images = getattr(batches, "num_images", None)
    checked = [
        f"model {bundle.name} built and its twin prepared ({layers} modules)",
        f"dataset {dataset_options['name']} found"
        + (f" ({images} images)" if isinstance(images, int) else ""),
        f"metrics {', '.join(evaluation.get('metrics', [])) or '(none)'} accept their options",
        f"reports can be written to {location.out_dir}",
    ]
    not_checked = [
        "images are not decoded",
        f"no forward pass on {dev} (shapes, output width, channels-last)",
    ]
    return checked, not_checked


def inspect(
    config: str | os.PathLike[str] | Mapping[str, Any] | Config, *, device: str | None = None
) -> dict[str, Any]:
    """What a run would quantize, without evaluating: the model is built and prepared, and the
    twin runs once on the first image of the dataset so that the functional call sites inside
    forwards are seen. Returns the preparation report (``quantized`` with each role's spec,
    ``not_quantized`` with the reason, ``coverage``, ``calls``: the sites seen)."""
    import torch

    from .preparation import OBSERVABLES_ATTRIBUTE, preparation_report, prepare

    cfg = _single(config, "inspect")
    data = cfg.data
    dev = resolve_device(device or data.get("device"))
    model_options = dict(data["model"])
    bundle = get("adapter", model_options["adapter"]).build(model_options, device=dev)
    twin = prepare(bundle.model.to(dev).eval(), dict(data.get("quantization") or {}))
    report = preparation_report(twin)
    dataset_options = {**_dataset_options(data, 1), "batch_size": 1}
    batches = get("dataset", dataset_options["name"]).build(dataset_options, bundle=bundle)
    first = next(iter(batches), None)
    if first is not None:
        with torch.no_grad():
            twin(first[0].to(dev))
    _merge_installed(twin, report, OBSERVABLES_ATTRIBUTE)
    report["sample_images"] = 0 if first is None else int(first[0].shape[0])
    return report


def _merge_installed(twin: Any, report: dict[str, Any], attribute: str) -> None:
    """What the ops installed on the whole twin saw while it ran (call sites, MAC coverage),
    merged into a preparation report."""
    for installed in getattr(twin, attribute, ()):
        extra = getattr(installed, "qbench_report", None)
        if callable(extra):
            found = extra()
            report["coverage"].update(found.get("coverage") or {})
            report.setdefault("calls", []).extend(found.get("calls") or [])


def reproduce(
    report_path: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    progress: Callable[[Iterable[Any], int | None, str], Iterable[Any]] | None = None,
) -> tuple[RunResult, list[str]]:
    """Rerun the run a ``report.json`` records (its provenance: the resolved config, the data
    options as run, the device) and compare the numbers. Returns the new result and the
    differences (empty: reproduced). The new reports go to ``output`` (default: a new
    temporary folder), never over the old ones."""
    import json
    import tempfile

    path = Path(report_path)
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
        recorded = before["provenance"]
        config, directory = recorded["config"], recorded["config_dir"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QBenchError(
            f"--reproduce: {path} is not a QBench report with provenance "
            f"({type(exc).__name__}: {exc}); allowed: a report.json written by qbench run"
        ) from None
    cfg = load_config(config, base=directory)
    root = output if output is not None else tempfile.mkdtemp(prefix="qbench-reproduce-")
    result = run(cfg, output=root, progress=progress, device=config.get("device"))
    return result, provenance.compare(before, result.report)


def _dataset_options(data: Mapping[str, Any], limit: int | None) -> dict[str, Any]:
    options = dict(data["dataset"])
    if limit is not None:
        if limit < 1:
            raise QBenchError(f"--limit must be >= 1, found {limit}")
        options["limit"] = limit
    return options


def _output_root(data: Mapping[str, Any], output: str | os.PathLike[str] | None) -> Path:
    """Relative output dirs are relative to the working directory, like every other path."""
    return Path(output) if output is not None else Path(data["output"]["dir"])


#: How many skipped files a report lists by name (all are counted).
MAX_SKIPPED_LISTED = 100


def _reporter(name: str) -> tuple[Any, str]:
    """A reporter and the label (distribution and version) of the plugin that registered it."""
    from .plugins import registry

    return get("reporter", name), registry("reporter").plugin_of(name).label


def _warnings(
    dataset: str,
    skipped: list[Any],
    images: int,
    preparation: Mapping[str, Any],
    min_coverage: float,
    results: Mapping[str, Any],
) -> list[str]:
    """The report's first lines: what makes its numbers less than they seem (skipped images,
    a model that ran mostly FP32). Metrics say their own in their result's ``warnings``."""
    lines = []
    if skipped:
        first = skipped[0].get("path") if isinstance(skipped[0], Mapping) else skipped[0]
        lines.append(
            f"dataset {dataset}: {len(skipped)} unreadable image(s) skipped (skip_corrupt) "
            f"and {images} evaluated; e.g. {first}"
        )
    coverage = preparation.get("coverage") or {}
    share = coverage.get("weight_share")
    if isinstance(share, (int, float)) and share < min_coverage:
        largest = ", ".join(
            f"{row['name'] or '(model)'} ({row['type']}, {row['elements']}: {row['reason']})"
            for row in coverage.get("largest_unquantized", [])[:3]
        )
        lines.append(
            f"only {100.0 * share:.2f} % of the model's weight elements ran quantized "
            f"(below evaluation.min_weight_coverage {100.0 * min_coverage:g} %); "
            f"largest left FP32: {largest}"
        )
    for result in results.values():
        if isinstance(result, Mapping):
            lines.extend(str(line) for line in result.get("warnings") or ())
    return lines


def _dataset_classes(batches: Any) -> int | None:
    info = getattr(batches, "info", None)
    classes = info.get("num_classes") if isinstance(info, Mapping) else None
    return classes if isinstance(classes, int) and classes > 0 else None


def _check_output_width(logits: Any, targets: Any, classes: int | None, model: str) -> None:
    """A model whose output width is not the dataset's label space gives numbers that mean
    nothing (a 1000-way head scored on 10 classes): refuse after the first batch."""
    if logits.dim() != 2:
        return
    width = int(logits.shape[1])
    if classes is not None and width != classes:
        raise QBenchError(
            f"model {model!r} outputs {width} classes but the dataset has {classes}; "
            "allowed: a model whose output width is the dataset's class count "
            "(set model.num_classes, or a checkpoint trained for this dataset)"
        )
    top = int(targets.max()) if targets.numel() else -1
    if top >= width:
        raise QBenchError(
            f"model {model!r} outputs {width} classes but the dataset has label {top}; "
            "allowed: labels below the model's output width"
        )


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


def _on_small_cpu(device: Any) -> bool:
    """A CPU run whose ops have at most two threads (where :class:`Lockstep`'s FP32 side is
    given one: measured on a 2-core VM; more cores were not measured and keep both teams)."""
    import torch

    return torch.device(device).type == "cpu" and torch.get_num_threads() <= 2
