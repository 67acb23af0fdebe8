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
