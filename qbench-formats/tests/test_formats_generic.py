"""Formats that round themselves (qbench_formats.generic): a new kind of grid gets every
scaling mode, scale format, codes and the audit from its ``round`` and ``values()`` alone,
and a family subclass that overrides ``round`` has its rounding used by ``quantize``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import qbench
import qbench.plugins
import torch
from qbench.types import QuantSpec, Scaling
from qbench_formats import FloatFormat, GridFormat

LOG3_VALUES = (-4.0, -1.0, -0.25, 0.0, 0.25, 1.0, 4.0)


class Log3(GridFormat):
    """A 3-bit logarithmic grid {0, ±0.25, ±1, ±4}: only ``round`` and ``values``."""

    name = "test_log3"
    bits = 3

    def values(self) -> torch.Tensor:
        return torch.tensor(LOG3_VALUES)

    def round(
        self,
        x: torch.Tensor,
        rounding: str = "nearest_even",
        overflow: str = "saturate",
        generator: Any = None,
    ) -> torch.Tensor:
        table = torch.tensor(LOG3_VALUES, dtype=torch.float64)
        distance = (x.to(torch.float64).unsqueeze(-1) - table).abs()
        nearest = table[distance.argmin(dim=-1)]  # ties: the first (lower) value, as numpy
        return torch.where(torch.isnan(x), x, nearest.to(x.dtype))


class TruncatingE4M3(FloatFormat):
    """fp8_e4m3's grid, but its own rounding: always toward zero."""

    def round(
        self,
        x: torch.Tensor,
        rounding: str = "nearest_even",
        overflow: str = "saturate",
        generator: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        return super().round(x, "toward_zero", overflow, generator, **kwargs)


LOG3 = Log3()
TRUNCATING = TruncatingE4M3("test_trunc_e4m3", 4, 3, 7, "fn")


class _Plugin:
    @staticmethod
    @qbench.hookimpl
    def qbench_register_formats(register: Any) -> None:
        register(LOG3)
        register(TRUNCATING)


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    qbench.plugins.register_plugin(_Plugin, "qbench-formats-generic-tests")
    yield
    qbench.plugins.unregister_plugin("qbench-formats-generic-tests")


# --- numpy reference -----------------------------------------------------------------------


def _np_round_log3(v: np.ndarray) -> np.ndarray:
    table = np.array(LOG3_VALUES)
    index = np.abs(v.astype(np.float64)[..., None] - table).argmin(axis=-1)
    return table[index].astype(np.float32)


def _np_scale(amax: np.ndarray, scale_format: str) -> np.ndarray:
    amax = amax.astype(np.float32)
    if scale_format == "fp32":
        return np.where(amax > 0, amax / np.float32(4.0), np.float32(1.0)).astype(np.float32)
    if scale_format == "e8m0":  # OCP MX v1.0 §6.3, emax of the log grid = floor(log2 4) = 2
        exponent = np.floor(np.log2(np.where(amax > 0, amax, 1))) - 2
        return np.where(amax > 0, 2.0**exponent, 2.0**-127).astype(np.float32)
    assert scale_format == "fp8_e4m3"
    block = np.clip(amax / np.float32(4.0), np.float32(2.0**-6), np.float32(448.0))
    return block.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)


def _np_quantize_rows(x: np.ndarray, scale_format: str) -> np.ndarray:
    """Each row of ``x`` (last axis) scaled on its own and rounded onto the log grid."""
    scale = _np_scale(np.abs(x).max(axis=-1, keepdims=True), scale_format)
    return (_np_round_log3(x / scale) * scale).astype(np.float32)


def _reference(x: np.ndarray, mode: str, scale_format: str) -> np.ndarray:
    if mode == "tensor":
        return _np_quantize_rows(x.reshape(1, -1), scale_format).reshape(x.shape)
    if mode == "channel":  # channel axis 0
        return _np_quantize_rows(x.reshape(x.shape[0], -1), scale_format).reshape(x.shape)
    # chunks of 4 along the last axis; a short last block is scaled on its own
    pieces = [x[..., i : i + 4] for i in range(0, x.shape[-1], 4)]
    return np.concatenate([_np_quantize_rows(p, scale_format) for p in pieces], axis=-1)


def _spec(name: str, mode: str, scale_format: str = "fp32") -> QuantSpec:
    chunk = 4 if mode == "chunk" else None
    return QuantSpec(name, Scaling(mode=mode, chunk_size=chunk, scale_format=scale_format))


# --- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("scale_format", ["fp32", "e8m0", "fp8_e4m3"])
@pytest.mark.parametrize("mode", ["tensor", "channel", "chunk"])
@pytest.mark.parametrize("path", ["auto", "reference"])
def test_a_format_that_only_rounds_gets_every_scaling(
    mode: str, scale_format: str, path: str
) -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 10) * torch.logspace(-2, 2, 6).unsqueeze(1)  # 10 = 4 + 4 + a short 2
    x[2] = 0.0  # an all-zero channel gives zeros
    spec = _spec("test_log3", mode, scale_format)
    result = LOG3.quantize(x, spec, return_codes=True, path=path)
    want = _reference(x.numpy(), mode, scale_format)
    np.testing.assert_array_equal(result.dequantized.numpy(), want)
    assert bool((result.dequantized[2] == 0).all())
    # codes are the indices into values(), and decode(codes) * scales rebuilds the tensor
    table = np.array(LOG3_VALUES, dtype=np.float32)
    assert result.codes.dtype == torch.int32
    assert bool(((result.codes >= 0) & (result.codes < len(LOG3_VALUES))).all())
    rebuilt = LOG3.decode(result.codes) * result.expand_scales()
    assert torch.equal(rebuilt, result.dequantized)
    assert np.isin(table[result.codes.numpy()], table).all()
    # and through the public API by name, as a config would use it
    by_name = qbench.quantize(
        x, "test_log3", mode=mode, chunk_size=4 if mode == "chunk" else None,
        scale_format=scale_format,
    )  # fmt: skip
    assert torch.equal(by_name, result.dequantized)


def test_a_format_that_only_rounds_has_its_facts_derived() -> None:
    assert LOG3.max_value == 4.0 and LOG3.emax == 2
    assert LOG3.min_normal == 0.25 == LOG3.min_subnormal
    assert LOG3.element == "test_log3"
    codes = LOG3.encode(torch.tensor([0.3, -3.0, float("nan"), 100.0]))
    assert codes.tolist() == [4, 0, -1, 6]
    assert LOG3.decode(codes)[:2].tolist() == [0.25, -4.0] and LOG3.decode(codes)[2].isnan()
    assert LOG3.is_representable(torch.tensor([0.25, 0.5])).tolist() == [True, False]
    assert qbench.get_format("test_log3").summary()["max"] == 4.0


def test_a_format_that_only_rounds_passes_the_audit_on_its_own_outputs() -> None:
    compliance = pytest.importorskip("qbench_eval.compliance")
    from qbench.types import BatchOutputs

    metric = compliance.ComplianceMetric(None)
    preparation = {"quantized": [{"name": "fc", "type": "Linear", "roles": {"weight": ""}}]}
    metric.attach(None, None, {"preparation": preparation, "config_dir": "."})
    torch.manual_seed(1)
    x = torch.randn(8, 12)
    for mode, scale_format in [("tensor", "fp32"), ("channel", "fp32"), ("chunk", "e8m0")]:
        spec = _spec("test_log3", mode, scale_format)
        metric.on_tensor("fc", "weight", qbench.quantize(x, spec, return_codes=True))
    metric.update(BatchOutputs(torch.zeros(1), torch.zeros(1, 1), torch.zeros(1, 1)))
    result = metric.result()
    assert result["status"] == "PASS", result["failures"]
    assert result["roles"]["weight"]["tensors"] >= 1

    # the audit really looks: a code off the grid fails it
    bad = qbench.quantize(x, _spec("test_log3", "tensor"), return_codes=True)
    bad.codes[0, 0] = 7  # past the 7 values
    failing = compliance.ComplianceMetric(None)
    failing.attach(None, None, {"preparation": preparation, "config_dir": "."})
    failing.on_tensor("fc", "weight", bad)
    assert failing.result()["status"] == "FAIL"


@pytest.mark.parametrize("mode", ["tensor", "channel", "chunk"])
def test_a_float_subclass_that_overrides_round_is_quantized_with_it(mode: str) -> None:
    torch.manual_seed(2)
    x = torch.randn(4, 32)
    spec = _spec("test_trunc_e4m3", mode)
    result = TRUNCATING.quantize(x, spec, return_codes=True)
    plain = qbench.get_format("fp8_e4m3")
    nearest = plain.quantize(x, _spec("fp8_e4m3", mode))
    truncated = plain.quantize(x, QuantSpec("fp8_e4m3", spec.scaling, rounding="toward_zero"))
    assert torch.equal(result.dequantized, truncated)
    assert not torch.equal(result.dequantized, nearest)
    assert bool((result.dequantized.abs() <= x.abs()).all())  # toward zero, never away
    assert torch.equal(plain.decode(result.codes) * result.expand_scales(), result.dequantized)
