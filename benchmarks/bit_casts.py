"""Compiled bit arithmetic with and without QBench's wide-vector compiler, in one process.

QBench's kernels are float32 bit arithmetic: bit casts between float32 and int32, integer
compares selecting values. On an x86 machine with AVX-512, torch 2.9's inductor writes 512-bit
vector code in which each vector ``bit_cast`` is a 16-lane copy through a stack array, and a
compiler tuned to prefer 256-bit vectors (gcc on Intel's AVX-512 server parts) turns that into
stalls. ``qbench.kernels.wide_vector_compiler`` builds QBench's kernels with
``-mprefer-vector-width=512`` there (benchmarks/README.md has the figures).

This prints, for three chains of eight operations over 2^20 floats (bit-cast round trips,
integer-compare selects, plain float arithmetic as the control), the time of the kernel built
by inductor's compiler as it is and by QBench's (where the machine gets one), and their ratio.
Both kernels are checked to give the same bits first. One thread by default (``--threads``).

    .venv/bin/python benchmarks/bit_casts.py [--threads 1] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from qbench import kernels


def bit_casts(x: torch.Tensor, rounds: int) -> torch.Tensor:
    for i in range(rounds):
        x = (x.view(torch.int32) ^ (1 << i)).view(torch.float32) * 1.0001
    return x


def integer_selects(x: torch.Tensor, rounds: int) -> torch.Tensor:
    for i in range(rounds):
        x = torch.where(x.view(torch.int32) < (i << 20), x * 1.01, x)
    return x


def floats(x: torch.Tensor, rounds: int) -> torch.Tensor:
    for _ in range(rounds):
        x = (x + 0.5) * 1.0001
    return x


def timed(fn, x: torch.Tensor, rounds: int, repeats: int) -> tuple[float, torch.Tensor]:
    out = kernels.fused(fn, (x,), (rounds,), path="compiled")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        kernels.fused(fn, (x,), (rounds,), path="compiled")
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wide = kernels.wide_vector_compiler()
    x = torch.randn(1 << 20)
    print(f"torch {torch.__version__}, {args.threads} thread(s), 2^20 float32, 8 rounds")
    none = "none (inductor's own: not an AVX-512 machine, or turned off)"
    print(f"QBench's compiler: {wide or none}")
    print(f"{'chain':<16} {'inductor ms':>11} {'QBench ms':>10} {'ratio':>6}")
    for fn in (bit_casts, integer_selects, floats):
        kernels._WIDE_COMPILER[:] = [None]
        plain, plain_out = timed(fn, x, 8, args.repeats)
        kernels._WIDE_COMPILER[:] = [wide]
        ours, our_out = timed(fn, x, 8, args.repeats)
        assert torch.equal(plain_out.view(torch.int32), our_out.view(torch.int32)), fn.__name__
        print(f"{fn.__name__:<16} {plain * 1e3:11.2f} {ours * 1e3:10.2f} {plain / ours:6.2f}")


if __name__ == "__main__":
    main()
