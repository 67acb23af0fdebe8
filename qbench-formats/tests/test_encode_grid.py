"""The fast bit-field encoder gives the reference encoder's codes on every code point."""

from __future__ import annotations

import pytest
import qbench
import torch
from qbench_formats import fused, reference

FLOATS = [
    "fp8_e4m3",
    "fp8_e4m3fnuz",
    "fp8_e5m2",
    "fp8_e5m2fnuz",
    "fp6_e2m3",
    "fp6_e3m2",
    "fp4_e2m1",
    "fp4_e3m0",
]


@pytest.mark.parametrize("name", FLOATS)
def test_bit_encoder_matches_reference_on_every_value(name):
    fmt = qbench.get_format(name)
    assert fused.encodes_from_bits(fmt)
    values = fmt.values()
    specials = torch.tensor([0.0, -0.0, float("nan"), float("inf"), float("-inf")])
    grid = torch.cat([values, -values, specials]).to(torch.float32)
    if not fmt.has_inf:
        grid = grid[~torch.isinf(grid)]
    expected = reference.encode_float(fmt, grid)
    got = fused.encode_grid_bits(fmt, grid)
    assert got.dtype == torch.int32
    assert torch.equal(got, expected.to(torch.int32))
    # and the codes decode back to the values (NaN to NaN)
    decoded = fmt.decode(got)
    same = (decoded == grid) | (torch.isnan(decoded) & torch.isnan(grid))
    assert bool(same.all())


def test_formats_outside_float32_normals_take_the_reference():
    assert not fused.encodes_from_bits(qbench.get_format("e8m0"))
    assert not fused.encodes_from_bits(qbench.get_format("int8"))
    e8m0 = qbench.get_format("e8m0")
    tiny = torch.tensor([2.0**-127, 1.0, 2.0**127])
    assert torch.equal(e8m0.encode_grid(tiny), reference.encode_float(e8m0, tiny))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fp8_e4m3", "fp4_e2m1"])
def test_compiled_encoder_matches_eager(name):
    from qbench_formats.quantizer import encode_codes

    fmt = qbench.get_format(name)
    x = torch.randn(512, 600) * 3
    x[0, :4] = torch.tensor([float("nan"), 0.0, -0.0, 1e-9])
    elements = fmt.round(x)
    eager = encode_codes(fmt, elements, path="eager")
    compiled = encode_codes(fmt, elements, path="compiled")
    assert torch.equal(eager, compiled)
    assert torch.equal(eager, reference.encode_float(fmt, elements).to(torch.int32))


def test_wide_quotient_is_the_correctly_rounded_float32_quotient() -> None:
    """The float64 route CUDA divides by (fused.divide) equals IEEE float32 division, here
    CPU's, on random bit patterns over the whole range (subnormal, huge, inf, NaN, zero
    operands and quotients) and on quotients near ties of float32."""
    generator = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31, (2, 1_000_000), dtype=torch.int64, generator=generator)
    a, b = bits.to(torch.int32).view(torch.float32)
    # quotients just either side of a tie: b * (1 + (2k+1) 2^-24) in float64, rounded
    m = torch.randint(1, 2**23, (200_000,), generator=generator).to(torch.float64)
    near = torch.rand(200_000, generator=generator, dtype=torch.float64) * 4 + 0.5
    tie_b = near.to(torch.float32)
    tie_a = (tie_b.to(torch.float64) * (1 + (2 * m + 1) * 2.0**-24)).to(torch.float32)
    for x, y in ((a, b), (tie_a, tie_b), (a, 3.0), (a, 448.0 * 6.0)):
        want = x / y
        got = fused.wide_quotient(x, y)
        same = (got.view(torch.int32) == want.view(torch.int32)) | (got.isnan() & want.isnan())
        assert bool(same.all()), (x[~same][:4], y if isinstance(y, float) else y[~same][:4])
