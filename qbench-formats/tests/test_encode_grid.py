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


def _negative_nan() -> torch.Tensor:
    nan = torch.tensor([float("nan")])
    negative = (nan.view(torch.int32) | torch.tensor([-(2**31)], dtype=torch.int32)).view(
        torch.float32
    )
    assert bool(negative.isnan()) and bool(negative.view(torch.int32) < 0)
    return negative


# encode_grid_bits takes torch's float8 cast eagerly where it applies (fp8 formats), the bit
# fields otherwise; encode_bit_fields is the bit-field encoder alone (the compiled path).
ENCODERS = {
    "encode_grid_bits": fused.encode_grid_bits,
    "encode_bit_fields": fused.encode_bit_fields,
}


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("name", FLOATS)
def test_bit_encoder_matches_reference_on_every_value(name, encoder):
    fmt = qbench.get_format(name)
    assert fmt.encodes_from_bits()
    values = fmt.values()
    specials = torch.tensor([0.0, -0.0, float("nan"), float("inf"), float("-inf")])
    grid = torch.cat([values, -values, specials, _negative_nan()]).to(torch.float32)
    if not fmt.has_inf:
        grid = grid[~torch.isinf(grid)]
    expected = reference.encode_float(fmt, grid)
    got = ENCODERS[encoder](fmt, grid)
    assert got.dtype == torch.int32
    assert torch.equal(got, expected.to(torch.int32))
    # and the codes decode back to the values (NaN to NaN)
    decoded = fmt.decode(got)
    same = (decoded == grid) | (torch.isnan(decoded) & torch.isnan(grid))
    assert bool(same.all())


def test_fp8_formats_encode_by_torch_cast_only_where_the_codes_coincide(monkeypatch):
    from qbench_formats.families import FloatFormat

    expected = {
        "fp8_e4m3": torch.float8_e4m3fn,
        "fp8_e5m2": torch.float8_e5m2,
        "fp8_e4m3fnuz": torch.float8_e4m3fnuz,
        "fp8_e5m2fnuz": torch.float8_e5m2fnuz,
    }
    for name in FLOATS:
        assert fused.float8_dtype(qbench.get_format(name)) is expected.get(name), name
    # fp8-shaped grids no torch dtype encodes: an IEEE-style E4M3 (max 240, inf), another bias
    ieee_e4m3 = FloatFormat("e4m3_ieee", 4, 3, 7, "ieee")
    biased = FloatFormat("e4m3_bias6", 4, 3, 6, "fn")
    for fmt in (ieee_e4m3, biased, qbench.get_format("int8")):
        assert fused.float8_dtype(fmt) is None, fmt
    grid = torch.cat([ieee_e4m3.values(), -ieee_e4m3.values()]).to(torch.float32)
    assert torch.equal(
        fused.encode_grid_bits(ieee_e4m3, grid),
        reference.encode_float(ieee_e4m3, grid).to(torch.int32),
    )

    # eager fp8 encoding really is the cast: it runs with the bit-field encoder disabled,
    # and keeps a channels-last tensor's layout
    def refuse(fmt, values):
        raise AssertionError("bit fields used")

    e4m3 = qbench.get_format("fp8_e4m3")
    x = e4m3.round(torch.randn(2, 5, 3, 4) * 100).contiguous(memory_format=torch.channels_last)
    want = fused.encode_grid_bits(e4m3, x.contiguous())
    monkeypatch.setattr(fused, "encode_bit_fields", refuse)
    got = fused.encode_grid_bits(e4m3, x)
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(AssertionError, match="bit fields used"):
        fused.encode_grid_bits(qbench.get_format("fp6_e2m3"), torch.zeros(3))


def test_formats_outside_float32_normals_take_the_reference():
    assert not qbench.get_format("e8m0").encodes_from_bits()
    assert not qbench.get_format("int8").encodes_from_bits()
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
