"""Every registered format quantizes, and codes * scales reproduce the output bit for bit."""

from __future__ import annotations

import pytest
import qbench
import torch
from qbench_formats.catalog import ALL_FORMATS, BY_NAME

QUANTIZABLE = [f.name for f in ALL_FORMATS if f.name not in ("e8m0", "fp32")]


def _product_matches(result, element) -> bool:
    product = element.decode(result.codes) * result.expand_scales()
    both_nan = torch.isnan(product) & torch.isnan(result.dequantized)
    return bool(((product == result.dequantized) | both_nan).all())


@pytest.mark.parametrize("name", QUANTIZABLE)
@pytest.mark.parametrize("mode", ["tensor", "channel", "chunk"])
def test_codes_times_scales_is_dequantized(name: str, mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 40, generator=gen) * 3
    kwargs = {"mode": mode}
    if mode == "chunk":
        kwargs["chunk_size"] = 16  # 40 = 16 + 16 + 8: a short last block
    if BY_NAME[name].default_scaling is not None and mode != "chunk":
        kwargs["scale_format"] = "fp32"
    result = qbench.quantize(x, name, return_codes=True, **kwargs)
    element = qbench.get_format(BY_NAME[name].element)
    assert result.dequantized.shape == x.shape and result.dequantized.dtype == x.dtype
    assert result.codes.shape == x.shape
    assert _product_matches(result, element)
    assert bool(element.is_representable(element.decode(result.codes)).all())
    plain = qbench.quantize(x, name, **kwargs)
    assert torch.equal(plain, result.dequantized)


def test_preset_brings_its_scaling() -> None:
    x = torch.randn(4, 64)
    result = qbench.quantize(x, "mxfp4_e2m1", return_codes=True)
    assert result.scales.shape == (4, 2)
    assert result.scale_parts["block"][1] == "e8m0"
    nv = qbench.quantize(x, "nvfp4", return_codes=True)
    assert nv.scales.shape == (4, 4)
    assert set(nv.scale_parts) == {"block", "tensor"}
    assert nv.scale_parts["block"][1] == "fp8_e4m3"


def test_all_zero_groups_give_zeros() -> None:
    x = torch.zeros(3, 48)
    for name in QUANTIZABLE:
        out = qbench.quantize(x, name, mode="chunk", chunk_size=32)
        assert torch.equal(out, x), name


def test_bad_spec_values_raise_qbench_error() -> None:
    x = torch.randn(4, 4)
    with pytest.raises(qbench.QBenchError, match="rounding"):
        qbench.quantize(x, "fp8_e4m3", rounding="up")
    with pytest.raises(qbench.QBenchError, match="axis"):
        qbench.quantize(x, "fp8_e4m3", mode="channel", axis=5)
    with pytest.raises(qbench.QBenchError, match="scale_method"):
        qbench.quantize(x, "fp8_e4m3", scale_method="minmax")


# -- a quantized layer's plan is built once (``quantizer._prepared``) ---------------------


def test_a_repeated_call_reuses_its_plan_and_a_new_scale_format_is_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qbench.spec import spec_from_arguments
    from qbench_formats import quantizer
    from qbench_formats.families import FloatFormat

    monkeypatch.setattr(quantizer, "_PREPARED", {})
    built = []
    validate = quantizer.validate
    monkeypatch.setattr(quantizer, "validate", lambda spec: built.append(spec) or validate(spec))
    fmt = qbench.get_format("fp4_e2m1")
    spec = spec_from_arguments("fp4_e2m1", mode="chunk", chunk_size=16, scale_format="fp8_e4m3")
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(1))
    first = fmt.quantize(x, spec, return_codes=True)
    again = fmt.quantize(x.clone(), spec, return_codes=True)
    assert len(built) == 1
    assert torch.equal(first.codes, again.codes) and torch.equal(first.scales, again.scales)
    fmt.quantize(x[:3], spec, return_codes=True)  # another shape: its own layout
    fmt.quantize(x, spec)  # no codes: its own plan
    same_values = spec_from_arguments(
        "fp4_e2m1", mode="chunk", chunk_size=16, scale_format="fp8_e4m3"
    )
    fmt.quantize(x, same_values, return_codes=True)  # keyed by identity, not by value
    assert len(built) == 4
    # The scale format is looked up on every call: another one registered under its name is
    # the one used from then on (here: scales of one mantissa bit, so other scales).
    coarse = FloatFormat("fp8_e4m3", exponent_bits=4, mantissa_bits=1, bias=7)
    registered = qbench.plugins.get
    monkeypatch.setattr(
        qbench.plugins,
        "get",
        lambda kind, name: (
            coarse if (kind, name) == ("format", "fp8_e4m3") else registered(kind, name)
        ),
    )
    coarser = fmt.quantize(x, spec, return_codes=True)
    assert len(built) == 5
    assert not torch.equal(coarser.scales, first.scales)
    assert torch.equal(coarser.scales, coarse.round(coarser.scales, "nearest_even", "saturate"))


def test_a_format_that_is_not_a_frozen_family_is_planned_on_every_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its constants (max_value, its own round) could change between calls."""
    from qbench.spec import spec_from_arguments
    from qbench_formats import quantizer

    monkeypatch.setattr(quantizer, "_PREPARED", {})

    class Halves:  # rounds itself: to multiples of 1/2 up to its max_value
        name, bits = "halves", 8

        def __init__(self, max_value: float) -> None:
            self.max_value = max_value

        def round(self, x, rounding, overflow, generator=None):  # type: ignore[no-untyped-def]
            return ((x * 2).round() / 2).clamp(-self.max_value, self.max_value)

    spec = spec_from_arguments("fp8_e4m3", mode="tensor")
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    fmt = Halves(4.0)
    before = quantizer.quantize(fmt, x, spec)
    fmt.max_value = 2.0  # the absmax now scales to 2: other values
    after = quantizer.quantize(fmt, x, spec)
    assert not quantizer._PREPARED
    assert not torch.equal(before, after)
    assert torch.equal(after, quantizer.quantize(Halves(2.0), x, spec))


def test_a_family_subclass_without_a_hash_still_compiles_and_its_plan_is_kept() -> None:
    """The kept plans and kernels are found by identity: a plugin's format need not hash."""
    from qbench.spec import spec_from_arguments
    from qbench_formats import quantizer
    from qbench_formats.families import FloatFormat

    class Unhashable(FloatFormat):
        def __eq__(self, other: object) -> bool:
            return self is other

        __hash__ = None  # type: ignore[assignment]

    fmt = Unhashable("fp8_e4m3_unhashable", 4, 3, 7, "fn")
    spec = spec_from_arguments("fp8_e4m3", mode="chunk", chunk_size=8)
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    want = qbench.get_format("fp8_e4m3").quantize(x, spec, path="reference")
    for _ in range(2):
        got = quantizer.quantize(fmt, x, spec, path="compiled")
        assert torch.equal(got, want)
    plan, _ = quantizer._prepared(fmt, spec, x.shape, False, False)
    assert quantizer._KERNELS[id(plan)][0] is plan
