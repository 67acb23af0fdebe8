"""The compiled metric kernels of a long run on one real-sized activation, against the
memory floor beside them (results: benchmarks/README.md).

A run with compiled kernels reads every quantized activation twice more than its model does:
the compliance audit reads its codes and values (``compliance.tables._CodeTable.counts``), the
layer-wise metric the FP32 and quantized outputs (``layerwise.pair_sums_and_stats``). Both
are memory-bound, so each is printed as its time / a compiled kernel that only reads the
same tensors once and sums them (the *floor*), beside ``clone()`` of the activation, in one
process, interleaved run by run (medians):

* ``audit``: the audit's fused count of a channels-last NCHW activation quantized in chunks
  along its channels (fp8_e4m3 by default: codes decoded from their bit fields);
* ``audit, NaN/inf apart``: the same kernel as it was before session 29, where inductor gave
  the NaN / ±inf counts a loop of their own and read the values twice (same counts; checked).
  Alone, on a quiet machine, the second read comes from the last-level cache and costs
  little; inside a run, where the model's own data flows through that cache between the
  quantizer's write and the audit, it cost resnet18's run 0.4-0.5 of the plain loop's time
  (``run_overhead.py``, A/B in benchmarks/README.md);
* ``audit, numbers baked in``: the audit's kernel with the format's numbers as constants
  (``QBENCH_RUNTIME_NUMBERS=0``, one kernel per format) instead of read at run time;
* ``pair sums + stats``: the layer-wise sums of a pair of outputs in float64 and the
  quantized one's input statistics, in one loop.

    .venv/bin/python benchmarks/metric_kernels.py [--shape 16,64,56,56] [--chunk 128]
        [--format fp8_e4m3] [--repeats 21] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import qbench
import qbench.memory
import torch
from qbench.kernels import ONE_LOOP, fused, in_memory_order
from qbench.spec import spec_from_arguments
from qbench_eval import layerwise
from qbench_eval.compliance import counting, tables


def _audit_apart(codes: Any, dequantized: Any, scales: Any, *fields: Any) -> Any:
    """``counting._audit_rows_bits`` before session 29: the NaN / ±inf masks of the values
    alone, which inductor counts in a loop of their own."""
    bits, negative_legal, row_dims = fields[0], fields[-2], fields[-1]
    span = 1 << bits
    illegal = ((codes < (-span if negative_legal else 0)) | (codes >= span)) & (scales == scales)
    reconstructed = counting._decode_bits(codes, *fields[:-2]) * scales
    return counting._totals(
        counting._tally(illegal, counting._mismatch(reconstructed, dequantized), row_dims),
        counting._tally(*counting._nonfinite(dequantized), row_dims),
        row_dims,
    )


def _read_once(*tensors: Any) -> Any:
    return sum(t.to(torch.float32).sum() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="16,64,56,56", help="N,C,H,W")
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--format", default="fp8_e4m3")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    qbench.memory.keep_freed_memory()  # as a run does: no page faults for fresh outputs

    torch.manual_seed(0)
    shape = tuple(int(s) for s in args.shape.split(","))
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    reference = x * 1.01
    fmt = qbench.get_format(args.format)
    spec = spec_from_arguments(args.format, mode="chunk", chunk_size=args.chunk, axis=1)
    result = fmt.quantize(x, spec, return_codes=True, path="compiled")
    element = qbench.get_format(getattr(fmt, "element", None) or args.format)
    table = tables.FormatTables().table(element.name, element, result.codes)
    parts = counting._grouped_parts(result)
    if table is None or table.bit_fields is None or parts is None or len(parts) != 1:
        raise SystemExit(f"{args.format}: not a bit-field format in one part; pick another")
    (part,) = parts
    views = counting._rows(*part)
    if views is None:
        raise SystemExit(f"{args.shape}: rows too long to pack; pick another shape")
    constants = (*table.bit_fields.key, table.bit_fields.negative_legal)
    constants += (counting._row_dims(views[0]),)

    def audit() -> Any:
        return table.counts(*part)

    def baked() -> Any:
        qbench.kernels.RUNTIME_NUMBERS = False
        try:
            return table.counts(*part)
        finally:
            qbench.kernels.RUNTIME_NUMBERS = True

    def apart() -> Any:
        return fused(_audit_apart, views, constants, options=ONE_LOOP, path="compiled")

    def floor_audit() -> Any:
        return fused(_read_once, in_memory_order(result.codes, result.dequantized), path="compiled")

    def pair() -> Any:
        return layerwise.pair_sums_and_stats(reference, result.dequantized)

    def floor_pair() -> Any:
        return fused(_read_once, in_memory_order(reference, result.dequantized), path="compiled")

    qbench.kernels.COMPILE_MIN_NUMEL = 0  # every metric kernel compiled, as in a long run
    before = apart().tolist()
    for fn in (audit, baked):
        if fn().tolist() != before:
            raise SystemExit(f"counts differ: {fn().tolist()} against {before}")
    fns: dict[str, Callable[[], Any]] = {
        "clone": x.clone,
        "floor (codes + values)": floor_audit,
        "audit": audit,
        "audit, numbers baked in": baked,
        "audit, NaN/inf apart": apart,
        "floor (two outputs)": floor_pair,
        "pair sums + stats": pair,
    }
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{args.format} chunk {args.chunk} along the channels, channels-last {shape}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; medians of "
        f"{args.repeats}"
    )
    floors = {
        "audit": "floor (codes + values)",
        "audit, numbers baked in": "floor (codes + values)",
        "audit, NaN/inf apart": "floor (codes + values)",
        "pair sums + stats": "floor (two outputs)",
    }
    for name, seconds in median.items():
        extra = f"  {seconds / median[floors[name]]:5.2f}x its floor" if name in floors else ""
        print(f"{name:24s} {seconds * 1e3:8.2f} ms  {seconds / median['clone']:5.2f}x clone{extra}")


if __name__ == "__main__":
    main()
