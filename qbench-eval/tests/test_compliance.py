"""The compliance audit: clean quantizations PASS; planted violations FAIL, naming the layer,
the role, the count and examples with their indices and nearest representable values."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from eval_helpers import kernels_on, quantize, spec
from qbench.errors import QBenchError
from qbench.types import BatchOutputs, QuantResult
from qbench_eval.compliance import ComplianceMetric, load_config


def _metric(options=None, expected=None) -> ComplianceMetric:
    metric = ComplianceMetric(options)
    preparation = {
        "quantized": [
            {"name": n, "type": "Linear", "roles": {r: "" for r in roles}}
            for n, roles in (expected or {}).items()
        ]
    }
    metric.attach(None, None, {"preparation": preparation, "config_dir": Path.cwd()})
    return metric


def test_clean_quantizations_pass() -> None:
    torch.manual_seed(0)
    metric = _metric(expected={"fc1": ["weight", "input"], "fc2": ["weight"]})
    metric.on_tensor("fc1", "weight", quantize(torch.randn(8, 16), spec("test_int4")))
    metric.on_tensor(
        "fc2", "weight", quantize(torch.randn(4, 32), spec("test_int8", "chunk", 8, "e8m0"))
    )
    for _ in range(3):
        metric.on_tensor(
            "fc1", "input", quantize(torch.randn(5, 16), spec("test_int4", "chunk", 4, "e8m0"))
        )
        metric.update(BatchOutputs(torch.zeros(1), torch.zeros(1, 1), torch.zeros(1, 1)))
    result = metric.result()
    assert result["status"] == "PASS", result["failures"]
    assert (
        result["roles"]["weight"]["status"] == "PASS" and result["roles"]["weight"]["tensors"] == 2
    )
    assert result["roles"]["input"]["elements"] == 3 * 80
    assert result["roles"]["stats"]["status"] == "NOT RUN"
    assert result["scales"]["status"] == "PASS" and result["scales"]["checked"] == 1 + 16 + 3 * 20
    fc1_input = next(t for t in result["tensors"] if t["layer"] == "fc1" and t["role"] == "input")
    assert fc1_input["observations"] == 3 and fc1_input["scale_formats"] == {"block": "e8m0"}


def test_format_whose_rounding_skips_values_fails_with_examples() -> None:
    x = torch.tensor([[0.0, 0.3, 7.0, -0.9], [2.0, 1.2, -7.0, 3.0]])  # amax 7 = qmax: scale 1
    metric = _metric({"max_examples": 2}, expected={"good": ["weight"], "conv": ["weight"]})
    metric.on_tensor("good", "weight", quantize(x, spec("test_int4")))
    metric.on_tensor("conv", "weight", quantize(x, spec("test_skip_int4")))
    result = metric.result()
    assert result["status"] == "FAIL"
    assert result["roles"]["weight"]["status"] == "FAIL"
    [failure] = result["failures"]
    assert (failure["layer"], failure["role"]) == ("conv", "weight")
    # 0.3, -0.9 and 1.2 were left unrounded (|x| < 1.5); 0.0 is on the grid anyway.
    assert failure["failures"] == {"reconstruction": 3}
    assert failure["failed"] == 3 and failure["elements"] == 8
    assert len(failure["examples"]) == 2  # capped by max_examples; the count stays exact
    first = failure["examples"][0]
    assert first["check"] == "reconstruction" and first["index"] == [0, 1]
    assert first["value"] == pytest.approx(0.3) and first["expected"] == 0.0 and first["code"] == 0
    assert first["nearest"] == [0.0, 1.0]
    assert failure["examples"][1]["index"] == [0, 3]
    assert failure["examples"][1]["nearest"] == [-1.0, 0.0]


@pytest.mark.parametrize("code", [-9, 1000])
def test_codes_off_the_grid_fail(code: int) -> None:
    good = quantize(torch.tensor([1.0, -7.0, 3.0]), spec("test_int4"))
    codes = good.codes.clone()
    codes[1] = code  # outside -7..7; dequantized made consistent so only the grid check trips
    bad = QuantResult(
        codes.float() * good.scales, codes, good.scales, good.spec, dict(good.scale_parts)
    )
    metric = _metric()
    metric.on_tensor("fc", "input", bad)
    [failure] = metric.result()["failures"]
    # A code outside the format's code space does not even decode (NaN), so the value the
    # layer used cannot be codes x scales either.
    assert failure["failures"] == ({"grid": 1} if code == -9 else {"grid": 1, "reconstruction": 1})
    example = failure["examples"][0]
    assert example["check"] == "grid" and example["index"] == [1] and example["code"] == code
    if code == -9:
        assert example["value"] == -9.0 and example["nearest"] == [-7.0]


def test_illegal_e8m0_scale_fails() -> None:
    good = quantize(torch.randn(2, 8), spec("test_int8", "chunk", 4, "e8m0"))
    scales = good.scales.clone()
    scales[2] = scales[2] * 1.5  # not a power of two
    expand = good.expand
    bad = QuantResult(
        good.codes.float() * expand(scales),
        good.codes,
        scales,
        good.spec,
        {"block": (scales, "e8m0")},
        expand,
    )
    metric = _metric()
    metric.on_tensor("fc", "weight", bad)
    result = metric.result()
    assert result["scales"]["status"] == "FAIL" and result["scales"]["failed"] == 1
    [failure] = result["failures"]
    assert failure["failures"] == {"scale": 1}
    example = failure["examples"][0]
    assert example["level"] == "block" and example["index"] == [2, 0]
    low, high = example["nearest"]
    assert high == 2 * low and low < example["value"] < high


@pytest.mark.parametrize("value", [0.0, -0.25, math.inf, 2.0**-128])
def test_e8m0_scale_range(value: float) -> None:
    # (a NaN scale is E8M0's 0xFF, legal: test_compliance_nonfinite.py)
    good = quantize(torch.ones(1, 4), spec("test_int8", "chunk", 4, "e8m0"))
    scales = torch.full_like(good.scales, value)
    bad = QuantResult(
        good.codes.float() * scales,
        good.codes,
        scales,
        good.spec,
        {"block": (scales, "e8m0")},
        good.expand,
    )
    metric = _metric()
    metric.on_tensor("fc", "weight", bad)
    assert metric.result()["scales"]["failed"] == 1


def test_layer_that_bypasses_quantization_fails() -> None:
    metric = _metric(expected={"fc1": ["weight", "input"], "fc2": ["weight", "input"]})
    for layer in ("fc1", "fc2"):
        metric.on_tensor(layer, "weight", quantize(torch.randn(4, 4), spec("test_int4")))
    metric.on_tensor("fc1", "input", quantize(torch.randn(4, 4), spec("test_int4")))
    result = metric.result()
    assert result["status"] == "FAIL"
    assert result["missing"] == [
        {
            "layer": "fc2",
            "role": "input",
            "reason": "quantized per the preparation report but never observed",
        }
    ]
    assert (
        result["roles"]["input"]["status"] == "FAIL"
        and result["roles"]["weight"]["status"] == "PASS"
    )


def test_config_skips_layers_and_roles_and_limits_activation_batches(tmp_path: Path) -> None:
    (tmp_path / "audit.yaml").write_text(
        "skip_layers: ['head*']\nroles: [weight, input]\nactivation_batches: 1\n"
    )
    metric = ComplianceMetric("audit.yaml")
    metric.attach(
        None,
        None,
        {
            "config_dir": tmp_path,
            "preparation": {
                "quantized": [
                    {"name": "head", "roles": {"weight": ""}},
                    {"name": "body", "roles": {"weight": "", "act": ""}},
                ]
            },
        },
    )
    skipping = quantize(torch.tensor([0.3, 7.0]), spec("test_skip_int4"))
    metric.on_tensor("head", "weight", skipping)  # skipped layer: not audited
    metric.on_tensor("body", "act", skipping)  # role not audited
    metric.on_tensor("body", "weight", quantize(torch.tensor([0.3, 7.0]), spec("test_int4")))
    metric.on_tensor("body", "input", quantize(torch.tensor([1.0]), spec("test_int4")))
    metric.update(BatchOutputs(torch.zeros(1), torch.zeros(1, 1), torch.zeros(1, 1)))
    metric.on_tensor("body", "input", skipping)  # after activation_batches: not audited
    result = metric.result()
    assert result["status"] == "PASS", result
    assert result["config"]["source"] == str(tmp_path / "audit.yaml")
    body_input = next(t for t in result["tensors"] if t["role"] == "input")
    assert body_input["observations"] == 1 and body_input["skipped_observations"] == 1
    assert result["roles"]["act"]["audited"] is False


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"roles": ["weights"]}, "roles: found"),
        ({"max_examples": -1}, "max_examples: found -1"),
        ({"skip": []}, "unknown key 'skip'"),
        ({"activation_batches": 0}, "activation_batches"),
        (42, "evaluation.compliance: found int"),
    ],
)
def test_bad_inline_config(options: object, message: str) -> None:
    with pytest.raises(QBenchError, match=message):
        load_config(options)


def test_missing_or_invalid_config_file(tmp_path: Path) -> None:
    with pytest.raises(QBenchError, match="not found"):
        load_config("nope.yaml", tmp_path)
    (tmp_path / "bad.yaml").write_text("roles: [weight\n")
    with pytest.raises(QBenchError, match="bad.yaml: not valid YAML"):
        load_config("bad.yaml", tmp_path)
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(QBenchError, match="list.yaml: found list"):
        load_config("list.yaml", tmp_path)


def test_default_config_is_shipped() -> None:
    config = load_config(None)
    assert config.roles == ("weight", "stats", "input", "act") and config.max_examples == 5
    assert config.source == "default" and config.require_observed


def test_unobservable_layer_fails_with_its_reason() -> None:
    metric = ComplianceMetric(None)
    preparation = {"quantized": [{"name": "attn", "roles": {"weight": ""}, "observable": False}]}
    metric.attach(None, None, {"preparation": preparation})
    result = metric.result()
    assert result["status"] == "FAIL"
    assert (
        result["missing"][0]["layer"] == "attn"
        and "not observable" in result["missing"][0]["reason"]
    )


# -- the real formats of qbench-formats (a test dependency) ------------------------------


REAL = [
    "fp8_e4m3",
    "fp8_e5m2",
    "fp6_e2m3",
    "fp4_e2m1",
    "fp4_e3m0",
    "int8",
    "int4",
    "mxfp4_e2m1",
    "mxint8",
    "nvfp4",
]


@pytest.mark.parametrize("name", REAL)
def test_real_formats_pass_and_code_table_matches_decode(name: str, kernel_path: str) -> None:
    import qbench

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 64, generator=generator) * torch.logspace(-3, 3, 64)
    x[0, :32] = 0.0  # an all-zero block
    x[2, 3], x[3, 40] = math.nan, -math.inf  # NaN in -> NaN out; -inf saturates
    result = qbench.quantize(x, name, return_codes=True)
    metric = _metric()
    metric.on_tensor("layer", "weight", result)
    audit = metric.result()
    assert torch.isnan(result.dequantized[2, 3])
    element = qbench.get_format(qbench.get_format(name).element)
    if name.startswith("mx"):  # OCP MX: a NaN/inf in a block makes its shared scale NaN,
        # E8M0's legal 0xFF, and its 32 elements NaN whatever the element format
        assert audit["status"] == "PASS", audit["failures"]
        assert audit["scales"]["nan"] == 2 and audit["roles"]["weight"]["nonfinite"]["nan"] == 64
    elif element.name in ("fp8_e4m3", "fp8_e5m2"):  # formats that encode NaN
        assert audit["status"] == "PASS", audit["failures"]
    else:  # the NaN has no code in the format: it fails
        [failure] = audit["failures"]
        assert failure["failures"] == {"grid": 1}, failure
        assert failure["examples"][0]["index"] == [2, 3]
    decoded, _ = metric._table(element.name, element, result.codes).lookup(result.codes)
    torch.testing.assert_close(
        decoded, element.decode(result.codes), rtol=0, atol=0, equal_nan=True
    )


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp4_e2m1", "mxfp4_e2m1"])
@pytest.mark.parametrize("columns", [32, 96, 70])  # blocks of 32: one, three, a short last
def test_real_format_with_a_tampered_value_fails(name: str, columns: int, kernel_path: str) -> None:
    import qbench

    x = torch.linspace(-3, 3, 2 * columns).reshape(2, columns)
    x[1] *= torch.logspace(0, 2, columns)  # blocks with different scales
    result = qbench.quantize(x, name, return_codes=True)
    tampered = result.dequantized.clone()
    tampered[1, 5] = torch.nextafter(tampered[1, 5], torch.tensor(10.0))  # one ulp off
    bad = QuantResult(
        tampered, result.codes, result.scales, result.spec, result.scale_parts, result.expand
    )
    metric = _metric()
    metric.on_tensor("head", "input", bad)
    [failure] = metric.result()["failures"]
    assert failure["layer"] == "head" and failure["failures"] == {"reconstruction": 1}
    example = failure["examples"][0]
    assert example["index"] == [1, 5] and example["value"] == float(tampered[1, 5])
    nan_for_nan = result.dequantized.clone()
    nan_for_nan[0, 0] = math.nan  # NaN used where the codes decode to a number: a mismatch
    metric = _metric()
    metric.on_tensor("head", "input", dataclasses.replace(result, dequantized=nan_for_nan))
    assert metric.result()["failures"][0]["failures"] == {"reconstruction": 1}
    assert example["expected"] == float(result.dequantized[1, 5])
    assert float(result.dequantized[1, 5]) in example["nearest"]
    late = result.dequantized.clone()  # in the last block
    late[1, columns - 2] = torch.nextafter(late[1, columns - 2], torch.tensor(0.0))
    metric = _metric()
    metric.on_tensor("head", "input", dataclasses.replace(result, dequantized=late))
    [failure] = metric.result()["failures"]
    assert failure["failures"] == {"reconstruction": 1}
    assert failure["examples"][0]["index"] == [1, columns - 2]


def test_points_inside_a_layer_observe_it_and_are_skipped_with_it() -> None:
    # An attention layer reports its quantization points as "<layer>.<point>".
    metric = _metric(
        {"skip_layers": ["blocks.1.attn"]},
        expected={"blocks.0.attn": ["weight", "act"], "blocks.1.attn": ["weight"]},
    )
    metric.on_tensor(
        "blocks.0.attn.in_proj", "weight", quantize(torch.randn(8, 8), spec("test_int4"))
    )
    metric.on_tensor("blocks.0.attn.softmax", "act", quantize(torch.rand(4, 4), spec("test_int4")))
    metric.on_tensor(
        "blocks.1.attn.in_proj",
        "weight",
        quantize(torch.tensor([0.3, 7.0]), spec("test_skip_int4")),
    )
    result = metric.result()
    assert result["status"] == "PASS", result
    assert {t["layer"] for t in result["tensors"]} == {
        "blocks.0.attn.in_proj",
        "blocks.0.attn.softmax",
    }
    # ...but a layer none of whose points reported is still caught.
    metric = _metric(expected={"blocks.0.attn": ["weight", "input"]})
    metric.on_tensor(
        "blocks.0.attn.in_proj", "weight", quantize(torch.randn(8, 8), spec("test_int4"))
    )
    assert metric.result()["missing"][0]["layer"] == "blocks.0.attn"
    assert metric.result()["missing"][0]["role"] == "input"


BIT_FIELD_FORMATS = ["fp8_e4m3", "fp8_e5m2", "fp8_e4m3fnuz", "fp6_e3m2", "fp4_e2m1", "fp4_e3m0"]


@pytest.mark.parametrize("name", BIT_FIELD_FORMATS)
def test_bit_field_decoding_counts_like_the_code_table(name: str, kernel_path: str) -> None:
    """The audit's arithmetic decoder (used for float formats) against the table of the
    format's own decode: every code, codes outside the code space, NaN/inf codes, and
    tampered values, counted alike on the eager and the compiled path."""
    import qbench
    from qbench.kernels import fused
    from qbench_eval.compliance.counting import _audit_rows

    element = qbench.get_format(name)
    metric = _metric()
    span = 2**element.bits
    codes = torch.arange(-span - 3, span + 3, dtype=torch.int32).repeat(3, 1)
    table = metric._table(name, element, codes)
    assert table is not None and table.bit_fields is not None
    scales = torch.tensor([[0.5], [3.0], [2.0**-20]])
    decoded, _ = table.lookup(codes)
    dequantized = decoded * scales
    dequantized[0, span + 3 : 2 * span + 3 : 3] += 1.0  # tampered values of in-range codes
    dequantized[1, span + 5] = math.nan  # NaN used where the code decodes to a number
    values, legal = table._on(codes.device)
    by_bits = table.counts(codes, dequantized, scales)
    by_table = fused(
        _audit_rows,
        (codes, dequantized, scales, values, legal),
        (0,),
        numbers=(table.offset, values.numel() - 1),
    )
    assert by_bits.tolist() == by_table.tolist()
    illegal, mismatched, _, _ = by_table.tolist()
    assert illegal >= 3 * 3 * 2 and mismatched >= 5  # both checks really counted something


def test_the_audit_kernel_reads_a_formats_numbers_at_run_time(monkeypatch) -> None:
    """One compiled audit kernel serves every bit-field format with the same kinds of
    special codes (fp6_e2m3, fp6_e3m2, fp4_e2m1, fp4_e3m0: none), and one every code-table
    format (int8, int4): their fields, special codes and table bounds are read at run time.
    Each format's counts equal the eager count's, tampered values and illegal codes
    included, whichever format compiled the kernel."""
    import qbench
    import qbench.kernels
    from qbench_eval.compliance.counting import _audit_rows, _audit_rows_bits

    monkeypatch.setattr(qbench.kernels, "_COMPILED", {})
    metric = _metric()
    groups = [["fp6_e2m3", "fp4_e3m0", "fp6_e3m2", "fp4_e2m1"], ["int8", "int4"]]
    for names in groups:
        for name in names:
            element = qbench.get_format(name)
            span = 2**element.bits
            # the same shape for every format: rows of 6000 codes, every code in each
            row = torch.arange(-span - 3, span + 3, dtype=torch.int32).repeat(600)[:6000]
            codes = row.repeat(3, 1)
            table = metric._table(name, element, codes)
            scales = torch.tensor([[0.5], [3.0], [2.0**-20]])
            decoded, _ = table.lookup(codes)
            dequantized = decoded * scales
            dequantized[0, span + 3 : 2 * span + 3 : 3] += 1.0  # tampered values
            with kernels_on("compiled"):
                compiled = table.counts(codes, dequantized, scales)
            with kernels_on("eager"):
                eager = table.counts(codes, dequantized, scales)
            assert compiled.tolist() == eager.tolist(), name
            assert min(compiled.tolist()[:2]) > 0, name  # illegal codes and mismatches seen
    audit = [key for key in qbench.kernels._COMPILED if key[0] in (_audit_rows, _audit_rows_bits)]
    assert sorted(key[0].__name__ for key in audit) == ["_audit_rows", "_audit_rows_bits"]
    assert not qbench.kernels._FAILED


@pytest.mark.parametrize(
    "shape, scale_shape",
    [
        ((2, 3, 4, 5, 6), (2, 3, 1, 5, 6)),  # chunks split along an inner axis: merged to 3-D
        ((2, 70001), (2, 1)),  # a row too long to pack: split by a divisor (7 x 10001)
        ((2, 65537), (2, 1)),  # a prime row length: unpacked int64 totals
        ((3, 40000), (1, 40000)),  # broadcast along the outer axis
        ((600, 56), (600, 1)),  # short rows grouped by a divisor: 2 x (300 x 56)
        ((601, 56), (601, 1)),  # a prime number of short rows: left as they are
        ((700, 64), (1, 64)),  # short rows grouped, scales broadcast along them
        ((), ()),  # a scalar
    ],
)
@pytest.mark.parametrize("name", ["fp8_e4m3", "int8"])
def test_counts_on_coalesced_rows_match_a_plain_count(
    name: str, shape: tuple, scale_shape: tuple, kernel_path: str
) -> None:
    """The packed per-row counts (views merged, long rows split) against an eager count of
    the expanded tensors, with illegal codes and mismatches planted in the first and last
    rows: more than 2^15 of them in one row where a row is that long."""
    import qbench

    element = qbench.get_format(name)
    metric = _metric()
    generator = torch.Generator().manual_seed(3)
    span = 2**element.bits
    table = metric._table(name, element, torch.zeros(1, dtype=torch.int32))
    every = torch.arange(-span, span, dtype=torch.int32)
    values, legal = table.lookup(every)
    usable = every[legal & torch.isfinite(values)]  # the format's own finite, legal codes
    pick = torch.randint(0, usable.numel(), shape, generator=generator)
    codes = usable[pick]
    assert table is not None and (table.bit_fields is not None) == (name == "fp8_e4m3")
    scales = torch.rand(scale_shape, generator=generator) + 0.5
    decoded, legal = table.lookup(codes)
    dequantized = decoded * scales
    flat_codes, flat_dequantized = codes.reshape(-1), dequantized.reshape(-1)
    n = flat_codes.numel()
    planted = list(range(0, min(n, 40000), 1)) if n > 1 else [0]
    flat_dequantized[planted] += 1.0  # mismatches (NaN + 1 stays NaN: not counted)
    flat_codes[-1] = 2**element.bits + 7  # an illegal code
    decoded, legal = table.lookup(codes)
    reconstructed = decoded * scales
    expected_mismatch = (reconstructed != dequantized) & ~(
        torch.isnan(reconstructed) & torch.isnan(dequantized)
    )
    expected = [int((~legal).sum()), int(expected_mismatch.sum())]
    # the illegal last code decodes to NaN: a mismatch too, planted or not
    assert expected == [1, len(set(planted) | {n - 1})]
    # ...and no NaN/inf among the values used (test_compliance_nonfinite.py plants some)
    assert table.counts(codes, dequantized, scales).tolist() == [*expected, 0, 0]


def test_short_rows_are_grouped_into_long_packed_rows() -> None:
    """One packed count per group of short rows (a horizontal reduction and a store every
    56 elements would cost a quarter of the audit): the views split the row axis by its
    largest divisor that keeps a group within _MAX_ROW elements."""
    from qbench_eval.compliance.counting import _MAX_ROW, _row_dims, _rows

    codes = torch.zeros(16, 64, 56, 1, 56, dtype=torch.int32)  # chunk 128 along W=56
    dequantized = torch.zeros(codes.shape)
    scales = torch.ones(16, 64, 56, 1, 1)
    views = _rows(codes, dequantized, scales)
    assert views is not None
    rows, group, length = views[0].shape
    assert length == 56 and group * length <= _MAX_ROW and group == 512  # 57344 = 112 x 512
    assert views[2].shape == (rows, group, 1) and _row_dims(views[0]) == 2
    single = _rows(codes[:1, :1, :1], dequantized[:1, :1, :1], scales[:1, :1, :1])
    assert single is not None and single[0].shape == (56,)  # one row: nothing to group


def _by_layer(metric: ComplianceMetric) -> dict[str, dict]:
    return {t["layer"]: t for t in metric.result()["tensors"]}


@pytest.mark.parametrize("name", ["fp8_e4m3", "mxfp4_e2m1", "nvfp4"])
def test_a_shared_quantization_is_checked_once_and_counted_for_each_layer(
    name: str, kernel_path: str
) -> None:
    import qbench

    x = torch.randn(4, 64)
    result = qbench.quantize(x, name, return_codes=True)
    metric = _metric()
    metric.on_tensor("relu", "act", result)  # the ops replay one result for the next layer
    metric.on_tensor("conv2", "input", dataclasses.replace(result))
    layers = _by_layer(metric)
    first, second = layers["relu"], layers["conv2"]
    assert first["reused_observations"] == 0 and second["reused_observations"] == 1
    for key in ("status", "format", "element_format", "scale_formats", "elements", "scales"):
        assert first[key] == second[key], key
    assert second["elements"] == x.numel() and second["scales"] > 0

    # Equal values in other tensors are not the same tensors: checked in full.
    copy = dataclasses.replace(result, dequantized=result.dequantized.clone())
    metric.on_tensor("fc", "input", copy)
    assert _by_layer(metric)["fc"]["reused_observations"] == 0


def test_a_changed_or_failing_shared_quantization_is_checked_again(kernel_path: str) -> None:
    import qbench

    result = qbench.quantize(torch.randn(4, 64), "fp8_e4m3", return_codes=True)
    metric = _metric()
    metric.on_tensor("relu", "act", result)
    # changed in place after the first check (its version counter moves): checked again
    result.dequantized[2, 3] = torch.nextafter(result.dequantized[2, 3], torch.tensor(10.0))
    metric.on_tensor("conv2", "input", result)
    layers = _by_layer(metric)
    assert layers["relu"]["status"] == "PASS"
    assert layers["conv2"]["status"] == "FAIL" and layers["conv2"]["reused_observations"] == 0
    assert layers["conv2"]["failures"] == {"reconstruction": 1}
    # a failing check is never reused: the next layer gets its own count and examples
    metric.on_tensor("fc", "input", result)
    fc = _by_layer(metric)["fc"]
    assert fc["failures"] == {"reconstruction": 1} and fc["examples"][0]["index"] == [2, 3]
    assert fc["reused_observations"] == 0


@pytest.mark.parametrize(
    "name, channels, chunk",
    [
        ("fp8_e4m3", 256, 128),
        ("int8", 256, 64),
        ("fp4_e2m1", 96, 32),
        ("fp8_e5m2", 200, 128),  # a short last block: padded, and still channels-last
    ],
)
def test_a_channels_last_activation_is_audited_like_its_contiguous_twin(
    name: str, channels: int, chunk: int, kernel_path: str
) -> None:
    """A channels-last activation chunked along its channels (what a run on CPU quantizes)
    is read in memory order: the same codes, counts and examples as the same values laid
    out contiguously, with a planted mismatch found at the same logical index."""
    import qbench

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, channels, 6, 5, generator=generator)
    x *= torch.logspace(-2, 2, channels).reshape(1, channels, 1, 1)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        result = qbench.quantize(
            x.contiguous(memory_format=layout),
            name,
            mode="chunk",
            chunk_size=chunk,
            axis=1,
            return_codes=True,
        )
        tampered = result.dequantized.clone()
        tampered[1, channels - 3, 4, 2] = torch.nextafter(
            tampered[1, channels - 3, 4, 2], torch.tensor(math.inf)
        )
        results.append(dataclasses.replace(result, dequantized=tampered))
    plain, nhwc = results
    assert nhwc.codes.is_contiguous(memory_format=torch.channels_last)
    assert not nhwc.codes.is_contiguous()  # the audit really sees the other layout
    assert torch.equal(plain.codes, nhwc.codes)
    assert torch.equal(plain.dequantized.view(torch.int32), nhwc.dequantized.view(torch.int32))
    found = []
    for result in results:
        metric = _metric()
        metric.on_tensor("layer1.conv", "input", result)
        [failure] = metric.result()["failures"]
        found.append(failure)
    assert found[0] == found[1]
    assert found[0]["failures"] == {"reconstruction": 1}
    assert found[0]["examples"][0]["index"] == [1, channels - 3, 4, 2]


def test_a_channels_last_chunked_activation_becomes_a_last_axis_layout() -> None:
    """The audit's views of a channels-last activation chunked along C are contiguous with
    the chunk last (one linear sweep), not a gather C elements apart."""
    import qbench
    from qbench_eval.compliance.counting import _grouped_parts

    x = torch.randn(2, 256, 6, 5).contiguous(memory_format=torch.channels_last)
    result = qbench.quantize(x, "fp8_e4m3", mode="chunk", chunk_size=128, axis=1, return_codes=True)
    parts = _grouped_parts(result)
    assert parts is not None and len(parts) == 1
    codes, dequantized, scales = parts[0]
    assert codes.shape == (2, 6, 5, 2, 128) and codes.is_contiguous()
    assert dequantized.is_contiguous() and scales.shape == (2, 6, 5, 2, 1)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp4_e2m1", "int8", "mxfp8_e4m3"])
def test_a_short_last_block_is_audited_in_two_parts_without_expanded_scales(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked axis with a short last block (144 channels by 128) is counted as two views
    (the full blocks, the short block against its scale) whose counts equal those of the
    full-size expanded scales, clean and with a reconstruction failure and a NaN in each
    part; the expanded scales are never made."""
    import qbench
    from qbench_eval.compliance.counting import _grouped_parts
    from qbench_eval.compliance.tables import FormatTables

    chunk = 32 if name.startswith("mx") else 128
    x = torch.randn(
        3, 144 if chunk == 128 else 80, 5, 4, generator=torch.Generator().manual_seed(2)
    )
    result = qbench.quantize(
        x.contiguous(memory_format=torch.channels_last),
        name,
        mode="chunk",
        chunk_size=chunk,
        axis=1,
        return_codes=True,
    )
    element = getattr(qbench.get_format(name), "element", None) or name
    table = FormatTables().table(element, qbench.get_format(element), result.codes)
    assert table is not None
    tampered = result.dequantized.clone()
    tampered[0, 3, 1, 1] += 1.0  # a full block
    tampered[1, -1, 2, 0] += 1.0  # the short block
    tampered[2, -2, 0, 0] = float("nan")
    for dequantized in (result.dequantized, tampered):
        case = dataclasses.replace(result, dequantized=dequantized)
        with monkeypatch.context() as patch:
            patch.setattr(QuantResult, "expand_scales", lambda self: pytest.fail("expanded"))
            parts = _grouped_parts(case)
        assert parts is not None and len(parts) == 2
        whole = (case.codes, case.dequantized, case.expand_scales())
        for sliced in (False, True):
            got = torch.stack([table.counts(*p, sliced=sliced) for p in parts]).sum(0)
            want = table.counts(*whole, sliced=sliced)
            assert got.tolist() == want.tolist(), (sliced, got, want)
    assert got.tolist() == [0, 3, 1, 0]  # two values off and a NaN; one NaN value


@pytest.mark.parametrize("numel", [4 * 64, 1 << 21])  # masks / a fused or sliced count
def test_narrowed_codes_are_audited_as_wide_ones(kernel_path: str, numel: int) -> None:
    """The ops hand observers codes narrowed to uint8 on the CPU (``qbench_ops.quantizer.
    narrowed``). Compared as uint8, fp8's ``code >= 256`` would wrap to ``code >= 0`` and call
    every code illegal; fp4's codes past 15 are illegal however narrow."""
    import qbench

    x = torch.randn(numel // 64, 64)
    fp8 = qbench.quantize(x, "fp8_e4m3", return_codes=True, mode="chunk", chunk_size=32)
    narrow = dataclasses.replace(fp8, codes=fp8.codes.to(torch.uint8))
    assert int(fp8.codes.max()) > 127  # a value of the top half, where int8 would not do
    fp4 = qbench.quantize(x, "fp4_e2m1", return_codes=True, mode="chunk", chunk_size=32)
    codes = fp4.codes.to(torch.uint8)
    codes[1, 3] = 200  # no fp4 code: illegal (and it decodes to no value of the grid)
    metric = _metric()
    metric.on_tensor("a", "input", narrow)
    metric.on_tensor("b", "input", dataclasses.replace(fp4, codes=codes))
    layers = _by_layer(metric)
    assert layers["a"]["status"] == "PASS", layers["a"]
    assert layers["b"]["failures"]["grid"] == 1, layers["b"]
    assert layers["b"]["examples"][0]["index"] == [1, 3]
    assert layers["b"]["examples"][0]["code"] == 200
    # The counting pass itself, not only the masks that detail a failure it reports.
    from qbench_eval.compliance.counting import _grouped_parts

    table = metric.tables.table("fp8_e4m3", qbench.get_format("fp8_e4m3"), narrow.codes)
    assert table is not None
    [part] = _grouped_parts(narrow)
    counts = table.counts(*part, sliced=kernel_path == "eager")
    assert counts.tolist() == [0, 0, 0, 0]


def test_a_twin_on_the_cpu_has_its_shared_quantizations_audited_once(kernel_path: str) -> None:
    """A real twin: a ReLU's quantized output is the next convolution's quantized input, and
    a block's input feeds two convolutions. The ops report each shared quantization to every
    consumer as the same (narrowed) tensors, so the audit reads it once and counts it for
    each layer; they were widened anew per consumer, and every one was read again."""
    import qbench
    from qbench.preparation import observe
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.down = nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv2(self.relu(self.conv1(x))) + self.down(x)

    torch.manual_seed(0)
    twin = qbench.prepare(Block().eval(), {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 8})
    metric = _metric()
    with torch.no_grad(), observe(twin, metric):
        for _ in range(2):
            twin(torch.randn(2, 8, 6, 6))
            metric.update(BatchOutputs(torch.zeros(1), torch.zeros(1, 1), torch.zeros(1, 1)))
    layers = {(t["layer"], t["role"]): t for t in metric.result()["tensors"]}
    assert metric.result()["status"] == "PASS"
    # conv1 and down share the block's input; the second of them is told it again
    shared_input = [layers[("conv1", "input")], layers[("down", "input")]]
    assert [t["reused_observations"] for t in shared_input] == [0, 2]
    assert layers[("relu", "act")]["reused_observations"] == 0
    assert layers[("conv2", "input")]["reused_observations"] == 2  # the ReLU's output
    assert all(t["observations"] == 2 for t in (*shared_input, layers[("conv2", "input")]))


def test_wide_codes_stay_wide_in_the_count(kernel_path: str) -> None:
    """Only narrow codes are widened (``counting.widened``): an int64 code beyond int32's
    range is illegal, not its low 32 bits (a legal code) after a cast."""
    import qbench
    from qbench_eval.compliance.counting import _grouped_parts

    x = torch.randn(4, 64)
    result = qbench.quantize(x, "fp8_e4m3", return_codes=True, mode="chunk", chunk_size=32)
    codes = result.codes.to(torch.int64)
    codes[2, 9] += 1 << 32
    wide = dataclasses.replace(result, codes=codes)
    metric = _metric()
    table = metric.tables.table("fp8_e4m3", qbench.get_format("fp8_e4m3"), codes)
    assert table is not None
    [part] = _grouped_parts(wide)
    assert table.counts(*part, sliced=kernel_path == "eager").tolist()[0] == 1
    metric.on_tensor("a", "input", wide)
    assert _by_layer(metric)["a"]["failures"]["grid"] == 1
