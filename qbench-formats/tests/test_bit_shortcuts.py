"""The bit shortcuts the fused twin takes for speed, each against the general form it
replaces, on every float32 exponent field (and the edges around it), NaN and inf:

* :func:`qbench_formats.fused.e8m0_scale` against the general E8M0 rule (``floor_log2_f32``,
  ``pow2_f32``) that the reference twin's scales follow;
* :func:`qbench_formats.fused.pow2_reciprocal`: ``x * (1 / s)`` against ``x / s`` for every
  E8M0 scale;
* :func:`qbench_formats.fused.copysign` and the compiled finite amax against torch's
  ``copysign`` and the float form, compiled (the shortcuts only run there).
"""

from __future__ import annotations

import math

import pytest
import torch
from qbench import kernels
from qbench_formats import fused, quantizer
from qbench_formats.bits import floor_log2_f32, pow2_f32

E8M0_MIN, E8M0_MAX = quantizer.E8M0_MIN_EXP, quantizer.E8M0_MAX_EXP


def _awkward_magnitudes() -> torch.Tensor:
    """Every binade's first, last and middle value, subnormals, 0, the largest float, inf
    and NaN: each exponent field with its mantissa extremes."""
    fields = torch.arange(0, 256, dtype=torch.int32) << 23
    mantissas = torch.tensor([0, 1, 0x400000, 0x7FFFFE, 0x7FFFFF], dtype=torch.int32)
    bits = (fields[:, None] | mantissas[None, :]).flatten()
    return bits.view(torch.float32)  # field 255: inf and NaNs


def _general_e8m0(amax: torch.Tensor, emax: int) -> torch.Tensor:
    shared = torch.clamp(floor_log2_f32(amax) - emax, E8M0_MIN, E8M0_MAX)
    shared = torch.where(amax == 0, torch.full_like(shared, E8M0_MIN), shared)
    return torch.where(torch.isfinite(amax), pow2_f32(shared), float("nan"))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("emax", [0, 1, 2, 4, 8, 15, 127])
def test_e8m0_scale_matches_the_general_rule(emax: int) -> None:
    amax = _awkward_magnitudes()
    got, want = fused.e8m0_scale(amax, emax), _general_e8m0(amax, emax)
    assert _same_bits(got, want), emax  # NaN included: both store float("nan")'s bits


def test_e8m0_scale_refuses_a_negative_emax() -> None:
    # below emax 0 a subnormal amax may not clamp to 2^-127; the quantizer keeps the general
    # rule there
    with pytest.raises(AssertionError):
        fused.e8m0_scale(torch.ones(1), -1)


def test_pow2_reciprocal_multiplies_like_the_division() -> None:
    exponents = torch.arange(E8M0_MIN, E8M0_MAX + 1, dtype=torch.int32)
    scales = torch.cat([pow2_f32(exponents), torch.tensor([float("nan")])])
    reciprocal = fused.pow2_reciprocal(scales)
    assert _same_bits(reciprocal[:-1], pow2_f32(-exponents))
    assert bool(torch.isnan(reciprocal[-1]))
    torch.manual_seed(0)
    x = torch.cat(
        [
            _awkward_magnitudes(),
            -_awkward_magnitudes(),
            torch.randn(4096) * torch.exp2(torch.randint(-140, 140, (4096,)).float()),
            torch.tensor([0.0, -0.0, math.inf, -math.inf]),
        ]
    )
    quotient = x[:, None] / scales[None, :]
    product = x[:, None] * reciprocal[None, :]
    same = (quotient.view(torch.int32) == product.view(torch.int32)) | (
        torch.isnan(quotient) & torch.isnan(product)
    )
    assert bool(same.all()), int((~same).sum())


def _compiled_copysign(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return fused.copysign(a.clone(), b)


def _compiled_finite_amax(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return quantizer._finite_amax(x, dims)


def test_compiled_copysign_and_finite_amax_match_torch() -> None:
    if not kernels.COMPILE_ENABLED:
        pytest.skip("QBENCH_COMPILE=0: nothing is compiled")
    magnitudes = _awkward_magnitudes()
    values = torch.cat([magnitudes, -magnitudes]).reshape(-1, 5)  # rows: one exponent field
    signs = values.flip(0)
    got = kernels.fused(_compiled_copysign, (values, signs), path="compiled")
    assert not kernels._FAILED
    want = torch.copysign(values, signs)
    same = (got.view(torch.int32) == want.view(torch.int32)) | (
        torch.isnan(got) & torch.isnan(want) & (torch.signbit(got) == torch.signbit(want))
    )
    assert bool(same.all())
    for dims in ((1,), (0, 1), ()):
        got = kernels.fused(_compiled_finite_amax, (values,), (dims,), path="compiled")
        magnitude = torch.where(torch.isfinite(values), values.abs(), torch.zeros_like(values))
        want = magnitude.amax(dim=dims, keepdim=True) if dims else magnitude
        assert _same_bits(got, want), dims
