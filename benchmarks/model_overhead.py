"""Quantized-forward time / FP32-forward time for resnet18 and vit_b_16 (issue 4).

Both models are random-init torchvision models (nothing is downloaded), batch 16 at 224x224
on CPU (or ``--device cuda``, in IEEE FP32 as ``qbench.run`` uses it: no TF32); the twin
quantizes weights, inputs and activations everywhere with fp8_e4m3 chunk 128.
Both forwards run in this process, interleaved, and two ratios are printed (STYLE.md habit 8:
ratios, never absolute seconds compared across runs): best-of (fastest quantized / fastest FP32
forward: as Python's timeit recommends, the minimum is the estimate least disturbed by other
processes, which on a shared box slow the memory-bound quantized forward more) and median.
The verdict uses best-of. Targets: <= 1.3 for resnet18, <= 1.5 for vit_b_16.

    .venv/bin/python benchmarks/model_overhead.py [--batch 16] [--repeats 5] [--models resnet18,vit_b_16]

The twin runs under ``torch.no_grad`` (under ``torch.inference_mode`` tensors carry no
version counter and qbench-ops does not share quantizations between layers; see
``qbench_ops.quantizer``); ``--inference-mode`` measures that too.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import qbench
import torch
import torchvision
from qbench.runner import full_fp32

CONFIG = {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 128}
TARGETS = {"resnet18": 1.3, "vit_b_16": 1.5}


def _time(fn, x: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(
    name: str, batch: int, repeats: int, inference_mode: bool, device: str = "cpu"
) -> tuple[float, float, float, float]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().to(device)
    model_q = qbench.prepare(model, CONFIG).eval().to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    grad_mode = torch.inference_mode if inference_mode else torch.no_grad
    with grad_mode(), full_fp32():
        warmup = _time(model_q, x)  # first call: weights quantized, kernels compiled
        model(x)
        fp32, quantized = [], []
        for _ in range(repeats):
            fp32.append(_time(model, x))
            quantized.append(_time(model_q, x))
    best = min(quantized) / min(fp32)
    median = statistics.median(quantized) / statistics.median(fp32)
    return best, median, statistics.median(fp32), warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="resnet18,vit_b_16")
    parser.add_argument("--inference-mode", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"quantized forward / FP32 forward, {args.device}, batch {args.batch}, 224x224, fp8_e4m3 chunk128 "
        f"(weights, inputs, activations), {torch.get_num_threads()} threads"
    )
    for name in args.models.split(","):
        with contextlib.suppress(KeyboardInterrupt):
            ratio, median, fp32, warmup = measure(
                name, args.batch, args.repeats, args.inference_mode, args.device
            )
            target = TARGETS.get(name)
            verdict = (
                ""
                if target is None
                else f"  (target <= {target}: {'met' if ratio <= target else 'NOT met'})"
            )
            print(
                f"{name:10s} ratio {ratio:5.2f} best-of, {median:5.2f} median{verdict}  "
                f"[first quantized call {warmup / fp32:.1f}x an FP32 forward]"
            )


if __name__ == "__main__":
    main()
