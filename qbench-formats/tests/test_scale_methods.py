"""Scale methods ``percentile`` and ``mse`` (qbench_formats.scale_methods) against an
independent numpy implementation, both twins, codes x scales, NaN/inf/zero groups, the audit."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import qbench
import torch
from formats_probes import same_bits
from qbench.spec import spec_from_arguments
from qbench.types import QuantSpec, Scaling
from qbench_formats import GridFormat, scale_methods
from qbench_formats.catalog import ALL_FORMATS, BY_NAME

# --- an independent implementation: numpy, one group at a time ------------------------------

#: element format -> (max, numpy rounding onto the grid with saturation)
NP_ELEMENTS = {
    "fp8_e4m3": (448.0, ml_dtypes.float8_e4m3fn),
    "fp4_e2m1": (6.0, ml_dtypes.float4_e2m1fn),
    "int8": (127.0, None),
}
EMAX = {"fp8_e4m3": 8, "fp4_e2m1": 2, "int8": 6}  # floor(log2(max)), OCP MX v1.0 §6.3


def np_round(v: np.ndarray, element: str) -> np.ndarray:
    """Round-to-nearest-even onto the element grid, saturating (clamp, then cast)."""
    max_value, ml_type = NP_ELEMENTS[element]
    v = np.clip(v, -max_value, max_value)
    if ml_type is None:
        return np.rint(v).astype(np.float32)  # np.rint: ties to even
    return v.astype(ml_type).astype(np.float32)


def np_scale(clip: np.float32, element: str, scale_format: str) -> np.float32:
    max_value = NP_ELEMENTS[element][0]
    if scale_format == "e8m0":
        if clip == 0:
            return np.float32(2.0**-127)
        exponent = math.frexp(float(clip))[1] - 1 - EMAX[element]
        return np.float32(2.0 ** min(max(exponent, -127), 127))
    if clip == 0:
        return np.float32(1.0)
    scale = np.float32(clip) / np.float32(max_value)
    return scale if scale > 0 else np.float32(2.0**-149)


def np_quantize(g: np.ndarray, clip: np.float32, element: str, scale_format: str) -> Any:
    scale = np_scale(clip, element, scale_format)
    return np_round(g / scale, element) * scale, scale


def np_percentile_clip(g: np.ndarray, p: float | None, block: int | None) -> np.float32:
    """The nearest-rank percentile of |g| (the rule documented in scale_methods)."""
    a = np.sort(np.abs(g))
    n = a.size
    if p is None and block is not None:  # chunk default: one value per full block saturates
        rank = n - n // block
    else:
        rank = math.ceil(n * (99.99 if p is None else p) / 100)
    value = a[min(max(rank, 1), n) - 1]
    return value if value > 0 else a[-1]  # 0: fall back to absmax


def np_mse_clip(g: np.ndarray, element: str, scale_format: str) -> np.float32:
    amax = np.abs(g).max()
    best, best_clip = math.inf, amax
    for i in range(51):  # r = 1.00, 0.99, ..., 0.50; ties keep the larger r
        clip = amax * np.float32(1 - i / 100)
        q, _ = np_quantize(g, clip, element, scale_format)
        error = float(np.sum((q.astype(np.float64) - g.astype(np.float64)) ** 2))
        if error < best:
            best, best_clip = error, clip
    return best_clip


def np_groups(shape: tuple[int, int], mode: str, chunk: int | None) -> list[Any]:
    rows, cols = shape
    if mode == "tensor":
        return [(slice(None), slice(None))]
    if mode == "channel":  # axis 0
        return [(i, slice(None)) for i in range(rows)]
    return [(i, slice(j, j + chunk)) for i in range(rows) for j in range(0, cols, chunk)]


def np_reference(
    x: np.ndarray,
    element: str,
    mode: str,
    chunk: int | None,
    scale_format: str,
    method: str,
    p: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(dequantized, scales in group order) of a 2-D float32 ``x``."""
    out = np.empty_like(x)
    scales = []
    block = min(chunk, x.shape[1]) if mode == "chunk" else None
    for index in np_groups(x.shape, mode, block):
        g = x[index].ravel()
        if method == "absmax":
            clip = np.abs(g).max()
        elif method == "percentile":
            clip = np_percentile_clip(g, p, block)
        else:
            clip = np_mse_clip(g, element, scale_format)
        q, scale = np_quantize(g, clip, element, scale_format)
        out[index] = q.reshape(x[index].shape)
        scales.append(scale)
    return out, np.array(scales, dtype=np.float32)


def heavy_tailed(rows: int = 12, cols: int = 96, seed: int = 0) -> torch.Tensor:
    """Rows of different magnitudes with heavy tails (where clipping pays)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen) * torch.exp(
        0.75 * torch.randn(rows, cols, generator=gen)
    )
    return x * torch.exp2(torch.randint(-4, 5, (rows, 1), generator=gen).float())


def spec_for(name: str, method: str, percentile: float | None = None, **kwargs: Any) -> QuantSpec:
    spec = spec_from_arguments(name, scale_method=method, **kwargs)
    if percentile is None:
        return spec
    return dataclasses.replace(
        spec, scaling=dataclasses.replace(spec.scaling, percentile=percentile)
    )


# (format, qbench.quantize arguments, element, mode, chunk, scale format); 96 = 40+40+16
CASES = [
    ("fp8_e4m3", {"mode": "tensor"}, "fp8_e4m3", "tensor", None, "fp32"),
    ("fp8_e4m3", {"mode": "channel"}, "fp8_e4m3", "channel", None, "fp32"),
    ("fp8_e4m3", {"mode": "chunk", "chunk_size": 40}, "fp8_e4m3", "chunk", 40, "fp32"),
    ("int8", {"mode": "tensor"}, "int8", "tensor", None, "fp32"),
    ("int8", {"mode": "channel"}, "int8", "channel", None, "fp32"),
    ("int8", {"mode": "chunk", "chunk_size": 32}, "int8", "chunk", 32, "fp32"),
    ("fp4_e2m1", {"mode": "tensor"}, "fp4_e2m1", "tensor", None, "fp32"),
    ("fp4_e2m1", {"mode": "channel"}, "fp4_e2m1", "channel", None, "fp32"),
    ("fp4_e2m1", {"mode": "chunk", "chunk_size": 40}, "fp4_e2m1", "chunk", 40, "fp32"),
    ("mxfp4_e2m1", {}, "fp4_e2m1", "chunk", 32, "e8m0"),
]
CASE_IDS = [f"{c[0]}-{c[3]}" for c in CASES]


@pytest.mark.parametrize("path", ["auto", "reference"])
@pytest.mark.parametrize(("method", "percentile"), [("percentile", None), ("percentile", 90.3)])
@pytest.mark.parametrize(("name", "kwargs", "element", "mode", "chunk", "scale_format"), CASES)
def test_percentile_matches_numpy(
    name, kwargs, element, mode, chunk, scale_format, method, percentile, path
) -> None:
    x = heavy_tailed()
    spec = spec_for(name, method, percentile, **kwargs)
    result = qbench.get_format(name).quantize(x, spec, return_codes=True, path=path)
    want, want_scales = np_reference(
        x.numpy(), element, mode, chunk, scale_format, method, percentile
    )
    np.testing.assert_array_equal(result.dequantized.numpy(), want)
    np.testing.assert_array_equal(result.scales.numpy().ravel(), want_scales)


@pytest.mark.parametrize("path", ["auto", "reference"])
@pytest.mark.parametrize(
    ("name", "kwargs", "element", "mode", "chunk", "scale_format"), CASES, ids=CASE_IDS
)
def test_mse_matches_numpy_and_never_loses_to_absmax(
    name, kwargs, element, mode, chunk, scale_format, path
) -> None:
    x = heavy_tailed()
    fmt = qbench.get_format(name)
    result = fmt.quantize(x, spec_for(name, "mse", **kwargs), return_codes=True, path=path)
    want, want_scales = np_reference(x.numpy(), element, mode, chunk, scale_format, "mse")
    np.testing.assert_array_equal(result.dequantized.numpy(), want)
    np.testing.assert_array_equal(result.scales.numpy().ravel(), want_scales)
    absmax = fmt.quantize(x, spec_for(name, "absmax", **kwargs), path=path)
    xd = x.numpy().astype(np.float64)
    errors = {"mse": [], "absmax": []}
    for index in np_groups(tuple(x.shape), mode, chunk):
        for method, q in (("mse", result.dequantized), ("absmax", absmax)):
            errors[method].append(float(np.sum((q.numpy()[index] - xd[index]) ** 2)))
    assert all(m <= a for m, a in zip(errors["mse"], errors["absmax"], strict=True))
    # fp32 scales move continuously, and at 4 or 8 bits clipping pays somewhere (int8's
    # rounding error is too small to trade for clipping in channels of 96 such values)
    if scale_format == "fp32" and element != "int8":
        assert sum(errors["mse"]) < sum(errors["absmax"])


def test_nearest_rank_is_numpy_inverted_cdf() -> None:
    gen = torch.Generator().manual_seed(3)
    for n in (1, 2, 7, 31, 32, 100, 199):
        x = torch.randn(5, n, generator=gen)
        for p in (50.5, 90.3, 97.7, 99.9, 100.0):
            got = scale_methods.group_percentile(x, None, (1,), p).squeeze(1)
            want = np.percentile(np.abs(x.numpy()), p, axis=1, method="inverted_cdf")
            np.testing.assert_array_equal(got.numpy(), want.astype(np.float32))


def test_percentile_ignores_the_padding_of_a_short_block() -> None:
    x = torch.arange(1.0, 41.0).reshape(1, 40)  # chunks of 32: 1...32 and a short 33...40
    spec = spec_for("fp8_e4m3", "percentile", 50.0, mode="chunk", chunk_size=32)
    result = qbench.quantize(x, spec, return_codes=True)
    # ranks over the 8 real values (ceil(8 * 0.5) = 4: 36), not over 8 values + 24 zeros
    assert result.scales[0, 1].item() == pytest.approx(36.0 / 448.0)
    assert result.scales[0, 0].item() == pytest.approx(16.0 / 448.0)


def test_percentile_clips_an_outlier() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(128, 128, generator=gen)  # 16384 values: 99.99% leaves out the top one
    x[5, 7] = 1.0e4
    absmax = qbench.quantize(x, "fp8_e4m3", return_codes=True)
    clipped = qbench.quantize(x, "fp8_e4m3", scale_method="percentile", return_codes=True)
    assert clipped.scales.item() < absmax.scales.item() / 100
    second = x.abs().flatten().sort().values[-2].item()
    assert clipped.scales.item() == pytest.approx(second / 448.0)
    assert clipped.dequantized[5, 7] == 448 * clipped.scales  # saturated (float32 product)
    rest = torch.ones_like(x, dtype=torch.bool)
    rest[5, 7] = False
    assert (clipped.dequantized - x)[rest].pow(2).sum() < (absmax.dequantized - x)[rest].pow(
        2
    ).sum()
    # per block: the chunk default saturates each block's largest magnitude
    a = qbench.quantize(x, "mxfp4_e2m1", return_codes=True)
    c = qbench.quantize(x, "mxfp4_e2m1", scale_method="percentile", return_codes=True)
    assert c.scales[5, 0].item() < a.scales[5, 0].item() / 100  # the block of x[5, 7]
    assert bool((c.scales <= a.scales).all())
    # per channel: 99.99% of a channel of 20000 values leaves out its top two
    x = torch.randn(4, 20000, generator=gen)
    x[2, 123] = -1.0e4
    a = qbench.quantize(x, "int8", mode="channel", return_codes=True)
    c = qbench.quantize(x, "int8", mode="channel", scale_method="percentile", return_codes=True)
    assert c.scales[2].item() < a.scales[2].item() / 100
    assert c.dequantized[2, 123] == -127 * c.scales[2]  # saturated (float32 product)
    assert bool((c.scales <= a.scales).all())


def test_mse_ties_keep_the_larger_ratio() -> None:
    xg = torch.tensor([[3.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    amax = xg.abs().amax(dim=1, keepdim=True)
    same = scale_methods.mse_clip(xg, amax, (1,), lambda clip: torch.zeros_like(xg))
    assert torch.equal(same, amax)  # every ratio ties: r = 1
    # a "quantizer" whose error is least at r = 0.8; the zero group ties everywhere
    target = np.float32(0.8)

    def dequantize(clip: torch.Tensor) -> torch.Tensor:
        ratio = torch.where(amax > 0, clip / amax.clamp(min=1e-30), torch.ones_like(amax))
        return xg + (ratio - float(target)).abs()

    best = scale_methods.mse_clip(xg, amax, (1,), dequantize)
    assert best[0].item() == np.float32(3.0) * target
    assert best[1].item() == 0.0


# --- both twins, codes x scales, specials, the audit ----------------------------------------

QUANTIZABLE = [f.name for f in ALL_FORMATS if f.kind != "scale"]


def awkward_tensor(seed: int = 0) -> torch.Tensor:
    """Heavy tails plus specials, an all-zero row and float32 subnormals."""
    x = heavy_tailed(8, 40, seed)
    x[0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    x[1] = 0.0
    x[2] = torch.randn(40, generator=torch.Generator().manual_seed(seed)) * 2.0**-140
    return x


def product_matches(result: Any, element: Any) -> bool:
    product = element.decode(result.codes) * result.expand_scales()
    return bool(same_bits(product, result.dequantized).all())


VARIANTS = [
    {"mode": "tensor"},
    {"mode": "channel", "axis": 1},
    {"mode": "chunk", "chunk_size": 16},
    {"mode": "chunk", "chunk_size": 32, "scale_format": "e8m0"},
    {"mode": "chunk", "chunk_size": 16, "scale_format": "fp8_e4m3", "second_level": "fp32"},
]


@pytest.mark.parametrize("method", ["percentile", "mse"])
@pytest.mark.parametrize("name", QUANTIZABLE)
def test_twins_agree_and_codes_reconstruct(name: str, method: str) -> None:
    x = awkward_tensor()
    fmt = qbench.get_format(name)
    element = qbench.get_format(BY_NAME[name].element)
    runs = [(kwargs, "nearest_even") for kwargs in VARIANTS] + [(VARIANTS[2], "stochastic")]
    for kwargs, rounding in runs:
        label = f"{name} {method} {kwargs} {rounding}"
        spec = spec_for(name, method, rounding=rounding, **kwargs)
        results = [
            fmt.quantize(
                x, spec, return_codes=True, generator=torch.Generator().manual_seed(7), path=path
            )
            for path in ("auto", "reference")  # "compiled" runs these methods eagerly
        ]
        plain = fmt.quantize(x, spec, generator=torch.Generator().manual_seed(7))
        for result in results:
            assert bool(same_bits(result.dequantized, results[0].dequantized).all()), label
            assert bool(same_bits(result.scales, results[0].scales).all()), label
            assert torch.equal(result.codes, results[0].codes), label
            assert product_matches(result, element), label
        assert bool(same_bits(plain, results[0].dequantized).all()), label
        check_specials(x, results[0], fmt, spec)


def check_specials(x: torch.Tensor, result: Any, fmt: Any, spec: QuantSpec) -> None:
    """NaN, inf and zero groups as under absmax: the same NaN lanes, zeros stay zeros, and
    scales legal in their scale format."""
    absmax_spec = dataclasses.replace(
        spec, scaling=dataclasses.replace(spec.scaling, scale_method="absmax")
    )
    absmax = fmt.quantize(x, absmax_spec, return_codes=True, path="reference")
    assert torch.equal(torch.isnan(result.dequantized), torch.isnan(absmax.dequantized))
    # the all-zero row: zeros (or NaN where a group holding a NaN spans it, as under absmax)
    assert bool(same_bits(result.dequantized[1], absmax.dequantized[1]).all())
    assert bool(torch.isfinite(result.scales[torch.isfinite(absmax.scales)]).all())
    for part, (values, scale_format) in result.scale_parts.items():
        finite = values[torch.isfinite(values)]
        if scale_format != "fp32":
            legal = qbench.get_format(scale_format).is_representable(finite)
            assert bool(legal.all()), (part, scale_format)


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_all_zero_groups_give_zeros(method: str) -> None:
    x = torch.zeros(3, 48)
    x[0, 0] = 1.0  # one group with a value, the others zeros
    for name in QUANTIZABLE:
        out = qbench.quantize(x, name, mode="chunk", chunk_size=32, scale_method=method)
        assert torch.equal(out[:, 32:], x[:, 32:]) and torch.equal(out[1:], x[1:]), name


def test_a_zero_percentile_falls_back_to_absmax() -> None:
    # sparse groups (ReLU outputs): the percentile is 0, and no scale maps 0 onto max
    x = torch.zeros(2, 64)
    x[0, 5] = 3.0  # a block of 32 with one value: its second largest is 0
    x[1, :10] = torch.arange(1.0, 11.0)  # the median of the channel is 0
    for spec, group in (
        (spec_for("fp8_e4m3", "percentile", mode="chunk", chunk_size=32), (0, 0)),
        (spec_for("mxfp4_e2m1", "percentile"), (0, 0)),
        (spec_for("fp8_e4m3", "percentile", 50.0, mode="channel"), 1),
    ):
        got = qbench.quantize(x, spec, return_codes=True)
        absmax = dataclasses.replace(
            spec, scaling=dataclasses.replace(spec.scaling, scale_method="absmax")
        )
        want = qbench.quantize(x, absmax, return_codes=True)
        assert got.scales[group] == want.scales[group], spec
        assert torch.equal(got.dequantized[0, :32], want.dequantized[0, :32])


class Log3(GridFormat):
    """A 3-bit logarithmic grid {0, ±0.25, ±1, ±4} (the generic path: its own round)."""

    name = "test_scale_methods_log3"
    bits = 3

    def values(self) -> torch.Tensor:
        return torch.tensor([-4.0, -1.0, -0.25, 0.0, 0.25, 1.0, 4.0])

    def round(self, x, rounding="nearest_even", overflow="saturate", generator=None):
        table = self.values().to(torch.float64)
        nearest = table[(x.to(torch.float64).unsqueeze(-1) - table).abs().argmin(dim=-1)]
        return torch.where(torch.isnan(x), x, nearest.to(x.dtype))


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_a_format_that_rounds_itself(method: str) -> None:
    fmt = Log3()
    x = awkward_tensor()
    for kwargs in VARIANTS:
        spec = QuantSpec(fmt.name, Scaling(**kwargs, scale_method=method))
        results = [fmt.quantize(x, spec, return_codes=True, path=p) for p in ("auto", "reference")]
        assert bool(same_bits(results[0].dequantized, results[1].dequantized).all())
        assert product_matches(results[0], fmt)
    g = heavy_tailed(4, 64)
    spec = QuantSpec(fmt.name, Scaling(mode="channel", scale_method=method))
    absmax = QuantSpec(fmt.name, Scaling(mode="channel"))
    errors = [(fmt.quantize(g, s) - g).pow(2).sum(dim=1) for s in (spec, absmax)]
    if method == "mse":
        assert bool((errors[0] <= errors[1]).all())


def test_the_audit_passes() -> None:
    metric_module = pytest.importorskip("qbench_eval.compliance.metric")
    metric = metric_module.ComplianceMetric(None)
    x = heavy_tailed()
    for name in ("mxfp4_e2m1", "nvfp4", "mxint8", "int8", "fp8_e4m3", "fp4_e2m1"):
        for method in ("percentile", "mse"):
            kwargs = {} if BY_NAME[name].default_scaling else {"mode": "channel"}
            result = qbench.quantize(x, name, scale_method=method, return_codes=True, **kwargs)
            metric.on_tensor(f"{name}.{method}", "weight", result)
    metric.settle()
    verdict = metric.result()
    assert verdict["roles"]["weight"]["status"] == "PASS", verdict["failures"]
    assert verdict["scales"]["status"] == "PASS" and verdict["scales"]["checked"] > 0


def test_other_dtypes_and_shapes() -> None:
    x = heavy_tailed(6, 40).to(torch.bfloat16)
    for method in ("percentile", "mse"):
        out = qbench.quantize(x, "fp8_e4m3", mode="chunk", chunk_size=16, scale_method=method)
        assert out.dtype == torch.bfloat16 and out.shape == x.shape
        for shape in ((), (5,), (0, 3)):
            y = torch.randn(shape)
            out = qbench.quantize(y, "int8", scale_method=method)
            assert out.shape == y.shape
        one_per_group = qbench.quantize(torch.randn(7), "int8", mode="channel", scale_method=method)
        assert one_per_group.shape == (7,)


def test_percentile_option_and_spec_equality() -> None:
    assert Scaling() == Scaling(percentile=None)
    assert hash(Scaling()) == hash(Scaling(percentile=None))
    assert Scaling().replace(percentile=None) == Scaling()
    x = heavy_tailed()
    low = qbench.quantize(x, spec_for("int8", "percentile", 50.0, mode="channel"))
    default = qbench.quantize(x, "int8", mode="channel", scale_method="percentile")
    assert not torch.equal(low, default)
    for bad in (0, -1.0, 100.5, float("nan"), "99", True):
        with pytest.raises(qbench.QBenchError, match="percentile"):
            qbench.quantize(x, spec_for("int8", "percentile", bad))
    with pytest.raises(qbench.QBenchError, match="scale_method"):
        qbench.quantize(x, "int8", scale_method="minmax")


def test_prepare_accepts_the_methods() -> None:
    pytest.importorskip("qbench_ops")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    x = torch.randn(4, 64)
    outputs = {}
    for method in ("absmax", "percentile", "mse"):
        config = {"format": "int4", "mode": "channel", "scale_method": method}
        prepared = qbench.prepare(model, config)
        with torch.no_grad():
            outputs[method] = prepared(x)
    assert not torch.equal(outputs["mse"], outputs["absmax"])
