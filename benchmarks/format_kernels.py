"""What reading a format's numbers at run time saves in compiling, and costs in the kernel.

QBench's compiled quantize and audit kernels take a format's numbers (its max, exponents,
bias, special codes) as run-time values (``qbench.kernels.fused``'s ``numbers``), so one
kernel serves every float format with a mantissa under one scaling. The baseline beside it is
the same code with the numbers baked in as constants (``QBENCH_RUNTIME_NUMBERS=0``), one
kernel per format, as before. Results: benchmarks/README.md.

1. Compiling, in fresh processes: a sweep quantizes one tensor with every format under
   channel and chunk-32 scaling, with and without codes, on the compiled path, and audits
   each result with codes (the compliance audit's count); printed: the kernels compiled and
   the seconds, with inductor's disk cache cold (an empty folder) and
   then warm (the same folder again), run-time numbers against baked ones.
2. The kernels, in one process: each row's compiled quantization with codes, run-time
   numbers against baked ones, timed alternately, the median of the per-round ratios
   (<= 1.05 is "no slower": the rounds' noise on a quiet 2-core VM). Rows: the sweep's
   formats and ``--other-formats`` under channel, chunk-32 and tensor scaling, and the
   ``--presets`` (MX and NVFP4) with their own.

    .venv/bin/python benchmarks/format_kernels.py
    .venv/bin/python benchmarks/format_kernels.py --formats fp8_e4m3 fp6_e2m3 --skip-compile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

FORMATS = ["fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1"]
SCALINGS = [("channel", None), ("chunk", 32)]
#: The kernel table (2.) also times the other kinds of kernel: a format without mantissa
#: (its own rounding), an int format, whole-tensor scaling (two kernels), and the presets
#: with E8M0 block scales and with a second-level scale (three kernels). A kind left out
#: here is a kind whose run-time numbers nobody times (fp4_e3m0 once ran 4x slower so).
OTHER_FORMATS = ["fp4_e3m0", "int8"]
PRESETS = ["mxfp8_e4m3", "mxfp4_e2m1", "nvfp4"]
#: A ratio of kernel times this close to 1 is within the rounds' noise.
NO_SLOWER = 1.05


def sweep(formats: list[str], size: int) -> dict[str, float]:
    """The child process: quantize with every format and scaling on the compiled path."""
    start = time.perf_counter()
    import qbench
    import torch
    from qbench import kernels
    from qbench.spec import spec_from_arguments
    from qbench_eval.compliance import counting, tables

    imported = time.perf_counter()
    x = torch.randn(size, size)
    formats_tables = tables.FormatTables()
    for name in formats:
        fmt = qbench.get_format(name)
        for mode, chunk_size in SCALINGS:
            spec = spec_from_arguments(name, mode=mode, chunk_size=chunk_size)
            fmt.quantize(x, spec, path="compiled")
            result = fmt.quantize(x, spec, return_codes=True, path="compiled")
            table = formats_tables.table(name, fmt, result.codes)
            for part in counting._grouped_parts(result) or ():
                table.counts(*part)
    return {
        "kernels": len(kernels._COMPILED),
        "failed": len(kernels._FAILED),
        "import_s": imported - start,
        "sweep_s": time.perf_counter() - imported,
    }


def child(formats: list[str], size: int, cache: str, runtime: bool) -> dict[str, float]:
    env = {
        **os.environ,
        "QBENCH_CACHE_DIR": cache,
        "QBENCH_RUNTIME_NUMBERS": "1" if runtime else "0",
    }
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    command = [sys.executable, __file__, "--child", "--size", str(size), "--formats", *formats]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_table(formats: list[str], size: int) -> None:
    print(f"1. compiling a sweep: {len(formats)} formats x {len(SCALINGS)} scalings x codes")
    print(f"   {'numbers':<10}{'cache':<7}{'kernels':>9}{'sweep s':>10}")
    figures: dict[tuple[str, str], float] = {}
    for runtime in (True, False):
        label = "run-time" if runtime else "baked"
        with tempfile.TemporaryDirectory(prefix="qbench-format-kernels-") as cache:
            for state in ("cold", "warm"):
                result = child(formats, size, cache, runtime)
                figures[label, state] = result["sweep_s"]
                failed = f"  ({result['failed']:.0f} failed: eager)" if result["failed"] else ""
                print(
                    f"   {label:<10}{state:<7}{result['kernels']:>9.0f}"
                    f"{result['sweep_s']:>10.1f}{failed}"
                )
    for state in ("cold", "warm"):
        saved = figures["baked", state] / figures["run-time", state]
        print(f"   {state}: baked / run-time = {saved:.2f}x")


def kernel_table(formats: list[str], presets: list[str], size: int, rounds: int) -> None:
    import qbench
    import torch
    from qbench import kernels
    from qbench.spec import spec_from_arguments

    print(f"2. kernels, {size}x{size} float32, run-time / baked numbers (median of {rounds})")
    x = torch.randn(size, size)
    worst = 0.0
    rows = [
        (f"{name} {mode}{chunk_size or ''}", name, {"mode": mode, "chunk_size": chunk_size})
        for name in formats
        for mode, chunk_size in [*SCALINGS, ("tensor", None)]
    ]
    rows += [(name, name, {}) for name in presets]
    for label, name, scaling in rows:
        fmt = qbench.get_format(name)
        spec = spec_from_arguments(name, **scaling)

        def run(runtime: bool, spec=spec, fmt=fmt) -> float:
            kernels.RUNTIME_NUMBERS = runtime
            start = time.perf_counter()
            fmt.quantize(x, spec, return_codes=True, path="compiled")
            return time.perf_counter() - start

        run(True), run(False)  # compile both
        ratios = []
        for i in range(rounds):
            first = i % 2 == 0
            a = run(first)
            b = run(not first)
            runtime_s, baked_s = (a, b) if first else (b, a)
            ratios.append(runtime_s / baked_s)
        ratio = statistics.median(ratios)
        worst = max(worst, ratio)
        print(f"   {label:<22}{ratio:>6.2f}")
    kernels.RUNTIME_NUMBERS = True
    verdict = "no slower" if worst <= NO_SLOWER else "SLOWER"
    print(f"   worst {worst:.2f} (<= {NO_SLOWER}: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="*", default=FORMATS)
    parser.add_argument("--other-formats", nargs="*", default=OTHER_FORMATS, help="kernels only")
    parser.add_argument("--presets", nargs="*", default=PRESETS, help="kernels only")
    parser.add_argument("--size", type=int, default=1024, help="the sweep's tensor side")
    parser.add_argument("--kernel-size", type=int, default=2048, help="the timed tensor side")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(sweep(args.formats, args.size)))
        return
    if not args.skip_compile:
        compile_table(args.formats, args.size)
    if not args.skip_kernels:
        kernel_table(
            [*args.formats, *args.other_formats], args.presets, args.kernel_size, args.rounds
        )


if __name__ == "__main__":
    main()
