"""Scale methods (``Scaling.scale_method``): the value of each group that a scale maps onto
the element format's max.

Every method yields a *clip value* per group; the quantizer turns it into a scale exactly as
it turns an absmax into one (fp32 division, e8m0 exponent, fp8 block scale rounding), so the
scales stay legal in their scale format and ``codes x scales == dequantized`` holds. Values
above the clip value are rounded with the spec's overflow rule (``saturate``, the default,
clips them to ±max).

* ``absmax``: the largest finite magnitude of the group (NaN-propagating under e8m0).
* ``percentile``: the p-th percentile of |x| over the group's finite values, by the
  nearest-rank rule: of n values sorted ascending, the one of rank ``ceil(p / 100 * n)``
  (clamped to 1...n), i.e. the k-th largest with ``k = n - ceil(p n / 100) + 1``; numpy's
  ``percentile(..., method="inverted_cdf")``. It is a value of the group, never an
  interpolation; the rank is computed in float64 as ``ceil(n * p / 100)``. Default ``p``:
  99.99 for tensors and channels; for chunks ``100 (1 - 1/c)`` for blocks of ``c`` elements
  (rank ``n - floor(n / c)``, in integers), so a full block saturates its single largest
  magnitude (the clip is its second largest). Any fixed p >= 100 (1 - 1/c) is the max of a
  c-element block (99.99 is for every block under 10^4 elements), i.e. absmax; this default
  is the least clipping that still differs from it. A short last block of n < c elements
  then keeps its max. Zero padding of that block is left out of its ranks. A group whose
  percentile is 0 (mostly zeros) falls back to its absmax: no scale maps 0 onto the format's
  max.
* ``mse``: the clip ``amax * r`` for ``r`` in :data:`MSE_RATIOS` (1.00, 0.99, ..., 0.50) that
  minimises each group's sum of squared quantization errors over its finite values (in
  float64); ties go to the larger ``r``, so ``r = 1`` (absmax) wins unless another ratio is
  strictly better, and the result is never worse than absmax's (deterministic roundings).
  Each candidate is a full quantization (scales rounded to the scale format, elements
  rounded with the spec's rounding, ``nearest_even`` in place of ``stochastic`` so that the
  choice does not depend on a random draw); the search is vectorised over groups and loops
  over the 51 ratios, eagerly (about 50 quantize passes: meant for weights, which are
  quantized once).

NaN and inf behave as under absmax: under e8m0 a block holding one gets a NaN clip (so a NaN
scale, the whole block NaN); otherwise they are left out of the statistics (a NaN stays a
local NaN, an inf saturates). A group of zeros gets clip 0, hence absmax's zero-group scale.
The second-level (per-tensor fp32) scale of a two-level scaling such as NVFP4 stays
absmax-based (the tensor's amax onto max_scale_format x max_element): the method chooses
each block's clip beneath it, and groups stay independent during the mse search.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import torch
from qbench.errors import QBenchError

#: Default percentile of tensor and channel groups (the common calibration choice, e.g.
#: NVIDIA's pytorch-quantization ``percentile`` calibrator).
DEFAULT_PERCENTILE = 99.99
#: Candidate clip ratios of the mse search: 1.00 down to 0.50 in steps of 0.01 (largest first,
#: so that a tie keeps the larger ratio). float32, as the clip ``amax * r`` is computed.
MSE_RATIOS: tuple[float, ...] = tuple(float(torch.tensor(1 - i / 100)) for i in range(51))


def percentile_of(scaling: Any) -> float | None:
    """The percentile a spec asks for (``Scaling.percentile``), or None for the default."""
    return getattr(scaling, "percentile", None)


def check_percentile(value: Any) -> None:
    """Refuse a percentile outside (0, 100] with one actionable line."""
    if value is None:
        return
    ok = isinstance(value, Real) and not isinstance(value, bool) and 0 < float(value) <= 100
    if not ok or math.isnan(float(value)):
        raise QBenchError(f"percentile must be a number in (0, 100], found {value!r}")


def nearest_rank(
    count: torch.Tensor, percentile: float | None, block_length: int | None
) -> torch.Tensor:
    """The ascending rank (1...count, 1 for an empty group) of the ``percentile``-th
    percentile of ``count`` values: ``ceil(count * p / 100)``; with ``percentile`` None the
    default, for chunks of ``block_length`` elements ``p = 100 (1 - 1/block_length)`` as the
    exact integer ``count - floor(count / block_length)``, else ``p = 99.99``."""
    if percentile is None and block_length is not None:
        rank = count - torch.div(count, block_length, rounding_mode="floor")
    else:
        p = DEFAULT_PERCENTILE if percentile is None else float(percentile)
        rank = torch.ceil(count.to(torch.float64) * p / 100.0).to(torch.int64)
    return torch.clamp(torch.minimum(rank, count), min=1)


def _groups_last(t: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
    """``t`` with the kept dims first and the reduced ``dims`` flattened into the last one,
    and the keepdim shape of one value per group."""
    keep = [d for d in range(t.dim()) if d not in dims]
    flat = t.permute(*keep, *dims).reshape(*[t.shape[d] for d in keep], -1)
    keepdim_shape = [1 if d in dims else t.shape[d] for d in range(t.dim())]
    return flat, keepdim_shape


def group_percentile(
    xg: torch.Tensor,
    valid: torch.Tensor | None,
    dims: tuple[int, ...],
    percentile: float | None,
    block_length: int | None = None,
) -> torch.Tensor:
    """The nearest-rank ``percentile`` (:func:`nearest_rank`) of |x| over each group's
    finite, ``valid`` values (keepdim, float32); 0 for a group with none. ``valid`` masks
    padding (None: all valid); ``block_length``: the chunk length (chunk mode only)."""
    usable = torch.isfinite(xg)
    if valid is not None:
        usable &= valid
    magnitude = torch.where(usable, xg.abs(), torch.full_like(xg, -1.0))
    flat, keepdim_shape = _groups_last(magnitude, dims)
    ascending, _ = torch.sort(flat, dim=-1)  # unusable lanes (-1) sort first
    count = _groups_last(usable, dims)[0].sum(dim=-1, keepdim=True)
    rank = nearest_rank(count, percentile, block_length)
    index = torch.clamp(flat.shape[-1] - count + rank - 1, max=flat.shape[-1] - 1)
    value = torch.gather(ascending, -1, index)
    value = torch.where(count > 0, value, torch.zeros_like(value))
    return value.reshape(keepdim_shape)


def percentile_clip(
    xg: torch.Tensor,
    amax: torch.Tensor,
    valid: torch.Tensor | None,
    dims: tuple[int, ...],
    percentile: float | None,
    block_length: int | None = None,
) -> torch.Tensor:
    """Each group's clip value under ``percentile`` (None: the default, which depends on
    ``block_length`` in chunk mode); ``amax`` is the group's absmax as the scale kind
    computes it (NaN-propagating under e8m0), kept where it is not finite and where the
    percentile is 0."""
    clip = group_percentile(xg, valid, dims, percentile, block_length)
    clip = torch.where(clip > 0, clip, torch.nan_to_num(amax, nan=0.0, posinf=0.0))
    return torch.where(torch.isfinite(amax), clip, amax)


def mse_clip(
    xg: torch.Tensor,
    amax: torch.Tensor,
    dims: tuple[int, ...],
    dequantize: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Each group's clip ``amax * r`` (r in :data:`MSE_RATIOS`) with the least sum of squared
    errors of ``dequantize(clip)`` (the quantized ``xg`` under those clips) over the group's
    finite values; ties keep the larger ``r``. Vectorised over groups (keepdim)."""
    finite = torch.isfinite(xg)
    target = torch.where(finite, xg, torch.zeros_like(xg)).to(torch.float64)
    best_error = torch.full_like(amax, math.inf, dtype=torch.float64)
    best_ratio = torch.ones_like(amax)
    for ratio in MSE_RATIOS:
        dequantized = dequantize(amax * ratio).to(torch.float64)
        squared = torch.where(finite, (dequantized - target) ** 2, torch.zeros_like(target))
        error = squared.sum(dim=dims, keepdim=True) if dims else squared
        error = torch.nan_to_num(error, nan=math.inf)  # a NaN result is never the best
        better = error < best_error  # strict: a tie keeps the earlier, larger ratio
        best_error = torch.where(better, error, best_error)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return amax * best_ratio
