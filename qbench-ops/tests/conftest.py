"""Shared fixtures: small models and a pass-through format for exactness checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from qbench import QuantResult, hookimpl, kernels
from qbench import plugins as qplugins
from torch import nn


@pytest.fixture(autouse=True)
def _eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """qbench-formats' eager path gives the same bits as its compiled kernels (its own tests
    check that); skipping compilation keeps this suite fast on a small CPU box. For these
    tests only: the environment variable would turn compiling off for every test of a
    pytest process that also runs the other packages' tests."""
    monkeypatch.setattr(kernels, "COMPILE_ENABLED", False)


class PassThroughFormat:
    """A format whose quantization is the identity: with it, a twin must compute exactly
    what the FP32 model computes, which isolates the ops' own arithmetic from rounding.
    It counts its calls so tests can check how often each tensor is quantized."""

    name = "test_passthrough"
    bits = 32
    max_value = float(torch.finfo(torch.float32).max)
    min_normal = float(torch.finfo(torch.float32).tiny)
    min_subnormal = 2.0**-149
    default_scaling = None
    element = "test_passthrough"

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Size, object]] = []

    def quantize(self, x, spec, *, return_codes=False, generator=None):  # type: ignore[no-untyped-def]
        self.calls.append((x.shape, spec))
        y = x.clone()
        if return_codes:
            return QuantResult(y, y.clone(), torch.ones((), dtype=x.dtype, device=x.device), spec)
        return y


PASSTHROUGH = PassThroughFormat()


class _Plugin:
    @staticmethod
    @hookimpl
    def qbench_register_formats(register):  # type: ignore[no-untyped-def]
        register(PASSTHROUGH)


@pytest.fixture(scope="session", autouse=True)
def passthrough_plugin() -> Iterator[PassThroughFormat]:
    qplugins.register_plugin(_Plugin, "qbench-ops-tests")
    yield PASSTHROUGH


@pytest.fixture
def passthrough() -> PassThroughFormat:
    PASSTHROUGH.calls.clear()
    return PASSTHROUGH


class EveryOp(nn.Module):
    """A small model using every module type the ops cover (qbench-ops/README.md, "Ops")."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(3, 4, 3, padding=1)
        self.bn1d = nn.BatchNorm1d(4)
        self.conv3d = nn.Conv3d(1, 2, 3, padding=1)
        self.bn3d = nn.BatchNorm3d(2)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.avgpool = nn.AvgPool2d(2)
        self.relu6 = nn.ReLU6()
        self.silu = nn.SiLU()
        self.hardswish = nn.Hardswish()
        self.pool1d = nn.MaxPool1d(2)
        self.avgpool1d = nn.AvgPool1d(2)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.proj = nn.Linear(8 * 4 + 4 * 4 + 2, 32)
        self.norm = nn.LayerNorm(32)
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.gelu = nn.GELU()
        self.sigmoid = nn.Sigmoid()
        self.tanh = nn.Tanh()
        self.head = nn.Linear(32, 10)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        seq = self.pool1d(self.relu6(self.bn1d(self.conv1d(x.mean(dim=2)))))  # (B, 4, W/2)
        seq = self.avgpool1d(seq)[..., :4].flatten(1)  # (B, 16)
        vol = self.bn3d(self.conv3d(x[:, :1].unsqueeze(2).repeat(1, 1, 2, 1, 1)))
        vol = vol.mean(dim=(2, 3, 4))  # (B, 2)
        y = self.maxpool(self.relu(self.bn(self.conv(x))))
        y = self.hardswish(self.silu(self.avgpool(y)))
        y = self.gap(y).flatten(1)  # (B, 32)
        tokens = self.norm(self.proj(torch.cat([y, seq, vol], dim=1)))
        tokens = tokens.view(batch, 1, 32).expand(batch, 3, 32) * torch.linspace(0.5, 1.5, 3).view(
            1, 3, 1
        )
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        z = self.gelu(attended).mean(dim=1)
        z = self.tanh(z) + self.sigmoid(z)
        return self.softmax(self.head(z))


@pytest.fixture
def every_op() -> nn.Module:
    torch.manual_seed(0)
    model = EveryOp().eval()
    # non-trivial running statistics, so quantizing them is visible
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model
