"""Total ``qbench.run`` time / a plain FP32 evaluation loop over the same data.

A run builds the model, prepares its quantized twin, does the FP32 forward, the quantized
forward and the metrics (accuracy, layer-wise error, the compliance audit) and writes three
reports; the plain loop builds the same model and data and only does the FP32 forward and
top-1. Both run in this process over the same batches of the same config, after
one warm-up of each (imports, kernel compilation), and the ratio of medians is printed
(ratios measured in one process, never absolute seconds across runs: machines differ).
Target: <= 2.5. Results: benchmarks/README.md.

    .venv/bin/python benchmarks/run_overhead.py                       # configs/quickstart.yaml
    .venv/bin/python benchmarks/run_overhead.py --config configs/int8.yaml --repeats 3 --limit 256

``--model resnet18`` (or ``vit_b_16``) measures an ImageNet-sized model instead of the
demo's tiny one: torchvision's architecture with random weights (no download here) on a
folder of random 256x256 images written to a temporary directory, batch 16 (``--batch-size``;
``--workers`` DataLoader processes decode them), fp8_e4m3 in chunks of 128 with per-channel
weights, and all three metrics. On the demo the FP32 loop is a fraction of a second of tiny
convolutions, so the per-tensor work of the twin and the metrics weighs far more than on a
real model.

``--breakdown`` also times runs with fewer metrics, to show where the time goes, and the
plain loop with a second FP32 copy of the model run on every batch: the floor of any
comparison of a model with its twin, before quantization and metrics add anything. It then
also prints what a run costs beyond that floor per call of a quantized layer (the layer-wise
metric's count): the ratio is about floor + calls x that cost / plain loop, so it exceeds the
target where a batch's FP32 forward is short against its layers' share (the demo's 8x8
images, batch 16 on a GPU).

``--threads N`` sets torch's intra-op threads: on a small machine shared with other jobs,
OpenMP threads that spin-wait for a busy core make every small op many times slower, which
swamps what is being measured (1 thread is the honest setting there).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import qbench
import qbench.kernels
import qbench.memory
import qbench.plugins
import torch
from qbench.config import load_config
from qbench.runner import full_fp32

REPO = Path(__file__).resolve().parents[1]
TARGET = 2.5


def fp32_loop(
    data: dict[str, Any],
    limit: int | None,
    device: str,
    forwards: int = 1,
    channels_last: bool = False,
) -> float:
    """Seconds for the plain loop: build the model and the data, FP32 forward, top-1;
    nothing else. The model is built inside the timed region, as ``qbench.run`` builds it
    inside its own: both sides pay the same construction (random init or weight loading),
    and the ratio compares what a run adds to an evaluation, not who builds the model.

    ``forwards=2`` runs a second copy of the FP32 model on every batch too: the floor of any
    FP32-vs-twin comparison (a twin costs at least one more forward), before quantization
    and metrics add anything. ``channels_last`` runs the loop in the layout ``qbench.run``
    picks on CPU for a convolutional model (``memory_format: auto``), which a plain loop as
    usually written does not: the ratio of a run to that loop shows what QBench adds beyond
    the layout.
    """
    options = dict(data["dataset"])
    if limit is not None:
        options["limit"] = limit
    start = time.perf_counter()
    bundle = qbench.plugins.get("adapter", data["model"]["adapter"]).build(
        dict(data["model"]), device=device
    )
    model = bundle.model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    models = [model] + [copy.deepcopy(model) for _ in range(forwards - 1)]
    batches = qbench.plugins.get("dataset", options["name"]).build(options, bundle=bundle)
    correct = images = 0
    # IEEE FP32 as in qbench.run (no TF32 convolutions on CUDA): the same arithmetic.
    with torch.inference_mode(), full_fp32():
        for inputs, targets in batches:
            inputs = inputs.to(device)
            if channels_last and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            for each in models:
                logits = each(inputs)
                correct += int((logits.argmax(1).cpu() == targets).sum())
            images += int(targets.shape[0])
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert images > 0 and correct >= 0
    return elapsed


def qbench_run(
    data: dict[str, Any], limit: int | None, device: str, metrics: list[str] | None
) -> float:
    """Seconds for a whole ``qbench.run`` (model build, prepare, both forwards, metrics, reports)."""
    return _timed_run(data, limit, device, metrics)[0]


def _timed_run(
    data: dict[str, Any], limit: int | None, device: str, metrics: list[str] | None
) -> tuple[float, dict[str, Any]]:
    """(:func:`qbench_run`'s seconds, the run's report as ``qbench.run`` returns it)."""
    data = dict(data)
    if metrics is not None:
        data["evaluation"] = {**(data.get("evaluation") or {}), "metrics": metrics}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = qbench.run(data, limit=limit, device=device, output=out)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, result.report


def layer_calls(report: dict[str, Any]) -> tuple[int, int]:
    """(calls of quantized layers, batches) in a run's report, from its layer-wise metric
    ((0, 0) without it): how many times per run QBench does its per-layer work."""
    layerwise = (report.get("metrics") or {}).get("layerwise") or {}
    return sum(layer.get("calls", 0) for layer in layerwise.get("layers", [])), layerwise.get(
        "batches", 0
    )


def _imagenet_sized_config(
    root: Path, model: str, images: int, batch_size: int = 16, workers: int = 0
) -> Path:
    """A config for ``model`` (random weights) on ``images`` random 256x256 PNGs in 4 classes,
    ``batch_size`` images per batch, decoded by ``workers`` DataLoader workers."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for i in range(images):
        folder = root / "images" / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (256, 256, 3), dtype=torch.uint8, generator=generator)
        Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    adapter = "resnet" if model.startswith("resnet") else "vit"
    config = root / f"{model}.yaml"
    config.write_text(
        f"name: {model}_fp8\n"
        f"model: {{adapter: {adapter}, name: {model}, weights: none, num_classes: 4}}\n"
        f"dataset: {{name: imagefolder, root: {root / 'images'}, batch_size: {batch_size}, "
        f"num_workers: {workers}}}\n"
        "quantization: {format: fp8_e4m3, mode: chunk, chunk_size: 128, weight_mode: channel}\n"
        "evaluation: {metrics: [accuracy, layerwise, compliance]}\n",
        encoding="utf-8",
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--limit", type=int, default=None, help="images per run (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time runs with fewer metrics"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--model",
        choices=["resnet18", "vit_b_16"],
        default=None,
        help="an ImageNet-sized torchvision model on random images instead of --config",
    )
    parser.add_argument("--images", type=int, default=64, help="random images for --model")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch for --model")
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers decoding images for --model"
    )
    parser.add_argument(
        "--memory-format",
        choices=["auto", "contiguous", "channels_last"],
        default=None,
        help="the runs' memory_format (default: the config's, auto)",
    )
    parser.add_argument(
        "--compile-min-batches",
        type=int,
        default=0,
        help="qbench.kernels.COMPILE_MIN_BATCHES for the runs (default 0: kernels compile as "
        "in a long run, the steady state this ratio measures; a run of fewer batches than "
        "QBench's own default keeps them eager: see first_result.py for that regime)",
    )
    args = parser.parse_args()
    qbench.kernels.COMPILE_MIN_BATCHES = args.compile_min_batches
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # As `qbench run` does at start, for the plain loop and the runs alike (both run in this
    # process): freed blocks are reused rather than page-faulted afresh every batch.
    # QBENCH_MALLOC_TUNING=0 measures both without it.
    tuned = qbench.memory.keep_freed_memory()

    if args.model is not None:
        workdir = tempfile.TemporaryDirectory()
        cfg = load_config(
            _imagenet_sized_config(
                Path(workdir.name), args.model, args.images, args.batch_size, args.workers
            )
        )
    else:
        cfg = load_config(args.config)
    data = dict(cfg.data)
    data["output"] = {**data.get("output", {}), "dir": "unused"}
    if args.memory_format is not None:
        data["memory_format"] = args.memory_format
    # Warm-up with the very batches timed below (kernels are compiled per shape): imports,
    # weight caches and compilation are one-off costs, printed apart from the ratio.
    fp32_loop(data, args.limit, args.device)
    cold, cold_report = _timed_run(data, args.limit, args.device, None)

    variants: list[tuple[str, list[str] | None]] = [("config's metrics", None)]
    if args.breakdown:
        variants += [
            ("accuracy + layerwise", ["accuracy", "layerwise"]),
            ("accuracy only", ["accuracy"]),
        ]
    for _, metrics in variants[1:]:  # each variant's own quantize path (with/without codes)
        qbench_run(data, args.limit, args.device, metrics)
    plain: list[float] = []
    twice: list[float] = []
    plain_nhwc: list[float] = []
    runs: dict[str, list[float]] = {label: [] for label, _ in variants}
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        plain.append(fp32_loop(data, args.limit, args.device))
        if args.breakdown:
            twice.append(fp32_loop(data, args.limit, args.device, forwards=2))
            plain_nhwc.append(fp32_loop(data, args.limit, args.device, channels_last=True))
        for label, metrics in variants:
            runs[label].append(qbench_run(data, args.limit, args.device, metrics))
    base = statistics.median(plain)
    metric_names = (data.get("evaluation") or {}).get("metrics", [])
    print(
        f"config: {args.model or args.config} ({cfg.name}), device {args.device}, limit {args.limit or 'all'}, repeats {args.repeats}, memory_format {data.get('memory_format', 'auto')}"
    )
    print(f"malloc keeps freed memory (qbench.memory): {'yes' if tuned else 'no'}")
    print(f"first (cold) qbench.run   : {cold:8.2f} s (compilation and caches included)")
    print(f"plain FP32 loop           : {base:8.2f} s (median)")
    if twice:
        floor = statistics.median(twice)
        print(f"FP32 loop, two forwards   : {floor:8.2f} s  ratio {floor / base:5.2f} (the floor)")
        nhwc = statistics.median(plain_nhwc)
        print(f"FP32 loop, channels-last  : {nhwc:8.2f} s  ratio {nhwc / base:5.2f}")
    for label, _ in variants:
        total = statistics.median(runs[label])
        shown = f"{label} ({', '.join(metric_names)})" if label == "config's metrics" else label
        print(f"qbench.run, {shown:<14}: {total:8.2f} s  ratio {total / base:5.2f}")
    ratio = statistics.median(runs[variants[0][0]]) / base
    calls, batches = layer_calls(cold_report)
    if twice and calls and batches:
        # What a run costs beyond the floor, per quantized-layer call: the ratio is about
        # floor + calls x this / plain loop, so it exceeds 2.5 when a batch's FP32 forward is
        # short against its layers' share of this (a tiny model, a small batch on a GPU).
        extra = (statistics.median(runs[variants[0][0]]) - floor) / calls
        print(
            f"quantized layer calls: {calls} ({calls / batches:.0f} a batch, {batches} batches); "
            f"run beyond the floor per layer call: {extra * 1e3:.2f} ms; "
            f"plain loop per batch: {base / batches * 1e3:.1f} ms"
        )
    if plain_nhwc:
        print(
            "run / channels-last FP32 loop: "
            f"{statistics.median(runs[variants[0][0]]) / statistics.median(plain_nhwc):.2f}"
        )
    print(
        f"run / FP32 ratio: {ratio:.2f} (target <= {TARGET}) {'OK' if ratio <= TARGET else 'ABOVE TARGET'}"
    )


if __name__ == "__main__":
    main()
