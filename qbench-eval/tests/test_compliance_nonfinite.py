"""NaN and inf in the compliance audit: a value the format cannot encode fails, NaN included;
a NaN E8M0 scale (0xFF) is legal and makes its block NaN (OCP MX v1.0); the NaN/inf values
the layers used are counted per tensor and per role, on the eager and the compiled path,
and named in the result's ``warnings``."""

from __future__ import annotations

import dataclasses
import math

import pytest
import qbench
import torch
from eval_helpers import kernels_on, spec
from qbench.types import BatchOutputs, QuantResult
from qbench_eval.compliance import ComplianceMetric
from qbench_eval.compliance.tables import _Grid, _legal_values

BATCH = BatchOutputs(torch.zeros(1), torch.zeros(1, 1), torch.zeros(1, 1))


def _metric(deferred: bool = False) -> ComplianceMetric:
    metric = ComplianceMetric(None)
    metric.defer_bytes["cpu"] = 1 << 40 if deferred else 0
    metric.attach(None, None, {"preparation": {"quantized": []}})
    return metric


def _audit(*observations: tuple[str, str, QuantResult]) -> dict:
    metric = _metric()
    for layer, role, result in observations:
        metric.on_tensor(layer, role, result)
    return metric.result()


def _with_nan_and_inf(rows: int = 4, columns: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(rows, columns, generator=generator)
    x[1, 5], x[2, 40] = math.nan, math.inf
    return x


@pytest.mark.parametrize(
    "name, decoded_legal",
    [
        ("int8", [False, False, False, True]),  # no NaN, no inf
        ("fp4_e2m1", [False, False, False, True]),
        ("fp8_e4m3", [True, False, False, True]),  # NaN at S.1111.111, no inf
        ("fp8_e5m2", [True, True, True, True]),  # IEEE-like: both
        ("test_int4", [False, False, False, True]),  # a plugin format (eval_helpers)
    ],
)
def test_nan_and_inf_are_legal_only_where_the_format_encodes_them(
    name: str, decoded_legal: list[bool]
) -> None:
    element = qbench.get_format(name)
    decoded = torch.tensor([math.nan, math.inf, -math.inf, 1.0])
    assert _legal_values(element, _Grid(element), decoded).tolist() == decoded_legal


@pytest.mark.parametrize(
    "name, has_nan",
    [("int8", False), ("int4", False), ("fp4_e2m1", False), ("fp6_e2m3", False)]
    + [("fp4_e3m0", False), ("fp8_e4m3", True), ("fp8_e5m2", True)],
)
def test_nan_weights_fail_in_formats_without_nan(
    name: str, has_nan: bool, kernel_path: str
) -> None:
    x = _with_nan_and_inf()  # the inf saturates to ±max: only the NaN reaches the audit
    result = qbench.quantize(x, name, return_codes=True)
    assert int(torch.isnan(result.dequantized).sum()) == 1
    audit = _audit(("fc", "weight", result))
    weight = audit["roles"]["weight"]
    assert weight["nonfinite"] == {"nan": 1, "inf": 0}
    [tensor] = audit["tensors"]
    assert tensor["nonfinite"] == {"nan": 1, "inf": 0}
    if has_nan:
        assert audit["status"] == "PASS", audit["failures"]
    else:
        assert audit["status"] == "FAIL" and weight["failed_elements"] == 1
        assert tensor["failures"] == {"grid": 1}
        example = tensor["examples"][0]
        assert example["check"] == "grid" and example["index"] == [1, 5]
        assert example["value"] == "NaN"
    [warning] = audit["warnings"]
    assert "weight" in warning and "1 NaN and 0 inf" in warning and "'fc'" in warning


def test_inf_values_are_counted_and_pass_where_the_format_has_inf(kernel_path: str) -> None:
    x = _with_nan_and_inf()
    result = qbench.quantize(x, "fp8_e5m2", overflow="format", return_codes=True)
    audit = _audit(("fc", "input", result))
    assert audit["status"] == "PASS", audit["failures"]
    assert audit["roles"]["input"]["nonfinite"] == {"nan": 1, "inf": 1}
    assert audit["roles"]["weight"]["nonfinite"] == {"nan": 0, "inf": 0}


def test_finite_data_gives_no_warnings_and_zero_counts(kernel_path: str) -> None:
    audit = _audit(("fc", "weight", qbench.quantize(torch.randn(4, 64), "int8", return_codes=True)))
    assert audit["status"] == "PASS" and "warnings" not in audit
    assert audit["roles"]["weight"]["nonfinite"] == {"nan": 0, "inf": 0}
    assert audit["scales"]["nan"] == 0


@pytest.mark.parametrize("name", ["mxfp8_e5m2", "mxfp8_e4m3", "mxfp4_e2m1", "mxint8"])
@pytest.mark.parametrize("overflow", ["saturate", "format"])
def test_a_nan_e8m0_scale_is_legal_and_its_block_counts_as_nan(
    name: str, overflow: str, kernel_path: str
) -> None:
    """OCP MX v1.0: E8M0's 0xFF is NaN, and a NaN shared scale makes every element of its
    block NaN whatever the element format (fp4_e2m1 and MXINT8 have no NaN of their own)."""
    x = _with_nan_and_inf()
    result = qbench.quantize(x, name, overflow=overflow, return_codes=True)
    assert int(torch.isnan(result.scales).sum()) == 2  # the blocks of the NaN and the inf
    audit = _audit(("fc", "weight", result))
    assert audit["status"] == "PASS", audit["failures"]
    assert audit["scales"] == {"status": "PASS", "checked": 8, "failed": 0, "nan": 2}
    nonfinite = audit["roles"]["weight"]["nonfinite"]
    # two blocks of 32 (and, for E4M3 with overflow: format, the NaN of an overflow)
    assert torch.isnan(result.dequantized[1, :32]).all()
    assert torch.isnan(result.dequantized[2, 32:]).all()
    assert nonfinite["nan"] == int(torch.isnan(result.dequantized).sum()) >= 64
    assert nonfinite["inf"] == int(torch.isinf(result.dequantized).sum())
    assert audit["tensors"][0]["nan_scales"] == 2
    assert f"{nonfinite['nan']} NaN" in audit["warnings"][0]


def test_a_number_used_under_a_nan_scale_still_fails_reconstruction(kernel_path: str) -> None:
    result = qbench.quantize(_with_nan_and_inf(), "mxfp4_e2m1", return_codes=True)
    dequantized = result.dequantized.clone()
    dequantized[1, 7] = 1.0  # in the NaN block of [1, 5]: the layer did not use NaN
    audit = _audit(("fc", "input", dataclasses.replace(result, dequantized=dequantized)))
    [failure] = audit["failures"]
    assert failure["failures"] == {"reconstruction": 1}
    assert failure["examples"][0]["index"] == [1, 7]


@pytest.mark.parametrize(
    "scale_format, legal",
    [("e8m0", True), ("fp32", True), ("fp8_e4m3", True), ("fp6_e3m2", False), ("int8", False)],
)
def test_a_nan_scale_is_legal_where_the_scale_format_encodes_nan(
    scale_format: str, legal: bool, kernel_path: str
) -> None:
    codes = torch.tensor([[1, -3, 7, 0] * 2, [2, 5, -7, 1] * 2], dtype=torch.int32)
    scales = torch.ones(4, 1)  # 1.0: legal in every scale format here
    scales[1] = math.nan

    def expand(s: torch.Tensor) -> torch.Tensor:
        return s.expand(-1, 4).reshape(2, 8)

    result = QuantResult(
        codes.float() * expand(scales),
        codes,
        scales,
        spec("test_int8", "chunk", 4, scale_format),
        {"block": (scales, scale_format)},
        expand,
    )
    audit = _audit(("fc", "weight", result))
    assert audit["scales"]["failed"] == (0 if legal else 1)
    assert audit["scales"]["nan"] == 1
    # the block's 4 elements are NaN by the scale, never grid failures of test_int8
    assert audit["roles"]["weight"]["nonfinite"] == {"nan": 4, "inf": 0}
    assert audit["tensors"][0]["failures"] == ({} if legal else {"scale": 1})


def test_a_shared_quantization_replays_its_nan_counts() -> None:
    result = qbench.quantize(_with_nan_and_inf(), "fp8_e4m3", return_codes=True)
    metric = _metric()
    metric.on_tensor("relu", "act", result)
    metric.on_tensor("conv", "input", dataclasses.replace(result))  # the same tensors
    audit = metric.result()
    conv = next(t for t in audit["tensors"] if t["layer"] == "conv")
    assert conv["reused_observations"] == 1 and conv["nonfinite"] == {"nan": 1, "inf": 0}
    assert audit["roles"]["input"]["nonfinite"] == audit["roles"]["act"]["nonfinite"]
    assert len(audit["warnings"]) == 2  # act and input


def test_deferred_counts_keep_the_nonfinite_counts() -> None:
    x = _with_nan_and_inf()
    observations = [
        ("a", "input", qbench.quantize(x, "mxfp8_e5m2", overflow="format", return_codes=True)),
        ("b", "input", qbench.quantize(x, "int8", return_codes=True)),
        ("c", "act", qbench.quantize(x, "fp8_e5m2", overflow="format", return_codes=True)),
    ]
    results = []
    with kernels_on("compiled"):
        for deferred in (False, True):
            metric = _metric(deferred)
            for layer, role, result in observations:
                metric.on_tensor(layer, role, result)
            assert bool(metric._pending) is deferred
            metric.update(BATCH)
            results.append(metric.result())
    assert results[0] == results[1]
    by_layer = {t["layer"]: t for t in results[0]["tensors"]}
    assert by_layer["a"]["status"] == "PASS" and by_layer["a"]["nonfinite"]["nan"] == 64
    assert by_layer["b"]["failures"] == {"grid": 1}
    assert by_layer["c"]["nonfinite"] == {"nan": 1, "inf": 1}


@pytest.mark.parametrize(
    "shape, scale_shape",
    [
        ((2, 70001), (2, 1)),  # a long row split by a divisor
        ((2, 65537), (2, 1)),  # unpacked int64 totals
        ((600, 56), (600, 1)),  # short rows grouped
        ((3, 40000), (1, 40000)),
    ],
)
def test_packed_nonfinite_counts_match_a_plain_count(
    shape: tuple, scale_shape: tuple, kernel_path: str
) -> None:
    """The fused pass's NaN/inf counts of the values used, packed per row, against an eager
    count: more than 2^15 of each in one row where a row is that long."""
    element = qbench.get_format("fp8_e4m3")
    metric = _metric()
    table = metric._table("fp8_e4m3", element, torch.zeros(1, dtype=torch.int32))
    codes = torch.full(shape, 0x38, dtype=torch.int32)  # 1.0
    scales = torch.full(scale_shape, 0.5)
    dequantized = (element.decode(codes) * scales).contiguous()
    flat = dequantized.view(-1)
    flat[: min(flat.numel(), 40000)] = math.nan
    flat[-min(flat.numel() // 3, 35000) :] = -math.inf
    expected_nan, expected_inf = int(torch.isnan(flat).sum()), int(torch.isinf(flat).sum())
    illegal, mismatched, nan, inf = table.counts(codes, dequantized, scales).tolist()
    assert (nan, inf) == (expected_nan, expected_inf)
    assert illegal == 0 and mismatched == expected_nan + expected_inf
