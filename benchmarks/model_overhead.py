"""Quantized-forward time / FP32-forward time on real architectures, and what the call
interception adds to the module swap.

Models, all with random weights built offline (nothing is downloaded): torchvision
``resnet18`` and ``vit_b_16`` and timm ``tf_efficientnet_b0`` (batch 16 at 224x224), and a
BERT-style encoder from a ``transformers`` ``BertConfig`` (``bert``: 4 layers, hidden 256,
4 heads, batch 16 x 128 tokens), on CPU (or ``--device cuda``, in IEEE FP32 as ``qbench.run``
uses it: no TF32). The twin quantizes weights, inputs, activations and the functional calls
inside forwards (attention math) with fp8_e4m3 chunk 128.
All forwards run in this process, interleaved, and ratios are printed (ratios,
never absolute seconds compared across runs: machines differ): best-of (fastest quantized / fastest FP32
forward: as Python's timeit recommends, the minimum is the estimate least disturbed by other
processes) and median. Targets: <= 1.3 for resnet18, <= 1.5 for vit_b_16. Results:
benchmarks/README.md.

``interception`` divides the twin's forward by the same twin's with the call interceptor
removed (``qbench_ops.calls.uninstall``: the module swap alone), best-of; target <= 1.10.

    .venv/bin/python benchmarks/model_overhead.py [--batch 16] [--repeats 5]
        [--models resnet18,vit_b_16,tf_efficientnet_b0,bert]

The twin runs under ``torch.no_grad`` (under ``torch.inference_mode`` tensors carry no
version counter and qbench-ops does not share quantizations between layers; see
``qbench_ops.quantizer``); ``--inference-mode`` measures that too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import qbench
import torch
import torchvision
from qbench.runner import full_fp32
from qbench_ops.calls import uninstall

CONFIG = {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 128}
TARGETS = {"resnet18": 1.3, "vit_b_16": 1.5}
INTERCEPTION_TARGET = 1.10
MODELS = "resnet18,vit_b_16,tf_efficientnet_b0,bert"


def build(name: str, batch: int, device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A random-weight model and an input batch for it."""
    torch.manual_seed(0)
    if name == "bert":
        from transformers import BertConfig, BertModel

        config = BertConfig(
            hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024
        )
        config._attn_implementation = "eager"  # the attention math as functions
        model = BertModel(config)
        x = torch.randint(0, config.vocab_size, (batch, 128))
    elif name in ("resnet18", "vit_b_16"):
        model = getattr(torchvision.models, name)(weights=None)
        x = torch.randn(batch, 3, 224, 224)
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
        x = torch.randn(batch, 3, 224, 224)
    return model.eval().to(device), x.to(device)


def _time(fn, x: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(
    name: str, batch: int, repeats: int, inference_mode: bool, device: str = "cpu"
) -> tuple[float, float, float, float, float]:
    model, x = build(name, batch, device)
    model_q = qbench.prepare(model, CONFIG).eval().to(device)
    swap_only = copy.deepcopy(model_q)
    uninstall(swap_only)
    grad_mode = torch.inference_mode if inference_mode else torch.no_grad
    with grad_mode(), full_fp32():
        warmup = _time(model_q, x)  # first call: weights quantized, kernels compiled
        model(x)
        swap_only(x)
        fp32, quantized, swapped = [], [], []
        for _ in range(repeats):
            fp32.append(_time(model, x))
            quantized.append(_time(model_q, x))
            swapped.append(_time(swap_only, x))
    best = min(quantized) / min(fp32)
    median = statistics.median(quantized) / statistics.median(fp32)
    interception = min(quantized) / min(swapped)
    return best, median, interception, statistics.median(fp32), warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--inference-mode", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"quantized forward / FP32 forward, {args.device}, batch {args.batch}, fp8_e4m3 chunk128 "
        f"(weights, inputs, activations, calls), {torch.get_num_threads()} threads"
    )
    for name in args.models.split(","):
        with contextlib.suppress(KeyboardInterrupt):
            try:
                ratio, median, interception, fp32, warmup = measure(
                    name, args.batch, args.repeats, args.inference_mode, args.device
                )
            except ImportError as exc:  # timm / transformers not installed
                print(f"{name:18s} skipped: {exc}")
                continue
            target = TARGETS.get(name)
            verdict = (
                ""
                if target is None
                else f"  (target <= {target}: {'met' if ratio <= target else 'NOT met'})"
            )
            met = "met" if interception <= INTERCEPTION_TARGET else "NOT met"
            print(
                f"{name:18s} ratio {ratio:5.2f} best-of, {median:5.2f} median{verdict}  "
                f"interception {interception:4.2f} (target <= {INTERCEPTION_TARGET}: {met})  "
                f"[first quantized call {warmup / fp32:.1f}x an FP32 forward]"
            )


if __name__ == "__main__":
    main()
