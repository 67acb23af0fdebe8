"""The eager quantizer on one real-sized activation: a short run's path (results:
benchmarks/README.md).

A first result (fewer batches than ``QBENCH_COMPILE_MIN_BATCHES``) quantizes eagerly. This
times ``fmt.quantize(x, spec, return_codes=True, path="eager")`` on a channels-last NCHW
activation, chunked along the channels, in one process, interleaved run by run with the
eager path as it was before session 27 in the same process:

* ``bits``: the float32 bit arithmetic in place of the float8 cast (``fused.cast_dtype``
  off), no padding left to the layout;
* ``padded``: the float8 cast, with a short last block padded (``quantizer._unpadded`` off);
* ``both``: both off, the path before;

each printed as its time / the current path's (> 1: the current path is faster), beside
``clone()`` of the activation. Every variant's dequantized values, codes and scales are
checked equal to the current path's before timing.

    .venv/bin/python benchmarks/eager_activation.py [--shape 32,144,56,56] [--chunk 128]
        [--format fp8_e4m3] [--repeats 5] [--threads 0]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import qbench
import qbench.memory
import torch
from qbench.spec import spec_from_arguments
from qbench_formats import fused, quantizer


@contextlib.contextmanager
def _variant(name: str) -> Iterator[None]:
    saved = fused.cast_dtype, quantizer._unpadded
    if name in ("bits", "both"):
        quantizer.fused.cast_dtype = lambda *args: None  # type: ignore[assignment]
    if name in ("padded", "both"):
        quantizer._unpadded = lambda *args: False  # type: ignore[assignment]
    try:
        yield
    finally:
        quantizer.fused.cast_dtype, quantizer._unpadded = saved


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="32,144,56,56", help="N,C,H,W")
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--format", default="fp8_e4m3")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    qbench.memory.keep_freed_memory()  # as `qbench run` does: no page faults per output
    shape = tuple(int(v) for v in args.shape.split(","))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3
    x = x.contiguous(memory_format=torch.channels_last)
    fmt = qbench.get_format(args.format)
    spec = spec_from_arguments(args.format, mode="chunk", chunk_size=args.chunk, axis=1)

    def run() -> object:
        return fmt.quantize(x, spec, return_codes=True, path="eager")

    current = run()
    variants = ("bits", "padded", "both")
    for name in variants:
        with _variant(name):
            other = run()
        same = torch.equal(current.dequantized, other.dequantized) and torch.equal(
            current.codes, other.codes
        )
        if not same or not torch.equal(current.scales, other.scales):
            raise SystemExit(f"{name}: not the same bits as the current path")
    times: dict[str, list[float]] = {name: [] for name in ("current", "clone", *variants)}
    for _ in range(args.repeats):
        times["current"].append(_seconds(run))
        times["clone"].append(_seconds(x.clone))
        for name in variants:
            with _variant(name):
                times[name].append(_seconds(run))
    best = {name: min(values) for name, values in times.items()}
    print(
        f"{args.format} chunk{args.chunk} along C, {'x'.join(map(str, shape))} channels-last, "
        f"codes on, {torch.get_num_threads()} thread(s), best of {args.repeats}"
    )
    print(
        f"current path {best['current'] * 1e3:8.1f} ms  ({best['current'] / best['clone']:.1f}x clone)"
    )
    for name in variants:
        ratios = [t / c for t, c in zip(times[name], times["current"], strict=True)]
        print(
            f"{name:>12} {best[name] * 1e3:8.1f} ms  {best[name] / best['current']:.2f}x the "
            f"current path (median of per-run ratios {statistics.median(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
