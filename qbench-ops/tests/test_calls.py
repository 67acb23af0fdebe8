"""Functional calls inside forward, quantized as they run (qbench_ops.calls): attention math
written out, F.scaled_dot_product_attention, residual additions, F.linear on a parameter;
site names, per-layer overrides, multiply-accumulate counts, observation."""

from __future__ import annotations

import copy

import pytest
import qbench
import torch
import torch.nn.functional as F
from qbench.preparation import observe
from qbench_ops.calls import interceptor_of
from torch import nn

SPEC = {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 4}


class Attention(nn.Module):
    """Self-attention with the math written out, as timm (fused_attn off) and BERT do."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scores = q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5
        probabilities = scores.softmax(dim=-1)
        out = torch.matmul(probabilities, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class FusedAttention(Attention):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, value=v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Block(nn.Module):
    """A residual block with a weight used through F.linear (not an nn.Linear)."""

    def __init__(self, attention: type[nn.Module] = Attention) -> None:
        super().__init__()
        self.attn = attention()
        self.gate = nn.Parameter(torch.randn(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.linear(self.attn(x), self.gate)


def _x() -> torch.Tensor:
    return torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))


def _q(x: torch.Tensor, **scaling) -> torch.Tensor:
    return qbench.quantize(x, "fp8_e4m3", **scaling)


def _chunked(x: torch.Tensor, axis: int) -> torch.Tensor:
    return _q(x, mode="chunk", chunk_size=4, axis=axis)


def test_attention_math_is_quantized_per_operand_under_stable_site_names():
    torch.manual_seed(0)
    model = Block().eval()
    twin = qbench.prepare(model, SPEC)
    x = _x()
    with torch.no_grad():
        got = twin(x)
        # the same computation with every operand quantized independently
        attn = twin.attn
        qkv = attn.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        scores = _chunked(q, -1) @ _chunked(k.transpose(-2, -1), -2) * 4**-0.5
        probabilities = _chunked(scores.softmax(dim=-1), -1)
        out = (_chunked(probabilities, -1) @ _chunked(v, -2)).transpose(1, 2).reshape(2, 5, 8)
        inner = attn.proj(out)
        gate = _q(model.gate.reshape(8, -1), mode="chunk", chunk_size=4, axis=-1)
        expected = x + F.linear(_chunked(inner, -1), gate)
    assert torch.equal(got, expected)
    sites = interceptor_of(twin).sites
    assert list(sites) == ["attn:matmul#1", "attn:softmax#1", "attn:matmul#2", "model:linear#1"]
    assert sites["attn:softmax#1"]["roles"] == {"act": "fp8_e4m3 chunk4"}
    assert set(sites["model:linear#1"]["roles"]) == {"input", "weight"}


def test_sdpa_operands_are_quantized_keywords_included():
    torch.manual_seed(0)
    model = FusedAttention().eval()
    twin = qbench.prepare(model, SPEC)
    x = _x()
    with torch.no_grad():
        qkv = twin.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(_chunked(q, -1), _chunked(k, -1), _chunked(v, -2))
        expected = twin.proj(out.transpose(1, 2).reshape(2, 5, 8))
        assert torch.equal(twin(x), expected)
    assert list(interceptor_of(twin).sites) == ["model:sdpa#1"]


def test_residual_additions_only_when_asked_for():
    torch.manual_seed(0)
    model = Block().eval()
    assert "model:add#1" not in _sites(model, SPEC)
    with_add = _sites(model, {**SPEC, "functions": ["add"]})
    assert list(with_add) == ["model:add#1"]  # and nothing else: the groups are chosen


def _sites(model: nn.Module, spec: dict) -> dict:
    twin = qbench.prepare(model, spec)
    with torch.no_grad():
        twin(_x())
    return interceptor_of(twin).sites


def test_overrides_apply_to_a_module_and_to_one_call_site():
    torch.manual_seed(0)
    model = Block().eval()
    off = {**SPEC, "layers": [{"match": "attn", "enabled": False}]}
    sites = _sites(model, off)  # attn's calls follow attn: seen, and left FP32
    assert {name: site["roles"] for name, site in sites.items() if site["module"] == "attn"} == {
        "attn:matmul#1": {},
        "attn:softmax#1": {},
        "attn:matmul#2": {},
    }
    assert set(sites["model:linear#1"]["roles"]) == {"input", "weight"}
    one = {**SPEC, "layers": [{"match": "attn:softmax#1", "act_format": "fp8_e5m2"}]}
    sites = _sites(model, one)
    assert sites["attn:softmax#1"]["roles"] == {"act": "fp8_e5m2 chunk4"}
    assert sites["attn:matmul#1"]["roles"] == {"input": "fp8_e4m3 chunk4"}
    with pytest.raises(qbench.QBenchError, match="nope:matmul"):
        qbench.prepare(model, {**SPEC, "layers": [{"match": "nope:matmul#1"}]})


def test_an_unknown_function_group_is_refused():
    with pytest.raises(qbench.QBenchError, match="unknown function group 'matmull'"):
        qbench.prepare(Block(), {**SPEC, "functions": ["matmull"]})


def test_with_quantization_made_identity_the_twin_equals_the_original_bit_for_bit():
    from qbench_ops.quantizer import identity_quantization

    torch.manual_seed(0)
    for attention in (Attention, FusedAttention):
        model = Block(attention).eval()
        twin = qbench.prepare(model, {**SPEC, "functions": ["matmul", "sdpa", "add", "linear"]})
        with torch.no_grad(), identity_quantization():
            assert torch.equal(twin(_x()), model(_x()))
        with torch.no_grad():  # quantization is back after the block
            assert not torch.equal(twin(_x()), model(_x()))


def test_observers_see_every_call_site_and_macs_are_counted():
    torch.manual_seed(0)
    twin = qbench.prepare(Block().eval(), SPEC)
    seen: set[tuple[str, str]] = set()

    class Recorder:
        def on_tensor(self, layer, role, result):
            seen.add((layer, role))

    with observe(twin, Recorder()), torch.no_grad():
        twin(_x())
    assert {("attn:matmul#1", "input"), ("attn:softmax#1", "act")} <= seen
    assert {("model:linear#1", "weight"), ("attn.qkv", "weight")} <= seen
    coverage = interceptor_of(twin).coverage()
    # qkv 10x8x24, two matmuls 2x2x5x5x4 each, proj 10x8x8, gate 10x8x8
    assert coverage["macs"] == 1920 + 2 * 400 + 640 + 640
    assert coverage["mac_share"] == 1.0
    off = qbench.prepare(Block().eval(), {**SPEC, "functions": []})
    with torch.no_grad():
        off(_x())
    assert interceptor_of(off).coverage()["macs_quantized"] == 1920 + 640  # the nn.Linears


def test_a_deep_copy_has_its_own_interceptor():
    twin = qbench.prepare(Block().eval(), SPEC)
    again = copy.deepcopy(twin)
    assert interceptor_of(again) is not interceptor_of(twin)
    with torch.no_grad():
        assert torch.equal(again(_x()), twin(_x()))
    assert list(interceptor_of(again).sites) == list(interceptor_of(twin).sites)


def test_uninstall_removes_the_interceptor_of_a_copy_too(monkeypatch):
    from qbench_ops.calls import uninstall

    torch.manual_seed(0)
    model = Block().eval()
    twin = copy.deepcopy(qbench.prepare(model, SPEC))
    uninstall(twin)
    assert interceptor_of(twin) is None
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in twin.modules())
    with torch.no_grad():  # the swapped modules still quantize; the calls no longer do
        plain = qbench.prepare(model, {**SPEC, "functions": []})
        assert torch.equal(twin(_x()), plain(_x()))


# -- residual adds, in-place adds and matmuls, quantized as the calls run ---------------------


def test_resnet18_residual_additions(passthrough):
    """``out += identity`` in every BasicBlock is an add site when ``add`` is asked for; with
    an identity 'format' the twin computes exactly what the FP32 model does."""
    import torchvision
    from ops_inputs import image_like

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    config = {"format": passthrough.name, "mode": "chunk", "chunk_size": 16, "functions": ["add"]}
    twin = qbench.prepare(model, config)
    x = image_like(2, 64)
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))
    sites = interceptor_of(twin).sites
    assert sorted(sites) == sorted(f"layer{i}.{j}:add#1" for i in range(1, 5) for j in range(2))
    assert all(site["roles"] == {"input": f"{passthrough.name} chunk16"} for site in sites.values())
    assert list(twin.state_dict()) == list(model.state_dict())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.weight = nn.Parameter(torch.randn(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        y = torch.add(y, x)
        return torch.matmul(y, self.weight) + 1.0


def test_adds_and_matmuls_share_quantizations_and_take_overrides_by_site_pattern():
    torch.manual_seed(0)
    config = {
        **SPEC,
        "functions": ["add", "matmul"],
        "layers": [{"match": "*:matmul#*", "input_chunk_size": 2}],
    }
    twin = qbench.prepare(Residual().eval(), config)
    seen: list[tuple[str, str, object]] = []

    class Recorder:
        def on_tensor(self, layer, role, result):
            seen.append((layer, role, result))

    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), observe(twin, Recorder()):
        twin(x)
    layers = [layer for layer, _, _ in seen]
    # the scalar 1.0 of the last add is no tensor: one operand quantized there
    assert layers.count("model:add#1") == 2 and layers.count("model:add#2") == 1
    assert layers.count("model:matmul#1") == 2
    # x was quantized once, by the linear: the add reports that very quantization
    linear_input = next(r for layer, role, r in seen if (layer, role) == ("linear", "input"))
    add_operands = [r for layer, _, r in seen if layer == "model:add#1"]
    assert add_operands[1].dequantized is linear_input.dequantized
    matmul = [r.spec.scaling for layer, _, r in seen if layer == "model:matmul#1"]
    assert [s.axis for s in matmul] == [-1, -2] and {s.chunk_size for s in matmul} == {2}
    fmt = qbench.get_format("fp8_e4m3")
    for _, _, result in seen:
        assert torch.equal(fmt.decode(result.codes) * result.expand_scales(), result.dequantized)


def test_data_dependent_control_flow_is_no_obstacle():
    """No tracing: calls are quantized as they run, whichever branch the forward takes."""

    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ x.transpose(0, 1) if x.sum() > 0 else x

    twin = qbench.prepare(Branchy(), SPEC)
    x = torch.ones(2, 4) * 0.3
    with torch.no_grad():
        assert torch.equal(twin(x), _chunked(x, -1) @ _chunked(x.transpose(0, 1), -2))
        assert torch.equal(twin(-x), -x)
    assert list(interceptor_of(twin).sites) == ["model:matmul#1"]


def test_torchvision_vit_residuals_are_add_sites_and_stay_close_to_fp32():
    import torchvision
    from ops_inputs import image_like

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=16,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=10,
    ).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-inits the head
    twin = qbench.prepare(model, {**SPEC, "chunk_size": 128, "functions": ["add"]})
    features = {}
    for key, net in (("fp32", model), ("twin", twin)):
        net.get_submodule("encoder.ln").register_forward_hook(
            lambda m, args, out, key=key: features.__setitem__(key, out)
        )
    x = image_like(2, 32)
    with torch.no_grad():
        model(x), twin(x)
    assert sorted(interceptor_of(twin).sites) == [
        "encoder.layers.encoder_layer_0:add#1",
        "encoder.layers.encoder_layer_0:add#2",
        "encoder.layers.encoder_layer_1:add#1",
        "encoder.layers.encoder_layer_1:add#2",
        "encoder:add#1",
    ]
    cosine = F.cosine_similarity(features["twin"].flatten(), features["fp32"].flatten(), dim=0)
    assert 0.99 < cosine < 1.0
