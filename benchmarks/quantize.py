"""Fake-quantization speed as a ratio to ``x.clone()`` (results: benchmarks/README.md).

Fake quantization is memory-bound: its floor is one read and one write of the tensor, which
is what ``clone()`` does. For each format x scaling this prints time / clone time for the
fused (torch.compile) and the eager path, measured in one process after warm-up (the median
of per-run ratios, each run timed between two clones), and the one-off compile time.
Target: fused <= 1.5 on CPU for a 4096 x 4096 float32 tensor.

    .venv/bin/python benchmarks/quantize.py            # the full table
    .venv/bin/python benchmarks/quantize.py --size 1024 --formats fp8_e4m3 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import qbench
import torch

ELEMENT_FORMATS = ("fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "fp4_e3m0", "int8")
MODES = (("tensor", None), ("channel", None), ("chunk", 128))
PRESETS = ("mxfp8_e4m3", "mxfp4_e2m1", "nvfp4")


def ratio_to_clone(fn, clone, repeats: int) -> tuple[float, float]:
    """Median of ``fn`` time / ``clone`` time over ``repeats`` runs of ``fn``, each between two
    clones (after one warm-up run of each), and the median time of ``fn``.

    Interleaved, a slow spell of a shared machine lands on both sides of a ratio, not on
    one clone baseline measured before everything else.
    """
    fn()

    def clone_time() -> float:
        start = time.perf_counter()
        clone()
        return time.perf_counter() - start

    clone_time()
    ratios, samples = [], []
    before = clone_time()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        after = clone_time()
        ratios.append(elapsed / ((before + after) / 2))
        samples.append(elapsed)
        before = after
    return statistics.median(ratios), statistics.median(samples)


def cases(formats: list[str]) -> list[tuple[str, qbench.QuantSpec]]:
    from qbench.spec import spec_from_arguments

    out = []
    for name in formats:
        fmt = qbench.get_format(name)
        if fmt.default_scaling is not None:
            out.append((name, spec_from_arguments(name)))
            continue
        for mode, chunk_size in MODES:
            label = f"{name} {mode}{chunk_size or ''}"
            out.append((label, spec_from_arguments(name, mode=mode, chunk_size=chunk_size)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="square tensor side")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--formats", nargs="*", default=list(ELEMENT_FORMATS + PRESETS))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.size, args.size, device=args.device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def clone() -> None:
        x.clone()
        sync()

    print(
        f"tensor {tuple(x.shape)} float32 on {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; clone() = 1.00"
    )
    print(f"{'format / scaling':<24}{'fused':>8}{'eager':>8}{'compile s':>11}{'bit-identical':>15}")
    worst = 0.0
    for label, spec in cases(args.formats):
        fmt = qbench.get_format(spec.format)
        start = time.perf_counter()
        fused_out = fmt.quantize(x, spec, path="compiled")
        sync()
        first_call = time.perf_counter() - start

        def run_fused(fmt=fmt, spec=spec) -> None:
            fmt.quantize(x, spec, path="compiled")
            sync()

        def run_eager(fmt=fmt, spec=spec) -> None:
            fmt.quantize(x, spec, path="eager")
            sync()

        fused_ratio, fused_time = ratio_to_clone(run_fused, clone, args.repeats)
        eager_ratio, _ = ratio_to_clone(run_eager, clone, max(3, args.repeats // 3))
        identical = torch.equal(
            fused_out.view(torch.int32), fmt.quantize(x, spec, path="eager").view(torch.int32)
        )
        worst = max(worst, fused_ratio)
        print(
            f"{label:<24}{fused_ratio:>8.2f}{eager_ratio:>8.2f}"
            f"{first_call - fused_time:>11.1f}{'yes' if identical else 'NO':>15}"
        )
    print(f"worst fused ratio: {worst:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
