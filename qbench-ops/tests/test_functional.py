"""Functional adds and matmuls, quantized through torch.fx."""

from __future__ import annotations

import pytest
import qbench
import torch
import torchvision
from conftest import image_like
from qbench.prepare import observe, preparation_report, quantized_modules
from qbench_ops.functional import QuantAdd, QuantMatmul, quantize_functions
from torch import nn

FP8_CHUNK = {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 128}


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.weight = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = self.linear(x)
        y = torch.add(y, x)
        return torch.matmul(y, self.weight) + 1.0


def test_resnet18_residual_additions(passthrough):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    config = {"format": passthrough.name, "mode": "chunk", "chunk_size": 16}
    twin = quantize_functions(qbench.prepare(model, config), config)
    adds = {n: m for n, m in twin.named_modules() if isinstance(m, QuantAdd)}
    assert sorted(adds) == sorted(f"layer{i}.{j}.add" for i in range(1, 5) for j in range(2))
    assert list(twin.state_dict()) == list(model.state_dict())
    x = image_like(2, 64)
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))  # passthrough: same arithmetic as the FP32 model
    report = preparation_report(twin)
    assert {e["name"] for e in report["quantized"]} >= set(adds)
    assert set(quantized_modules(twin)) >= set(adds)


def test_fp8_adds_and_matmul_are_quantized_and_observed():
    torch.manual_seed(0)
    model = Residual().eval()
    config = {**FP8_CHUNK, "chunk_size": 4}
    functions = {**config, "layers": [{"type": "QuantMatmul", "input_chunk_size": 2}]}
    twin = quantize_functions(qbench.prepare(model, config), functions)
    kinds = {n: type(m) for n, m in twin.named_modules() if isinstance(m, (QuantAdd, QuantMatmul))}
    assert kinds == {"add": QuantAdd, "matmul": QuantMatmul, "add_1": QuantAdd}
    seen = []

    class Recorder:
        def on_tensor(self, layer, role, result):  # type: ignore[no-untyped-def]
            seen.append((layer, role, result))

    x = torch.randn(3, 8)
    with torch.no_grad(), observe(twin, Recorder()):
        out = twin(x)
    layers = [layer for layer, _, _ in seen]
    assert layers.count("add") == 2
    # x was quantized once, by the linear: the add reports that very quantization
    linear_input = next(r for layer, role, r in seen if (layer, role) == ("linear", "input"))
    add_operands = [r for layer, _, r in seen if layer == "add"]
    assert add_operands[1].dequantized is linear_input.dequantized
    assert add_operands[1].codes is linear_input.codes
    assert (
        layers.count("matmul") == 2 and layers.count("add_1") == 1
    )  # the scalar 1.0 is not a tensor
    matmul_specs = [r.spec.scaling for layer, _, r in seen if layer == "matmul"]
    assert [s.axis for s in matmul_specs] == [-1, -2] and {s.chunk_size for s in matmul_specs} == {
        2
    }
    fmt = qbench.get_format("fp8_e4m3")
    for _, _, result in seen:
        assert torch.equal(fmt.decode(result.codes) * result.expand_scales(), result.dequantized)
    with torch.no_grad():
        reference = model(x)
    assert not torch.equal(out, reference)
    assert nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0) > 0.99


def test_disabled_function_stays_fp32_and_is_listed():
    config = {**FP8_CHUNK, "layers": [{"type": "QuantAdd", "enabled": False}]}
    twin = quantize_functions(qbench.prepare(Residual(), FP8_CHUNK), config)
    assert not any(isinstance(m, QuantAdd) for m in twin.modules())
    reasons = {e["name"]: e["reason"] for e in preparation_report(twin)["not_quantized"]}
    assert set(reasons) == {"", "add", "add_1"}  # "": Residual's own weight has no op
    assert reasons["add"] == "input quantization disabled for this function"
    with pytest.raises(qbench.QBenchError, match="'mtmul' matches no module.*matmul"):
        quantize_functions(
            qbench.prepare(Residual(), FP8_CHUNK), {**FP8_CHUNK, "layers": [{"match": "mtmul"}]}
        )


def test_untraceable_model_is_an_error():
    class Branchy(nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return x + 1 if x.sum() > 0 else x

    with pytest.raises(qbench.QBenchError, match="torch.fx cannot trace Branchy"):
        quantize_functions(qbench.prepare(Branchy(), FP8_CHUNK), FP8_CHUNK)


def test_vit_residuals():
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
    twin = quantize_functions(qbench.prepare(model, FP8_CHUNK), FP8_CHUNK)
    adds = sorted(n for n, m in twin.named_modules() if isinstance(m, QuantAdd))
    assert adds == [
        "encoder.add",
        "encoder.layers.encoder_layer_0.add",
        "encoder.layers.encoder_layer_0.add_1",
        "encoder.layers.encoder_layer_1.add",
        "encoder.layers.encoder_layer_1.add_1",
    ]
    # compare the encoder's output tokens (640 values), not 20 near-zero random-head logits
    features = {}
    for key, net in (("fp32", model), ("twin", twin)):
        net.get_submodule("encoder.ln").register_forward_hook(
            lambda m, args, out, key=key: features.__setitem__(key, out)
        )
    x = image_like(2, 32)
    with torch.no_grad():
        model(x), twin(x)
    cosine = nn.functional.cosine_similarity(
        features["twin"].flatten(), features["fp32"].flatten(), dim=0
    )
    assert 0.99 < cosine < 1.0
