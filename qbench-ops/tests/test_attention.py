"""QuantMultiheadAttention against torch's own nn.MultiheadAttention."""

from __future__ import annotations

import pytest
import qbench
import torch
from qbench import LayerSpecs
from qbench.preparation import observe, preparation_report
from qbench_ops import QuantMultiheadAttention
from torch import nn


def _twin(module: nn.MultiheadAttention, fmt: str) -> nn.Module:
    return qbench.prepare(nn.Sequential(module), {"format": fmt})[0]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 6])
def test_matches_torch_with_passthrough_format(passthrough, batch_first, kdim):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
    twin = _twin(attention, passthrough.name)
    assert isinstance(twin, QuantMultiheadAttention)
    query = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    source = (2, 7) if batch_first else (7, 2)
    key = torch.randn(*source, kdim or 16)
    value = torch.randn(*source, kdim or 16)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, -2:] = True
    float_mask = torch.randn(5, 7)
    bool_mask = torch.rand(2 * 4, 5, 7) > 0.8
    bool_mask[..., 0] = False  # every query keeps one key
    cases = [
        {},
        {"key_padding_mask": padding},
        {"attn_mask": float_mask, "average_attn_weights": False},
        {"attn_mask": bool_mask, "key_padding_mask": padding},
    ]
    with torch.no_grad():
        for kwargs in cases:
            expected, expected_weights = attention(query, key, value, **kwargs)
            got, weights = twin(query, key, value, **kwargs)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
        # self-attention, as torchvision's ViT calls it, and the causal flag
        self_query = query if kdim is None else None
        if self_query is not None:
            for kwargs in (
                {"need_weights": False},
                {"is_causal": True, "attn_mask": nn.Transformer.generate_square_subsequent_mask(5)},
            ):
                expected, _ = attention(self_query, self_query, self_query, **kwargs)
                got, _ = twin(self_query, self_query, self_query, **kwargs)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_unbatched_input(passthrough):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2).eval()
    twin = _twin(attention, passthrough.name)
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected, expected_weights = attention(x, x, x)
        got, weights = twin(x, x, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)


def test_self_attention_quantizes_its_input_once(passthrough):
    attention = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    twin = _twin(attention, passthrough.name)
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        twin(x, x, x, need_weights=False)
    # weights (in_proj, out_proj) + the shared input + q, k, v, softmax, out_proj input
    assert len(passthrough.calls) == 2 + 1 + 5


def test_fp8_attention_is_close_and_on_grid():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    model_q = qbench.prepare(
        nn.Sequential(attention), {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 8}
    )
    x = torch.randn(2, 10, 64)
    seen = []

    class Recorder:
        def on_tensor(self, layer, role, result):  # type: ignore[no-untyped-def]
            seen.append((layer, role, result))

    with torch.no_grad(), observe(model_q, Recorder()):
        got, _ = model_q[0](x, x, x)
    with torch.no_grad():
        expected, _ = attention(x, x, x)
    cosine = nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0)
    assert 0.99 < cosine < 1.0
    fmt = qbench.get_format("fp8_e4m3")
    points = {(layer, role) for layer, role, _ in seen}
    assert points == {
        ("0.in_proj", "weight"),
        ("0.in_proj", "input"),
        ("0.q", "input"),
        ("0.k", "input"),
        ("0.v", "input"),
        ("0.softmax", "act"),
        ("0.out_proj", "weight"),
        ("0.out_proj", "input"),
    }
    for _, _, result in seen:
        assert bool(fmt.is_representable(fmt.decode(result.codes)).all())
        assert torch.equal(fmt.decode(result.codes) * result.expand_scales(), result.dequantized)
    by_layer = {layer: r for layer, _, r in seen}
    assert by_layer["0.softmax"].dequantized.shape == (2, 4, 10, 10)
    assert by_layer["0.q"].spec.scaling.axis == -1  # Q.K^T reduces over the head dimension
    assert by_layer["0.v"].spec.scaling.axis == -2  # P.V reduces over the key positions
    # a chunk of V holds 8 positions of one head dimension
    v = by_layer["0.v"]
    assert v.scales.numel() == 2 * 4 * 2 * 16


def test_unsupported_variants_stay_fp32():
    attention = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    model_q = qbench.prepare(nn.Sequential(attention), {"format": "fp8_e4m3"})
    assert type(model_q[0]) is nn.MultiheadAttention
    (entry,) = preparation_report(model_q)["not_quantized"]
    assert "bias_k" in entry["reason"] and entry["name"] == "0"
    with pytest.raises(qbench.QBenchError, match="bias_k"):
        QuantMultiheadAttention.from_module(attention, LayerSpecs(), name="0")
