"""qbench.prepare with the built-in ops: swapping, reports, overrides, state_dicts."""

from __future__ import annotations

import pytest
import qbench
import torch
import torchvision
from qbench.errors import QBenchError
from qbench.preparation import preparation_report, quantized_modules
from qbench_ops.plugin import ALL_OPS
from torch import nn

FP8_CHUNK = {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 128}
OP_TYPES = {t for op in ALL_OPS for t in op.module_types}


def test_every_op_type_is_replaced(every_op):
    model_q = qbench.prepare(every_op, FP8_CHUNK)
    originals = dict(every_op.named_modules())
    swapped = quantized_modules(model_q)
    covered = {type(originals[name]) for name in swapped}
    used = {type(m) for m in every_op.modules()} & OP_TYPES
    assert covered == used and len(used) == 22  # every op type of the README's table, once at least
    for name, module in swapped.items():
        assert isinstance(module, type(originals[name]))  # a drop-in: still an nn.Conv2d...
        assert type(module) is not type(originals[name])
    # the FP32 model is untouched and shares no parameter with the twin
    assert all(
        type(m).__module__.startswith("torch.") for m in every_op.modules() if m is not every_op
    )
    twin_params = {p.data_ptr() for p in model_q.parameters()}
    assert not twin_params & {p.data_ptr() for p in every_op.parameters()}


def test_resnet18_report_lists_every_module():
    model = torchvision.models.resnet18(num_classes=10).eval()
    model_q = qbench.prepare(model, FP8_CHUNK)
    report = preparation_report(model_q)
    leaves = [n for n, m in model.named_modules() if not list(m.children())]
    assert sorted(e["name"] for e in report["quantized"]) == sorted(leaves)
    assert report["not_quantized"] == []
    conv = next(e for e in report["quantized"] if e["name"] == "layer1.0.conv1")
    assert conv["op"] == "conv2d" and conv["type"] == "Conv2d"
    assert conv["roles"] == {"weight": "fp8_e4m3 chunk128", "input": "fp8_e4m3 chunk128"}
    bn = next(e for e in report["quantized"] if e["name"] == "bn1")
    assert set(bn["roles"]) == {"weight", "input", "stats"}


def test_vit_attention_is_swapped_and_unknown_modules_listed():
    model = torchvision.models.vit_b_16(image_size=32, num_classes=10).eval()
    model_q = qbench.prepare(model, FP8_CHUNK)
    report = preparation_report(model_q)
    swapped = quantized_modules(model_q)
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attention) == 12 and all(n in swapped for n in attention)
    # out_proj is handled inside the attention op, never swapped on its own
    assert not any(n.endswith("out_proj") for n in swapped)
    reasons = {e["name"]: e["reason"] for e in report["not_quantized"]}
    assert reasons["encoder.layers.encoder_layer_0.dropout"] == "no op registered for Dropout"
    assert "class_token" in reasons[""] and "pos_embedding" in reasons["encoder"]


def test_state_dict_round_trips_both_ways():
    torch.manual_seed(0)
    for model in (
        torchvision.models.resnet18(num_classes=10).eval(),
        torchvision.models.vit_b_16(image_size=32, num_classes=10).eval(),
    ):
        model_q = qbench.prepare(model, FP8_CHUNK)
        assert list(model_q.state_dict()) == list(model.state_dict())
        fresh = type(model)(**_same_config(model)).eval()
        fresh.load_state_dict(model_q.state_dict(), strict=True)
        for key, value in model.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value)
        other = qbench.prepare(fresh, FP8_CHUNK)
        for p in other.parameters():
            p.data.add_(1.0)
        other.load_state_dict(model.state_dict(), strict=True)
        for key, value in model.state_dict().items():
            assert torch.equal(other.state_dict()[key], value)


def _same_config(model: nn.Module) -> dict:
    if isinstance(model, torchvision.models.ResNet):
        return {
            "block": torchvision.models.resnet.BasicBlock,
            "layers": [2, 2, 2, 2],
            "num_classes": 10,
        }
    return {
        "image_size": 32,
        "patch_size": 16,
        "num_layers": 12,
        "num_heads": 12,
        "hidden_dim": 768,
        "mlp_dim": 3072,
        "num_classes": 10,
    }


def test_override_matching_nothing_names_pattern_and_closest_modules():
    model = torchvision.models.resnet18(num_classes=10)
    config = {
        **FP8_CHUNK,
        "layers": [{"match": "layer4.*", "enabled": False}, {"match": "layr1.0.conv*"}],
    }
    with pytest.raises(QBenchError) as info:
        qbench.prepare(model, config)
    message = str(info.value)
    assert "quantization.layers[1]" in message and "'layr1.0.conv*'" in message
    assert "layer1.0.conv1" in message or "layer1.0.conv2" in message
    with pytest.raises(QBenchError, match=r"type 'Conv3D' matches no module.*Conv2d"):
        qbench.prepare(model, {**FP8_CHUNK, "layers": [{"type": "Conv3D", "enabled": False}]})


def test_per_role_and_per_layer_settings():
    model = torchvision.models.resnet18(num_classes=10)
    config = {
        "format": "fp8_e4m3",
        "weight_format": "int4",
        "weight_mode": "channel",
        "input_mode": "chunk",
        "input_chunk_size": 32,
        "act_mode": "chunk",
        "act_chunk_size": 32,
        "layers": [
            {"match": "fc", "enabled": False},
            {
                "type": "BatchNorm2d",
                "format": "fp8_e5m2",
                "mode": "tensor",
                "weight_format": "fp8_e5m2",
                "weight_mode": "tensor",
                "input_mode": "tensor",
            },
            {"match": "layer1.*", "format": "bf16_never_used"},  # layer1's BNs matched above first
        ],
    }
    config["layers"][2] = {"match": "layer1.0.conv1", "input_format": "fp8_e5m2"}
    model_q = qbench.prepare(model, config)
    report = {e["name"]: e for e in preparation_report(model_q)["quantized"]}
    assert report["conv1"]["roles"] == {"weight": "int4 channel", "input": "fp8_e4m3 chunk32"}
    assert report["layer1.0.conv1"]["roles"]["input"] == "fp8_e5m2 chunk32"
    assert report["relu"]["roles"] == {"act": "fp8_e4m3 chunk32"}
    assert report["bn1"]["roles"] == {
        "weight": "fp8_e5m2 tensor",
        "input": "fp8_e5m2 tensor",
        "stats": "fp8_e5m2 tensor",
    }
    skipped = {e["name"]: e["reason"] for e in preparation_report(model_q)["not_quantized"]}
    assert skipped == {"fc": "disabled by quantization.layers[0]"}
    assert type(model_q.fc) is nn.Linear


def test_quantspec_applies_to_every_role():
    spec = qbench.spec.spec_from_arguments("fp8_e4m3", mode="chunk", chunk_size=64)
    model_q = qbench.prepare(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), spec)
    report = preparation_report(model_q)["quantized"]
    assert report[0]["roles"] == {"weight": "fp8_e4m3 chunk64", "input": "fp8_e4m3 chunk64"}
    assert report[1]["roles"] == {"act": "fp8_e4m3 chunk64"}


def test_subclass_with_own_forward_keeps_it_and_is_quantized():
    """A subclass whose forward differs runs its own forward (here: twice the parent's), with
    the F.linear call inside it quantized like the parent's twin quantizes it."""

    class ScaledLinear(nn.Linear):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return 2 * super().forward(x)

    torch.manual_seed(0)
    model = nn.Sequential(ScaledLinear(4, 4), nn.Linear(4, 4))
    model_q = qbench.prepare(model, FP8_CHUNK)
    assert isinstance(model_q[0], ScaledLinear) and type(model_q[0]) is not ScaledLinear
    assert preparation_report(model_q)["not_quantized"] == []
    plain = nn.Linear(4, 4)
    plain.load_state_dict(model[0].state_dict())
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(model_q[0](x), 2 * qbench.prepare(plain, FP8_CHUNK)(x))


def test_shared_module_is_swapped_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    model_q = qbench.prepare(model, FP8_CHUNK)
    assert model_q[0] is model_q[2] and model_q[0] is not shared


def test_root_module_and_bad_arguments():
    model_q = qbench.prepare(nn.Linear(4, 4), FP8_CHUNK)
    assert list(quantized_modules(model_q)) == [""]
    with pytest.raises(QBenchError, match="not returned by qbench.prepare"):
        preparation_report(nn.Linear(4, 4))
    with pytest.raises(QBenchError, match="expected a torch.nn.Module"):
        qbench.prepare("resnet18", FP8_CHUNK)
    with pytest.raises(QBenchError, match="unknown format 'fp9'"):
        qbench.prepare(nn.Linear(4, 4), {"format": "fp9"})


def test_twin_survives_deepcopy_and_pickle(every_op):
    import copy
    import io

    from ops_inputs import image_like

    model_q = qbench.prepare(every_op, FP8_CHUNK)
    x = image_like(2, 16)
    with torch.no_grad():
        expected = model_q(x)  # caches filled: copies must rebuild them, not share them
        copied = copy.deepcopy(model_q)
        buffer = io.BytesIO()
        torch.save(model_q, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert torch.equal(copied(x), expected) and torch.equal(loaded(x), expected)
    assert preparation_report(copied) == preparation_report(model_q)
    assert copied.conv._q_weight is not model_q.conv._q_weight


def test_weight_coverage_counts_weight_elements_and_names_the_largest_left_fp32():
    """Biases are not weight elements; a shared parameter counts once; a module without an
    op is named with its size and reason; a disabled layer is left out of the quantized."""
    torch.manual_seed(0)
    head = nn.Linear(8, 8)
    model = nn.Sequential(nn.PReLU(8), head, nn.ReLU(), head, nn.Linear(8, 3))
    spec = {**FP8_CHUNK, "layers": [{"match": "4", "enabled": False}]}
    coverage = preparation_report(qbench.prepare(model, spec))["coverage"]
    assert coverage["weight_elements"] == 8 + 8 * 8 + 8 * 3
    assert coverage["weight_elements_quantized"] == 8 * 8
    assert coverage["weight_share"] == pytest.approx(64 / 96)
    largest = coverage["largest_unquantized"]
    assert [(row["name"], row["elements"]) for row in largest] == [("4", 24), ("0", 8)]
    assert "disabled by quantization.layers[0]" in largest[0]["reason"]
    assert "no op registered for PReLU" in largest[1]["reason"]


def test_embedding_tables_are_quantized_once_per_row_and_looked_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(12, 8, padding_idx=0))
    twin = qbench.prepare(model, {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 4})
    ids = torch.tensor([[0, 3, 11], [5, 5, 1]])
    table = qbench.quantize(model[0].weight.detach(), "fp8_e4m3", mode="chunk", chunk_size=4)
    with torch.no_grad():
        assert torch.equal(twin(ids), table[ids])
    assert preparation_report(twin)["coverage"]["weight_share"] == 1.0
    renormalized = qbench.prepare(nn.Sequential(nn.Embedding(4, 2, max_norm=1.0)), FP8_CHUNK)
    reason = preparation_report(renormalized)["not_quantized"][0]["reason"]
    assert "max_norm" in reason
