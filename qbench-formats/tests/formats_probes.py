"""Probe values that find rounding bugs: code points, ties, their float32 neighbours, beyond
max, specials, float32 subnormals and random bit patterns over the whole float32 range."""

from __future__ import annotations

import numpy as np
import torch


def neighbours(values: np.ndarray) -> np.ndarray:
    """Each float32 value with its next float32 below and above (one ulp either side)."""
    v = values.astype(np.float32)
    with np.errstate(over="ignore"):
        down = np.nextafter(v, np.float32(-np.inf))
        up = np.nextafter(v, np.float32(np.inf))
    return np.concatenate([v, down, up])


def probes(
    grid: np.ndarray, max_value: float, random_count: int = 1_000_000, seed: int = 0
) -> torch.Tensor:
    """float32 probes around ``grid`` (a format's sorted finite values), both signs."""
    grid64 = np.unique(np.abs(grid.astype(np.float64)))
    midpoints = (grid64[:-1] + grid64[1:]) / 2
    # Binary float/int grids have ties exactly representable in float32; a lookup table
    # (nf4) may not, and then the float32 neighbours of the midpoint bracket it.
    beyond = np.array(
        [
            max_value * 1.01,
            max_value * 2,
            max_value * 1e3,
            1e30,
            np.finfo(np.float32).max,
        ]
    )
    # The tie between max and the next value the format would have with one more exponent.
    top_quantum = grid64[-1] - grid64[-2]
    beyond = np.concatenate([beyond, [grid64[-1] + top_quantum / 2, grid64[-1] + top_quantum]])
    with np.errstate(over="ignore"):
        beyond = beyond[np.isfinite(beyond.astype(np.float32))]
    f32_subnormals = np.array(
        [2.0**-149, 2.0**-148, 3 * 2.0**-149, 2.0**-127, 2.0**-126 - 2.0**-149, 2.0**-130],
        dtype=np.float64,
    )
    specials = np.array([0.0, np.inf, np.nan], dtype=np.float32)
    rng = np.random.default_rng(seed)
    random_bits = rng.integers(0, 2**32, size=random_count, dtype=np.uint64).astype(np.uint32)
    random_values = random_bits.view(np.float32)
    # Random values at the scale of the grid too (bit patterns rarely land near small grids).
    local = (rng.standard_normal(random_count // 4) * max_value / 3).astype(np.float32)
    positive = np.concatenate(
        [
            neighbours(grid64.astype(np.float32)),
            neighbours(midpoints.astype(np.float32)),
            neighbours(beyond.astype(np.float32)),
            neighbours(f32_subnormals.astype(np.float32)),
        ]
    )
    everything = np.concatenate([positive, -positive, specials, -specials, random_values, local])
    return torch.from_numpy(everything.astype(np.float32))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: identical float32 bits, or both NaN (NaN payloads/signs are not data)."""
    a32, b32 = a.to(torch.float32), b.to(torch.float32)
    equal = a32.view(torch.int32) == b32.view(torch.int32)
    return equal | (torch.isnan(a32) & torch.isnan(b32))


def mismatches(x: torch.Tensor, got: torch.Tensor, want: torch.Tensor, limit: int = 8) -> str:
    bad = ~same_bits(got, want)
    idx = torch.nonzero(bad).flatten()[:limit]
    rows = [f"x={x[i].item()!r} got={got[i].item()!r} want={want[i].item()!r}" for i in idx]
    return f"{int(bad.sum())} mismatches: " + "; ".join(rows)
