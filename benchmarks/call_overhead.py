"""Host cost of one call of each compiled kernel a quantized layer's call runs, on a tensor
so small that the arithmetic is nothing (results: benchmarks/README.md).

What a run costs per quantized-layer call where a batch's work is small (the demo, a GPU at
batch 16) is mostly this: Python, dynamo's guards and the compiled wrapper, once per kernel
call. Printed per kernel, in one process, interleaved round by round (medians of rounds of
``--calls`` calls; on CUDA each round ends in a synchronize):

* ``filtered``: the kernel as QBench compiles it, dynamo re-checking only what its key does
  not pin (``qbench.kernels._kernel_guards``);
* ``all guards``: the same kernel compiled with every guard dynamo builds (as before);
* ``÷ op``: ``filtered`` ÷ one eager ``x.clone()`` of the same tensor (the host cost of one
  torch op on this machine: the baseline a ratio needs, as machines differ).

The kernels: quantize with codes (fp8_e4m3 chunk 32, NVFP4's three pieces, int8 per
channel), the audit's count (``compliance.tables._CodeTable.counts``) and the layer-wise
pair sums with statistics (``layerwise.pair_sums_and_stats``).

    .venv/bin/python benchmarks/call_overhead.py [--device cuda] [--calls 200] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import qbench
import qbench.kernels as kernels
import torch
from qbench.kernels import in_memory_order
from qbench.spec import spec_from_arguments
from qbench_eval import layerwise
from qbench_eval.compliance.tables import FormatTables


def _keep_every_guard(own: frozenset[str], entries: list[Any]) -> list[bool]:
    del own
    return [True] * len(entries)


def _quantize(name: str, mode: str, x: torch.Tensor) -> Callable[[], Any]:
    fmt = qbench.get_format(name)
    chunk = 32 if mode == "chunk" else None
    spec = spec_from_arguments(name, mode=mode, chunk_size=chunk, axis=1)
    return lambda: fmt.quantize(x, spec, return_codes=True, narrow_codes=True, path="compiled")


def _audit(x: torch.Tensor) -> Callable[[], Any]:
    fmt = qbench.get_format("fp8_e4m3")
    spec = spec_from_arguments("fp8_e4m3", mode="chunk", chunk_size=32, axis=1)
    result = fmt.quantize(x, spec, return_codes=True, narrow_codes=True, path="eager")
    table = FormatTables().table("fp8_e4m3", fmt, result.codes)
    assert table is not None
    parts = in_memory_order(result.codes, result.dequantized, result.expand_scales())
    return lambda: table.counts(*parts)


def _pair_sums(x: torch.Tensor) -> Callable[[], Any]:
    quantized = x + 0.125
    return lambda: layerwise.pair_sums_and_stats(x, quantized)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", type=int, default=200, help="calls a round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    kernels.COMPILE_MIN_NUMEL = 1  # compiled at any size: the host cost is what is measured
    x = torch.randn(4, 16, 2, 2, device=args.device)
    cases = {
        "quantize fp8_e4m3 chunk 32": _quantize("fp8_e4m3", "chunk", x),
        "quantize nvfp4 (3 kernels)": _quantize("nvfp4", "chunk", x),
        "quantize int8 channel": _quantize("int8", "channel", x),
        "audit count": _audit(x),
        "pair sums + stats": _pair_sums(x),
    }

    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    def per_call(fn: Callable[[], Any]) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(args.calls):
            fn()
        sync()
        return (time.perf_counter() - start) / args.calls

    filtering = kernels._kernel_guards
    print(f"device {args.device}, tensor {tuple(x.shape)}, {args.calls} calls x {args.rounds}")
    print(f"{'kernel':<28} {'filtered':>10} {'all guards':>11} {'÷ all':>6} {'÷ op':>6}")
    for label, fn in cases.items():
        built = {}
        for variant, keep in (("filtered", filtering), ("all guards", _keep_every_guard)):
            kernels._kernel_guards = keep
            kernels._COMPILED.clear()
            for _ in range(3):
                fn()  # compiles this variant's kernels (fresh code objects, fresh guards)
            built[variant] = dict(kernels._COMPILED)
        kernels._kernel_guards = filtering
        times: dict[str, list[float]] = {variant: [] for variant in built}
        ops: list[float] = []
        for round_ in range(args.rounds):
            order = list(built) if round_ % 2 == 0 else list(reversed(built))
            for variant in order:
                kernels._COMPILED.clear()
                kernels._COMPILED.update(built[variant])
                times[variant].append(per_call(fn))
            ops.append(per_call(x.clone))
        filtered, every = (statistics.median(times[v]) for v in ("filtered", "all guards"))
        op = statistics.median(ops)
        print(
            f"{label:<28} {filtered * 1e6:8.0f}us {every * 1e6:9.0f}us "
            f"{filtered / every:6.2f} {filtered / op:6.0f}"
        )


if __name__ == "__main__":
    main()
