"""Fake-quantization speed as a ratio to ``x.clone()`` (results: benchmarks/README.md).

Fake quantization is memory-bound: its floor is one read and one write of the tensor, which
is what ``clone()`` does. For each format x scaling this prints time / clone time for the
fused (torch.compile) and the eager path, measured in one process after warm-up (the median
of per-run ratios, each run timed between two clones), and the one-off compile time.
Target: fused <= 1.5 on CPU for a 4096 x 4096 float32 tensor.

Beside it, in the same process and interleaved with it run by run, a baseline that does
less (no exact ties, no codes, no NaN/inf rules) written the way one would without QBench:

* fp8 rows: a *naive float8 cast*, ``torch.compile(dynamic=True)`` (as QBench compiles) of
  the scale from the amax at the row's granularity (tensor / channel / chunk) and
  ``(x * s).to(float8).float() / s``;
* MX rows: torchao's MX cast (``to_mx`` then ``to_dtype``), when torchao is importable
  (not a dependency: ``uv pip install torchao==0.15.0`` matches the pinned torch 2.9.1;
  newer torchao needs newer torch), compiled where inductor can compile it, else eager (a
  note says which; torch 2.9's C++ backend cannot compile its float8_e8m0fnu scales).

``naive`` is the baseline's time / clone time and ``÷naive`` QBench's fused time / the
baseline's (the median of per-run quotients). The verdict: ``ok`` for fused <= 1.5,
``ok (naive)`` for fused above 1.5 but no slower than the baseline (fused ÷ naive <= 1.0),
else ``MISS``.

``--keep-freed-memory`` applies ``qbench run``'s malloc tuning (:mod:`qbench.memory`):
freed blocks are reused, so neither side pays the page faults of a fresh 64 MiB output
(about three quarters of ``clone()``'s time on a 2-core VM) and the ratios show the
arithmetic, as a run sees it.

    .venv/bin/python benchmarks/quantize.py            # the full table
    .venv/bin/python benchmarks/quantize.py --size 1024 --formats fp8_e4m3 --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import qbench
import torch

ELEMENT_FORMATS = ("fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "fp4_e3m0", "int8")
MODES = (("tensor", None), ("channel", None), ("chunk", 128))
PRESETS = ("mxfp8_e4m3", "mxfp4_e2m1", "nvfp4")
TARGET = 1.5

#: the torch float8 dtype of each fp8 element format (the naive cast's target)
FLOAT8 = {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
#: torchao's element dtype for each MX preset (block 32)
TORCHAO_MX = {"mxfp8_e4m3": "float8_e4m3fn", "mxfp4_e2m1": "float4_e2m1fn_x2"}


def ratios_to_clone(
    fns: list[Callable[[], None]], clone: Callable[[], None], repeats: int
) -> tuple[list[float], list[float], list[list[float]]]:
    """For each of ``fns``: the median of its time / ``clone`` time over ``repeats`` runs,
    each run timed between two clones (after one warm-up run of each), and its median time;
    and the per-run times, so that callers can form per-run quotients of two ``fns``.

    Interleaved (each run of every function in turn, the order reversed every other round),
    a slow spell of a shared machine lands on both sides of a ratio, not on one clone
    baseline measured before everything else, nor on one function only.
    """
    for fn in fns:
        fn()

    def clone_time() -> float:
        start = time.perf_counter()
        clone()
        return time.perf_counter() - start

    clone_time()
    ratios: list[list[float]] = [[] for _ in fns]
    samples: list[list[float]] = [[] for _ in fns]
    before = clone_time()
    for round_ in range(repeats):
        order = range(len(fns)) if round_ % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            start = time.perf_counter()
            fns[i]()
            elapsed = time.perf_counter() - start
            after = clone_time()
            ratios[i].append(elapsed / ((before + after) / 2))
            samples[i].append(elapsed)
            before = after
    medians = [statistics.median(r) for r in ratios]
    times = [statistics.median(s) for s in samples]
    return medians, times, samples


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


def naive_float8(dtype: torch.dtype, mode: str, chunk_size: int | None) -> Callable:
    """A compiled fake quant through torch's float8 cast, scaled per tensor / channel (axis
    0) / chunk along the last axis: what one writes without QBench."""
    largest = torch.finfo(dtype).max

    def fake_quant(x: torch.Tensor) -> torch.Tensor:
        xg = x.unflatten(-1, (-1, chunk_size)) if mode == "chunk" else x
        if mode == "tensor":
            amax = xg.abs().amax()
        elif mode == "channel":
            amax = xg.abs().amax(dim=tuple(range(1, xg.dim())), keepdim=True)
        else:
            amax = xg.abs().amax(dim=-1, keepdim=True)
        s = largest / amax.clamp(min=1e-30)
        return ((xg * s).to(dtype).float() / s).reshape(x.shape)

    return torch.compile(fake_quant, dynamic=True)


def torchao_mx(name: str, x: torch.Tensor) -> tuple[Callable | None, str]:
    """torchao's MX cast of ``x`` as a fake quant (compiled if inductor can, else eager),
    and a note; (None, why) where torchao is not importable."""
    try:
        from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    except Exception as exc:  # not installed, or built for another torch
        return None, f"torchao not importable ({type(exc).__name__}): no MX baseline"
    elem = getattr(torch, TORCHAO_MX[name])

    def fake_quant(x: torch.Tensor) -> torch.Tensor:
        scale, data = to_mx(x, elem, 32)
        return to_dtype(data, scale, elem, 32, torch.float32)

    inductor_log = logging.getLogger("torch._inductor")
    level = inductor_log.level
    inductor_log.setLevel(logging.CRITICAL + 1)  # a failed codegen logs its whole IR node
    try:
        compiled = torch.compile(fake_quant, dynamic=True)
        compiled(x)
        return compiled, "torchao compiled"
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[0][:120] if lines else type(exc).__name__
        return fake_quant, f"torchao's MX cast runs eager: torch.compile failed ({reason})"
    finally:
        inductor_log.setLevel(level)


def baseline(label: str, spec: qbench.QuantSpec, x: torch.Tensor) -> tuple[Callable | None, str]:
    """The row's baseline (see the module docstring) and a note, or (None, "")."""
    scaling = spec.scaling
    if spec.format in FLOAT8 and scaling.scale_format == "fp32" and scaling.axis in (None, 0, -1):
        dtype = getattr(torch, FLOAT8[spec.format])
        return naive_float8(dtype, scaling.mode, scaling.chunk_size), "naive float8 cast"
    if spec.format in TORCHAO_MX:
        return torchao_mx(spec.format, x)
    return None, ""


def verdict(fused: float, versus_naive: float | None) -> str:
    if fused <= TARGET:
        return "ok"
    if versus_naive is not None and versus_naive <= 1.0:
        return "ok (naive)"
    return "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="square tensor side")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--formats", nargs="*", default=list(ELEMENT_FORMATS + PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="qbench run's malloc tuning: no page faults for fresh outputs (Linux/glibc)",
    )
    parser.add_argument("--no-baselines", action="store_true", help="fused and eager only")
    args = parser.parse_args()

    if args.keep_freed_memory:
        from qbench.memory import keep_freed_memory

        if not keep_freed_memory():
            print("note: --keep-freed-memory has no effect here (not Linux with glibc)")
    torch.manual_seed(0)
    x = torch.randn(args.size, args.size, device=args.device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def clone() -> None:
        x.clone()
        sync()

    print(
        f"tensor {tuple(x.shape)} float32 on {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
        f"{', freed memory kept' if args.keep_freed_memory else ''}; clone() = 1.00"
    )
    print(
        f"{'format / scaling':<22}{'fused':>7}{'eager':>7}{'naive':>7}{'÷naive':>8}"
        f"{'compile s':>10}{'bit-identical':>14}  verdict"
    )
    worst = 0.0
    notes: list[str] = []
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

        naive, note = (None, "") if args.no_baselines else baseline(label, spec, x)
        if note.startswith("torchao") and note not in notes:
            notes.append(note)
        fns: list[Callable[[], None]] = [run_fused]
        if naive is not None:

            def run_naive(naive=naive) -> None:
                naive(x)
                sync()

            fns.append(run_naive)
        medians, times, samples = ratios_to_clone(fns, clone, args.repeats)
        fused_ratio, fused_time = medians[0], times[0]
        naive_ratio = versus = None
        if naive is not None:
            naive_ratio = medians[1]
            versus = statistics.median(f / n for f, n in zip(samples[0], samples[1]))
        eager_ratio = ratios_to_clone([run_eager], clone, max(3, args.repeats // 3))[0][0]
        identical = torch.equal(
            fused_out.view(torch.int32), fmt.quantize(x, spec, path="eager").view(torch.int32)
        )
        worst = max(worst, fused_ratio)
        naive_text = f"{naive_ratio:>7.2f}{versus:>8.2f}" if naive_ratio is not None else " " * 15
        print(
            f"{label:<22}{fused_ratio:>7.2f}{eager_ratio:>7.2f}{naive_text}"
            f"{first_call - fused_time:>10.1f}{'yes' if identical else 'NO':>14}  "
            f"{verdict(fused_ratio, versus)}",
            flush=True,
        )
    print(f"worst fused ratio: {worst:.2f} (target <= {TARGET})")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
