"""Channel scaling of 1-D tensors (BatchNorm statistics): one scale per element."""

from __future__ import annotations

import pytest
import qbench
import torch


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8", "fp4_e2m1"])
def test_channel_mode_on_a_vector_scales_each_element(fmt):
    x = torch.tensor([0.5, -3.0, 0.0, 1e-3, 7.25, float("nan")])
    result = qbench.quantize(x, fmt, mode="channel", return_codes=True)
    assert result.scales.numel() == x.numel()
    element = qbench.get_format(fmt)
    # each element is its own channel: it maps to +-max of the format (or 0 / NaN)
    expected = torch.where(x == 0, 0.0, torch.sign(x) * element.max_value)
    decoded = element.decode(result.codes)
    assert torch.equal(decoded[:5], expected[:5])
    assert torch.isnan(result.dequantized[5])
    assert torch.equal(result.dequantized[:5], (decoded * result.expand_scales())[:5])
    torch.testing.assert_close(result.dequantized[:5], x[:5], rtol=0, atol=0)
    assert torch.equal(qbench.quantize(x, fmt, mode="channel")[:5], result.dequantized[:5])
