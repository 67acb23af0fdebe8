"""Subclasses of handled module types keep their own ``forward`` (qbench_ops.subclass): TF-style
"same" padding, weight standardization, a LoRA-style low-rank branch, a BatchNorm with a fused
activation. The twin runs the subclass's forward and quantizes the functional call inside it."""

from __future__ import annotations

import math

import pytest
import qbench
import torch
import torch.nn.functional as F
from qbench.preparation import observe, preparation_report
from torch import nn

SPEC = {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 4, "weight_mode": "channel"}


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame, reduced: TF "same" padding computed from the input, then conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class StdConv2d(nn.Conv2d):
    """Weight standardization (timm's StdConv2d): the conv runs on a derived weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-6
        ).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class LoRALinear(nn.Linear):
    """A frozen weight plus a low-rank branch of two child Linears."""

    def __init__(self, in_features: int, out_features: int, rank: int = 2) -> None:
        super().__init__(in_features, out_features)
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + 0.5 * self.lora_B(self.lora_A(x))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d, reduced: batch norm then an activation, in one module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return F.relu(x)


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        Conv2dSame(3, 8, 3, stride=2),
        BatchNormAct2d(8),
        StdConv2d(8, 8, 3, padding=1),
        nn.Flatten(),
        LoRALinear(8 * 4 * 4, 5),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(1))


def test_every_subclass_is_quantized_and_keeps_its_class():
    net = _net()
    twin = qbench.prepare(net, SPEC)
    report = preparation_report(twin)
    names = {entry["name"]: entry for entry in report["quantized"]}
    assert {"0", "1", "2", "4", "4.lora_A", "4.lora_B"} <= set(names)
    assert not [e for e in report["not_quantized"] if e["name"] in {"0", "1", "2", "4"}]
    assert set(names["1"]["roles"]) == {"input", "stats", "weight"}
    for index, cls in ((0, Conv2dSame), (1, BatchNormAct2d), (2, StdConv2d), (4, LoRALinear)):
        assert isinstance(twin[index], cls)
        assert type(twin[index]).forward is not cls.forward  # runs through the interception
    assert twin(_x()).shape == net(_x()).shape  # the padding of the subclass's forward ran


def test_with_quantization_made_identity_the_twin_equals_the_original_bit_for_bit():
    """The interception itself changes nothing: with every quantizer returning its input, the
    twin runs exactly the subclasses' own forwards."""
    from qbench_ops.quantizer import identity_quantization

    net = _net()
    twin = qbench.prepare(net, SPEC)
    with torch.no_grad(), identity_quantization():
        assert torch.equal(twin(_x()), net(_x()))


def _q(x: torch.Tensor, **spec) -> torch.Tensor:
    return qbench.quantize(x, "fp8_e4m3", **spec)


def test_the_call_inside_forward_gets_quantized_operands():
    """Each subclass's output equals its functional call on independently quantized operands:
    the input (chunks of 4 along channels / features) and the weight (per output channel) the
    call receives, a derived weight included."""
    net = _net()
    twin = qbench.prepare(net, SPEC)
    x = _x()
    with torch.no_grad():
        # Conv2dSame: "same" padding runs first, then the conv on quantized operands
        conv = net[0]
        ih = x.shape[-1]
        pad = max((math.ceil(ih / 2) - 1) * 2 + 3 - ih, 0)
        padded = F.pad(x, [pad // 2, pad - pad // 2, pad // 2, pad - pad // 2])
        w0 = _q(conv.weight.reshape(8, -1), mode="channel", axis=0).reshape_as(conv.weight)
        x0 = _q(padded, mode="chunk", chunk_size=3, axis=1)  # 3 channels: one short chunk
        expected0 = F.conv2d(x0, w0, conv.bias, 2)
        got0 = twin[0](x)
        assert torch.equal(got0, expected0)

        # StdConv2d: the standardized weight is what gets quantized
        std = net[2]
        h = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(2))
        derived = F.batch_norm(
            std.weight.reshape(1, 8, -1), None, None, training=True, eps=1e-6
        ).reshape_as(std.weight)
        w2 = _q(derived.reshape(8, -1), mode="channel", axis=0).reshape_as(derived)
        x2 = _q(h, mode="chunk", chunk_size=4, axis=1)
        assert torch.equal(twin[2](h), F.conv2d(x2, w2, std.bias, 1, 1))

        # LoRA: the frozen weight's call quantized once; the children are twins of their own
        lora = net[4]
        z = torch.randn(3, 128, generator=torch.Generator().manual_seed(3))
        main = F.linear(
            _q(z, mode="chunk", chunk_size=4, axis=-1),
            _q(lora.weight, mode="channel", axis=0),
            lora.bias,
        )
        branch = twin[4].lora_B(twin[4].lora_A(z))
        assert torch.equal(twin[4](z), main + 0.5 * branch)
        assert not torch.equal(branch, lora.lora_B(lora.lora_A(z)))  # the children quantize


def test_the_audit_sees_every_quantized_operand_of_the_intercepted_calls():
    seen: list[tuple[str, str]] = []

    class Recorder:
        def on_tensor(self, layer, role, result):
            seen.append((layer, role))

    twin = qbench.prepare(_net(), SPEC)
    with observe(twin, Recorder()), torch.no_grad():
        twin(_x())
    assert {("0", "input"), ("0", "weight"), ("2", "input"), ("2", "weight")} <= set(seen)
    assert {("1", "stats"), ("1", "weight"), ("1", "input"), ("4", "weight")} <= set(seen)
    assert {("4.lora_A", "input"), ("4.lora_B", "weight")} <= set(seen)
    assert seen.count(("4", "input")) == 1  # the children's calls are not taken for its own


def test_a_subclass_of_a_kind_without_a_known_call_stays_fp32_with_the_reason():
    class MyPool(nn.MaxPool2d):
        def forward(self, x):
            return super().forward(x) * 2

    twin = qbench.prepare(nn.Sequential(MyPool(2)), SPEC)
    entry = preparation_report(twin)["not_quantized"][0]
    assert entry["name"] == "0" and "own forward" in entry["reason"]


@pytest.mark.parametrize("cls", [Conv2dSame, StdConv2d])
def test_twins_survive_deepcopy_and_state_dict(cls):
    import copy

    module = cls(3, 4, 3).eval()
    twin = qbench.prepare(nn.Sequential(module), SPEC)
    again = copy.deepcopy(twin)
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(again(x), twin(x))
    assert set(twin.state_dict()) == set(nn.Sequential(module).state_dict())
