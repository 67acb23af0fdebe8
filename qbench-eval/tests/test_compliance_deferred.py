"""The audit's deferred counts (``ComplianceMetric.defer_bytes``, on by default on CUDA only):
counts read for many tensors in one host sync give the very result of reading them per
tensor, and a tensor changed in place while its counts wait is neither lost nor reused."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import qbench
import torch
from eval_helpers import kernels_on, quantize, spec
from qbench.types import BatchOutputs, QuantResult, QuantSpec, Scaling
from qbench_eval.compliance import DEFER_BYTES, ComplianceMetric, counting, tables
from qbench_eval.compliance import metric as compliance_metric

BATCH = BatchOutputs(torch.zeros(1), torch.zeros(1, 1), torch.zeros(1, 1))


def _metric(deferred: bool, max_examples: int = 5) -> ComplianceMetric:
    metric = ComplianceMetric({"max_examples": max_examples})
    metric.defer_bytes["cpu"] = 1 << 40 if deferred else 0
    metric.attach(None, None, {"preparation": {"quantized": []}})
    return metric


def _nudged(result: QuantResult, index: tuple[int, ...]) -> QuantResult:
    """``result`` with one dequantized value an ulp off (a reconstruction failure)."""
    dequantized = result.dequantized.clone()
    dequantized[index] = torch.nextafter(dequantized[index], torch.tensor(math.inf))
    return dataclasses.replace(result, dequantized=dequantized)


def _observations() -> list[list[tuple[str, str, QuantResult]]]:
    """Two batches of observations: clean ones, a shared quantization, a tampered value,
    codes off the grid, an illegal e8m0 scale, per tensor / chunk / MX / NVFP4 layouts."""
    torch.manual_seed(0)
    shared = qbench.quantize(torch.randn(8, 64), "fp8_e4m3", return_codes=True)
    off_grid = quantize(torch.randn(4, 16), spec("test_int4"))
    codes = off_grid.codes.clone()
    codes[1, 3] = -9  # outside -7..7, the dequantized value made consistent with it
    off_grid = QuantResult(
        codes.float() * off_grid.scales, codes, off_grid.scales, off_grid.spec, {}
    )
    good = quantize(torch.randn(2, 8), spec("test_int8", "chunk", 4, "e8m0"))
    scales = good.scales.clone()
    scales[2] = scales[2] * 1.5  # not a power of two
    bad_scale = QuantResult(
        good.codes.float() * good.expand(scales),
        good.codes,
        scales,
        good.spec,
        {"block": (scales, "e8m0")},
        good.expand,
    )
    batches = []
    for batch in range(2):
        tampered = qbench.quantize(torch.randn(3, 96), "mxfp4_e2m1", return_codes=True)
        batches.append(
            [
                ("relu", "act", shared),
                ("conv", "input", dataclasses.replace(shared)),  # the same tensors again
                ("head", "input", _nudged(tampered, (batch + 1, 7))),
                ("fc", "input", off_grid),
                ("fc", "weight", bad_scale),
                ("nv", "input", qbench.quantize(torch.randn(4, 32), "nvfp4", return_codes=True)),
                ("head", "input", _nudged(tampered, (0, 95))),
            ]
        )
    return batches


@pytest.mark.parametrize("max_examples", [5, 1])
def test_deferred_counts_give_the_result_of_per_tensor_counts(max_examples: int) -> None:
    results = []
    with kernels_on("compiled"):  # the fused counting pass is the deferred one
        for deferred in (False, True):
            metric = _metric(deferred, max_examples)
            for batch in _observations():
                for layer, role, result in batch:
                    metric.on_tensor(layer, role, result)
                # deferred: counts wait for the batch's end (a repeat of pending tensors
                # settles them early, to know whether they can be reused)
                assert bool(metric._pending) is deferred
                metric.update(BATCH)
            results.append(metric.result())
    immediate, deferred_result = results
    assert deferred_result == immediate
    failures = {(f["layer"], f["role"]): f["failures"] for f in immediate["failures"]}
    assert failures == {
        ("head", "input"): {"reconstruction": 4},
        ("fc", "input"): {"grid": 2},
        ("fc", "weight"): {"scale": 2},
    }
    conv = next(t for t in immediate["tensors"] if t["layer"] == "conv")
    assert conv["reused_observations"] == 2


def test_a_failing_tensor_changed_in_place_keeps_its_counts_and_then_settles_at_once() -> None:
    with kernels_on("compiled"):
        metric = _metric(deferred=True)
        result = qbench.quantize(torch.randn(4, 64), "fp8_e4m3", return_codes=True)
        bad = _nudged(result, (1, 5))
        metric.on_tensor("relu", "act", bad)
        bad.dequantized[2, 2] += 1.0  # the model changes it after use: not what was audited
        metric.update(BATCH)
        [failure] = metric.result()["failures"]
        assert failure["failures"] == {"reconstruction": 1}  # counted when observed
        assert failure["examples"] == []  # the failing element can no longer be read
        # from now on this (layer, role) is settled as it is observed, with examples
        metric.on_tensor("relu", "act", _nudged(result, (3, 9)))
        assert not metric._pending
        [failure] = metric.result()["failures"]
        assert failure["failures"] == {"reconstruction": 2}
        assert [e["index"] for e in failure["examples"]] == [[3, 9]]


def test_clean_tensors_changed_in_place_while_pending_are_checked_again() -> None:
    with kernels_on("compiled"):
        metric = _metric(deferred=True)
        result = qbench.quantize(torch.randn(4, 64), "fp8_e4m3", return_codes=True)
        metric.on_tensor("relu", "act", result)
        assert metric._pending
        result.dequantized[2, 3] = torch.nextafter(result.dequantized[2, 3], torch.tensor(10.0))
        metric.on_tensor("conv", "input", result)  # the same tensors, changed since
        layers = {t["layer"]: t for t in metric.result()["tensors"]}
        assert layers["relu"]["status"] == "PASS"
        assert layers["conv"]["failures"] == {"reconstruction": 1}
        assert layers["conv"]["reused_observations"] == 0
        assert layers["conv"]["examples"][0]["index"] == [2, 3]


def test_counts_wait_on_cuda_only_and_within_the_byte_budget() -> None:
    assert DEFER_BYTES.get("cpu", 0) == 0 and DEFER_BYTES["cuda"] > 0
    with kernels_on("compiled"):
        metric = _metric(deferred=True)
        x = torch.randn(16, 64)
        metric.defer_bytes["cpu"] = 2 * (x.numel() * 8)  # about two tensors' codes + values
        for i in range(5):
            metric.on_tensor(
                f"l{i}", "input", qbench.quantize(x + i, "fp8_e4m3", return_codes=True)
            )
            assert len(metric._pending) <= 2
        metric.update(BATCH)
        assert not metric._pending
        assert metric.result()["status"] == "PASS"


# -- the eager audit (a short run, or compilation off) counts slice by slice
# (``tables.SLICE_ELEMENTS``), on the CPU with ``_cpu_counts``'s shortcut, and reads masks only
# for a tensor that failed: the result is the very result of the masks of every element.


def _with_nonfinite() -> list[list[tuple[str, str, object]]]:
    """The deferred tests' observations, and tensors whose values are NaN / ±inf."""
    batches = _observations()
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(3))
    x[1, 5], x[4, 60] = math.nan, math.inf
    for batch in batches:
        batch.append(("nan", "input", qbench.quantize(x, "fp8_e4m3", return_codes=True)))
        batch.append(("mx", "input", qbench.quantize(x, "mxfp8_e4m3", return_codes=True)))
    return batches


def _audit(max_examples: int) -> dict:
    metric = _metric(False, max_examples)
    for batch in _with_nonfinite():
        for layer, role, result in batch:
            metric.on_tensor(layer, role, result)
        metric.update(BATCH)
    return metric.result()


@pytest.mark.parametrize("max_examples", [5, 1])
def test_sliced_eager_counts_give_the_result_of_the_masks(
    max_examples: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kernels_on("eager"):
        with monkeypatch.context() as patched:
            # No code table: every observation counted from the masks of the format's decode.
            patched.setattr(tables.FormatTables, "table", lambda *args: None)
            masks = _audit(max_examples)
        sliced = []
        for elements in (1, 7, 1 << 20):  # slices of one row, of a few rows, one slice
            monkeypatch.setattr(tables, "SLICE_ELEMENTS", elements)
            sliced.append(_audit(max_examples))
    with kernels_on("compiled"):
        compiled = _audit(max_examples)
    assert sliced == [masks] * 3 and compiled == masks
    failures = {(f["layer"], f["role"]): f["failures"] for f in masks["failures"]}
    assert failures[("head", "input")] == {"reconstruction": 4}
    assert failures[("fc", "input")] == {"grid": 2}
    nonfinite = [t for t in masks["tensors"] if t["layer"] in ("nan", "mx")]
    assert nonfinite and all(sum(t["nonfinite"].values()) for t in nonfinite), nonfinite


@pytest.mark.parametrize("path", ["eager", "compiled"])
def test_only_a_failed_observation_is_read_for_masks(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clean small tensor is only counted; the masks and their examples are computed for
    the one that failed, once (the eager audit of the demo's activations read masks for
    every observation, twice the time of its counts)."""
    read = []
    detail = compliance_metric.detail_failures
    monkeypatch.setattr(
        compliance_metric,
        "detail_failures",
        lambda audit, *args: read.append(audit.layer) or detail(audit, *args),
    )
    clean = qbench.quantize(torch.randn(4, 64), "fp8_e4m3", return_codes=True)
    with kernels_on(path):
        metric = _metric(False)
        metric.on_tensor("clean", "input", clean)
        metric.on_tensor("nudged", "input", _nudged(clean, (2, 5)))
        metric.update(BATCH)
    assert read == ["nudged"]
    (failed,) = metric.result()["failures"]
    assert (failed["layer"], failed["failures"]) == ("nudged", {"reconstruction": 1})
    assert [e["index"] for e in failed["examples"]] == [[2, 5]]


def test_slices_cut_the_first_dimension_and_keep_broadcast_tensors_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tables, "SLICE_ELEMENTS", 40)
    codes, scales, whole = torch.zeros(10, 3, 8), torch.ones(10, 3, 1), torch.ones(1, 3, 8)
    parts = tables._slices((codes, codes, scales, whole, torch.ones(8)))
    assert [p[0].shape[0] for p in parts] == [1] * 10  # 24 elements a row: one row a slice
    assert all(p[2].shape == (1, 3, 1) and p[3] is whole for p in parts)
    monkeypatch.setattr(tables, "SLICE_ELEMENTS", 100)
    assert [p[0].shape[0] for p in tables._slices((codes,))] == [4, 4, 2]
    assert tables._slices((codes[:1],))[0][0] is not None


def _masks_count(
    table: tables._CodeTable, codes: torch.Tensor, dequantized: torch.Tensor, scales: torch.Tensor
) -> list[int]:
    """[illegal, mismatches, NaN, ±inf] from the general masks (``_CodeTable._mask_counts``
    without its CPU shortcut): the reference every shortcut is held to."""
    decoded, legal = table.lookup(codes)
    illegal = (~legal & (scales == scales)).sum()
    mismatch = tables._mismatch(decoded * scales, dequantized).sum()
    nan, inf = tables._nonfinite(dequantized)
    return [int(illegal), int(mismatch), int(nan.sum()), int(inf.sum())]


@pytest.mark.parametrize("name", ["fp8_e4m3", "int8", "fp4_e2m1", "int4"])
def test_the_cpu_shortcut_counts_what_the_masks_count(name: str) -> None:
    """``_CodeTable._cpu_counts`` (codes' range and NaN looked at first) against the general
    masks, on clean slices, mismatches, ±inf, negative codes, NaN scales, and the cases
    where it must step aside (codes out of the table, illegal codes, NaN values)."""
    fmt = qbench.get_format(name)
    x = torch.randn(8, 96, generator=torch.Generator().manual_seed(11)) * 3
    result = qbench.quantize(x, name, mode="chunk", chunk_size=32, return_codes=True)
    table = tables.FormatTables().table(name, fmt, result.codes)
    assert table is not None
    codes, dequantized = result.codes.clone(), result.dequantized.clone()
    scales = result.expand_scales().clone()

    cases = {"clean": (codes, dequantized, scales)}
    bad = dequantized.clone()
    bad[0, :3] += 1.0
    bad[2, 5] = math.inf
    cases["mismatch and inf"] = (codes, bad, scales)
    nan_scale = scales.clone()
    nan_scale[3] = math.nan
    cases["NaN scale"] = (codes, dequantized, nan_scale)
    out_of_table = codes.clone()
    out_of_table[1, 1] = 1 << 20
    cases["code out of the table"] = (out_of_table, dequantized, scales)
    nan_value = dequantized.clone()
    nan_value[4, 4] = math.nan
    cases["NaN value"] = (codes, nan_value, scales)
    illegal = [
        c for c in range(-table.offset + 1, table.offset - 1) if not table.legal[c + table.offset]
    ]
    if illegal:
        with_illegal = codes.clone()
        with_illegal[5, 0] = illegal[0]
        cases["illegal code"] = (with_illegal, dequantized, scales)
    stepped_aside = set()
    for case, tensors in cases.items():
        fast = table._cpu_counts(*tensors)
        if fast is None:
            stepped_aside.add(case)
        else:
            assert fast.tolist() == _masks_count(table, *tensors), (name, case)
        assert table._mask_counts(*tensors).tolist() == _masks_count(table, *tensors), (name, case)
    assert {"code out of the table", "NaN value"} <= stepped_aside
    if name.startswith("fp"):  # every code legal: the shortcut serves the usual slices
        assert {"clean", "mismatch and inf", "NaN scale"}.isdisjoint(stepped_aside)
        assert table._cpu_counts(*cases["mismatch and inf"])[1:].tolist() == [3 + 1, 0, 1]
    else:  # two's complement codes 0..255 span the illegal -128 (code 128): masks count
        assert "clean" in stepped_aside


HALF_DTYPES = (torch.bfloat16, torch.float16)


def _shortcut_cases(
    table: tables._CodeTable, codes: torch.Tensor, scales: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(codes, dequantized, scales) of a clean slice and of slices changed one way each:
    the values the layer used are ``decode(codes) * scales`` unless the case says otherwise.
    ``codes`` are contiguous (5-D: a channels-last activation chunked along its channels)."""
    spot, other, block = (1, 2, 3, 0, 5), (2, 5, 7, 1, 31), (1, 2, 3, 1, 0)

    def exact(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return table.lookup(c)[0] * s

    def value(c: torch.Tensor, s: torch.Tensor, changes: dict[tuple[int, ...], float]) -> tuple:
        d = exact(c, s)
        for index, v in changes.items():
            d[index] = v
        return c, d, s

    def recoded(changes: dict[tuple[int, ...], int]) -> tuple:
        c = codes.clone()
        for index, v in changes.items():
            c[index] = v
        return c, exact(c, scales), scales

    cases = {"clean": (codes, exact(codes, scales), scales)}
    d = exact(codes, scales)
    d[spot] = torch.nextafter(d[spot], torch.tensor(math.inf))
    cases["an ulp off"] = (codes, d, scales)
    cases["+inf"] = value(codes, scales, {spot: math.inf})
    cases["-inf"] = value(codes, scales, {other: -math.inf})
    cases["-inf and +inf"] = value(codes, scales, {spot: -math.inf, other: math.inf})
    cases["NaN value"] = value(codes, scales, {other: math.nan})
    nan_scale = scales.clone()
    nan_scale[block] = math.nan
    cases["NaN scale"] = (codes, exact(codes, scales), nan_scale)
    huge = scales.clone()
    huge[block] = 3e38  # decoded values above ~1.1 overflow to ±inf, and so did the layer's
    cases["overflowing scale"] = (codes, exact(codes, huge), huge)
    cases["code out of the table"] = recoded({spot: 1 << 20})
    cases["code under the table"] = recoded({spot: -(1 << 20)})
    below_zero = recoded({spot: -1})
    cases["code -1, its value what it decodes to"] = below_zero
    cases["code -1 (fp8: a legal NaN), its value finite"] = value(
        below_zero[0], scales, {spot: 1.0}
    )
    codes_of = {
        kind: [
            c - table.offset
            for c in range(1, 2 * table.offset - 1)
            if bool(table.legal[c]) and test(float(table.values[c]))
        ]
        for kind, test in {
            "zero": lambda v: v == 0,
            "inf": math.isinf,
            "finite": math.isfinite,
        }.items()
    }
    illegal = [c for c in range(table.offset - 1) if not table.legal[c + table.offset]]
    if illegal:
        cases["illegal code"] = recoded({spot: illegal[0]})
    zeros = codes_of["zero"]  # +0 (and -0 where the format has it), the layer's the other
    c, d, s = recoded({spot: zeros[0], other: zeros[-1]})
    for index in (spot, other):
        d[index] = -0.0 if math.copysign(1.0, float(d[index])) > 0 else 0.0
    cases["signed zeros"] = (c, d, s)
    if codes_of["inf"]:  # fp8_e5m2: ±inf codes, and the layer used ±inf
        cases["inf codes"] = recoded({spot: codes_of["inf"][0], other: codes_of["inf"][-1]})
    narrow = max(codes_of["finite"], key=lambda c: abs(float(table.values[c + table.offset])))
    cases["largest finite code"] = recoded({spot: narrow})
    unit = torch.ones_like(scales)
    for dtype in HALF_DTYPES:  # the layer's values in half precision
        cases[f"{dtype} values, unit scales"] = (codes, exact(codes, unit).to(dtype), unit)
        cases[f"{dtype} values"] = (codes, exact(codes, scales).to(dtype), scales)
    return cases


def _shortcut_layouts(
    codes: torch.Tensor, dequantized: torch.Tensor, scales: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One slice in the layouts the shortcut may meet: per-block scales broadcasting, the
    scales expanded (zero strides), every tensor transposed (non-contiguous codes), the values
    in another memory layout than the codes, scales of a higher rank (the product broadcasts
    to more dimensions) and float64 scales (the product in float64)."""
    other_layout = dequantized.transpose(0, 1).contiguous().transpose(0, 1)
    return {
        "block scales": (codes, dequantized, scales),
        "expanded scales": (codes, dequantized, scales.expand(codes.shape)),
        "transposed": (codes.transpose(0, 2), dequantized.transpose(0, 2), scales.transpose(0, 2)),
        "values in another layout": (codes, other_layout, scales),
        "scales of a higher rank": (codes, dequantized, scales.unsqueeze(0)),
        "float64 scales": (codes, dequantized, scales.double()),
    }


def test_the_in_place_scaling_check_broadcasts_as_torch_does() -> None:
    target = (4, 6, 8, 2, 32)
    shapes = [(), (1,), (32,), (2, 1), (2, 32), (1, 1, 1, 1, 1), (4, 6, 8, 2, 1), target]
    shapes += [(3,), (8, 2, 3), (4, 6, 8, 2, 32, 1), (1, 4, 6, 8, 2, 32), (5, 1, 1, 1, 1)]
    for shape in shapes:
        try:
            same = torch.broadcast_shapes(target, shape) == target
        except RuntimeError:
            same = False
        assert tables._broadcasts_into(torch.Size(shape), torch.Size(target)) == same, shape


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "int8", "fp4_e2m1", "test_int4"])
@pytest.mark.parametrize("sign", ["mixed", "positive", "negative"])
def test_the_cpu_shortcut_counts_what_the_masks_count_in_every_branch(name: str, sign: str) -> None:
    """Every branch of ``_CodeTable._cpu_counts`` against the general masks: codes from 0 up
    and codes below 0 (fp8's legal NaN codes, test_int4's signed codes), finite values and
    ±inf (found by the values' range), exact reconstructions (``torch.equal``: -0.0 matches
    0.0) and mismatches, half-precision values, and each layout of a slice. It steps aside
    exactly where a code is outside the table, the codes' range spans an illegal code, or a
    value is NaN."""
    x = torch.randn(4, 64, 6, 8, generator=torch.Generator().manual_seed(5)) * 3
    x = {"mixed": x, "positive": x.abs() + 1, "negative": -x.abs() - 1}[sign]  # no zero
    result = qbench.quantize(
        x.contiguous(memory_format=torch.channels_last),
        name,
        mode="chunk",
        chunk_size=32,
        axis=1,
        return_codes=True,
    )
    table = tables.FormatTables().table(name, qbench.get_format(name), result.codes)
    assert table is not None
    parts = counting._grouped_parts(result)
    assert parts is not None and len(parts) == 1
    codes, dequantized, scales = parts[0]
    if scales.shape != (4, 6, 8, 2, 1):  # test_int4 chunks the flattened tensor: a 5-D view
        codes = result.codes.reshape(4, 6, 8, 2, 32)
        scales = result.scales.reshape(4, 6, 8, 2, 1)
        dequantized = result.dequantized.reshape(codes.shape)
    assert codes.is_contiguous() and scales.shape[-1] == 1
    assert _masks_count(table, codes, dequantized, scales) == [0, 0, 0, 0]
    served = set()
    cases = _shortcut_cases(table, codes, scales)
    for case, (c, d, s) in cases.items():
        expected = _masks_count(table, c, d, s)
        low, high = int(c.min()), int(c.max())
        in_table = -table.offset < low and high < table.offset - 1
        legal = in_table and bool(table.legal[table.offset + low : table.offset + high + 1].all())
        steps_aside = not legal or bool(d.isnan().any())
        for layout, tensors in _shortcut_layouts(c, d, s).items():
            where = (name, sign, case, layout)
            if layout != "float64 scales":  # the product in float64 may round otherwise
                assert _masks_count(table, *tensors) == expected, where
            fast = table._cpu_counts(*tensors)
            assert (fast is None) == steps_aside, where
            if fast is not None:
                served.add(case)
                assert fast.dtype == torch.int64, where
                assert fast.tolist() == _masks_count(table, *tensors), where
            assert table._mask_counts(*tensors).tolist() == _masks_count(table, *tensors), where
    served_always = {"clean", "an ulp off", "+inf", "-inf", "signed zeros", "overflowing scale"}
    if name == "int8":  # codes 0..255 (two's complement) span its illegal -128 (code 128)
        # unless all of a sign (a zero's code 0 with negative codes spans it too)
        served_always = {"positive": served_always, "negative": served_always - {"signed zeros"}}
        served_always = served_always.get(sign, set())
    assert served_always <= served
    exact_counts = {  # the counts themselves, not only their agreement with the masks
        "clean": [0, 0, 0, 0],
        "an ulp off": [0, 1, 0, 0],
        "+inf": [0, 1, 0, 1],
        "-inf": [0, 1, 0, 1],
        "-inf and +inf": [0, 2, 0, 2],
        "signed zeros": [0, 0, 0, 0],
        "code -1 (fp8: a legal NaN), its value finite": [0, 1, 0, 0],
        "inf codes": [0, 0, 0, 2],
        **{f"{dtype} values, unit scales": [0, 0, 0, 0] for dtype in HALF_DTYPES},
    }
    for case, counts in exact_counts.items():
        if case in served:
            assert table._cpu_counts(*cases[case]).tolist() == counts, (name, sign, case)
    if "overflowing scale" in served:
        huge = table._cpu_counts(*cases["overflowing scale"]).tolist()
        assert huge[:3] == [0, 0, 0] and huge[3] > 0
    if name.startswith("fp8"):  # the legal NaN code -1: the shifted gather
        assert "code -1 (fp8: a legal NaN), its value finite" in served
    if name == "test_int4" and sign != "positive":  # signed codes: the shifted gather
        assert int(codes.min()) < 0 and "clean" in served
    if name.startswith("fp8") and sign == "negative":  # codes from 128 up: gathered as they are
        assert int(codes.min()) >= 128 and "clean" in served
    if "inf codes" in cases:
        assert table._cpu_counts(*cases["inf codes"]).tolist() == [0, 0, 0, 2]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fp8_e4m3", "test_int4"])  # decoded from bits / a table
def test_a_compiled_count_reads_the_values_in_one_loop(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grid and reconstruction counts and the NaN / ±inf counts of a channels-last
    activation, chunked along its channels (scales indexed per pixel), come out of one loop
    nest: inductor does not give the NaN / ±inf counts a loop (and a read of the values) of
    their own (``counting._nonfinite``); the only other loops sum that loop's per-row counts
    (``counting._totals``). The counts are those of the eager masks."""
    from torch._inductor import config as inductor_config
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(3)
    x = torch.randn(2, 64, 56, 56).contiguous(memory_format=torch.channels_last)
    x[0, 5, 3, 3], x[1, 7, 2, 9] = math.inf, math.nan
    along_channels = Scaling(mode="chunk", chunk_size=16, axis=1)
    result = quantize(x, QuantSpec(format=name, scaling=along_channels))
    table = tables.FormatTables().table(name, qbench.get_format(name), result.codes)
    (part,) = counting._grouped_parts(result)
    monkeypatch.setattr(qbench.kernels, "_COMPILED", {})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # inductor writes one "omp for" per loop nest of a kernel
    try:
        with kernels_on("compiled"), inductor_config.patch(force_disable_caches=True):
            counts, sources = run_and_get_code(table.counts, *part)
    finally:
        torch.set_num_threads(threads)
    if qbench.kernels._FAILED:
        pytest.skip("torch.compile is unavailable here; the eager twin was used")
    kernel = next(s for s in sources if "#pragma omp" in s)
    loops = kernel.split("#pragma omp for")[1:]
    # the kernel's inputs are read in one loop; the loops after it sum its per-row counts
    assert sum(bool(re.search(r"\bin_ptr\d", loop)) for loop in loops) == 1, kernel
    assert counts.tolist() == table.counts(*part, sliced=True).tolist()
    assert sum(counts.tolist()[2:]) > 0  # the planted NaN / inf were counted, in that loop


@pytest.mark.parametrize("scale_format", ["fp32", "e8m0", "fp8_e4m3"])
def test_scale_counts_by_range_are_those_of_the_masks(scale_format: str) -> None:
    """A CPU level of fp32 scales seen finite and positive by its range makes no masks;
    every other case is counted from them (zero, negative, ±inf, NaN scales; e8m0's powers
    of two and fp8's grid need the masks whatever the range)."""
    shared = tables.FormatTables()  # its grids, built once for every case
    clean = torch.tensor([[0.5, 2.0], [3.0, 1.0e-30]])
    cases = {"clean": clean}
    for name, value in (("zero", 0.0), ("negative", -1.0), ("inf", math.inf), ("nan", math.nan)):
        bad = clean.clone()
        bad[1, 0] = value
        cases[name] = bad
    for name, values in cases.items():
        for as_dtype in (torch.float32, torch.float64):
            check = tables._ScaleCheck("block", scale_format, values.to(as_dtype))
            counts = shared.scale_counts([check]).tolist()
            illegal, nan = tables.FormatTables().scale_masks(
                tables._ScaleCheck("block", scale_format, values.to(as_dtype))
            )
            assert counts == [int(illegal.sum()), int(nan.sum())], (name, as_dtype)
            masked = check.masks is not None
            assert masked == (name != "clean" or scale_format != "fp32"), (name, scale_format)
    if scale_format == "fp32":  # NaN is legal in fp32, zero, negative and inf are not
        assert tables.FormatTables().scale_counts(
            [tables._ScaleCheck("a", "fp32", cases["nan"]), tables._ScaleCheck("b", "fp32", clean)]
        ).tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize("name", ["fp8_e4m3", "test_int4"])  # bit fields; the gathered table
def test_a_compiled_count_packs_its_numbers_once(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The numbers the audit's kernel reads are one tuple per code table, so their words are
    packed on its first call only (``qbench.kernels._kinds_and_words``)."""
    from qbench import kernels

    packed = []
    words = kernels._words
    monkeypatch.setattr(kernels, "_words", lambda *args: packed.append(args) or words(*args))
    monkeypatch.setattr(kernels, "_WORDS", {})
    result = qbench.quantize(
        torch.randn(4, 64), name, mode="chunk", chunk_size=32, return_codes=True
    )
    table = tables.FormatTables().table(name, qbench.get_format(name), result.codes)
    assert table is not None and (table.bit_fields is None) == (name == "test_int4")
    parts = (result.codes, result.dequantized, result.expand_scales())
    with kernels_on("compiled"):
        counts = [table.counts(*parts).tolist() for _ in range(3)]
    assert counts == [[0, 0, 0, 0]] * 3
    assert len(packed) == 1
