"""The quantizer on CUDA: the same bits as on CPU, and as torch's own CUDA float8 casts.

Probes are every code point, every tie and its float32 neighbours, values beyond max, ±inf,
NaN, ±0, float32 subnormals and 10^6 random bit patterns (formats_probes). The CPU results
they are compared with are themselves checked against ml_dtypes (test_formats_golden).
Both CUDA paths run: the eager twin (torch's CUDA kernels) and the compiled kernel (Triton,
whose code generation, fused multiply-adds, division and denormal handling are its own).
"""

from __future__ import annotations

import pytest
import qbench
import torch
from formats_probes import mismatches, probes, same_bits
from qbench import kernels
from qbench.spec import spec_from_arguments

pytestmark = pytest.mark.gpu  # conftest skips these without CUDA

ELEMENTS = ["fp8_e4m3", "fp8_e5m2", "fp8_e4m3fnuz", "fp6_e2m3", "fp4_e2m1", "fp4_e3m0", "int8"]
TORCH_FP8 = [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)]
_PROBES: dict[str, torch.Tensor] = {}
_REFERENCE: dict[str, object] = {}


def _probes(name: str) -> torch.Tensor:
    if name not in _PROBES:
        fmt = qbench.get_format(name)
        _PROBES[name] = probes(fmt.values().numpy(), fmt.max_value)
    return _PROBES[name]


@pytest.mark.parametrize("overflow", ["saturate", "format"])
@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away", "toward_zero"])
@pytest.mark.parametrize("name", ELEMENTS)
def test_round_on_cuda_gives_the_cpu_bits(name: str, rounding: str, overflow: str) -> None:
    fmt = qbench.get_format(name)
    x = _probes(name)
    want = fmt.round(x, rounding=rounding, overflow=overflow)
    got = fmt.round(x.cuda(), rounding=rounding, overflow=overflow).cpu()
    assert bool(same_bits(got, want).all()), mismatches(x, got, want)


@pytest.mark.parametrize(("name", "dtype"), TORCH_FP8)
def test_round_on_cuda_matches_torch_cuda_float8_cast(name: str, dtype: torch.dtype) -> None:
    """An independent implementation on the same device: torch's CUDA cast (inputs clamped
    first, since its overflow behaviour differs across versions; that is saturation)."""
    fmt = qbench.get_format(name)
    x = _probes(name)
    x = x[~torch.isnan(x)].cuda()
    want = torch.clamp(x, -fmt.max_value, fmt.max_value).to(dtype).to(torch.float32)
    got = fmt.round(x)
    assert bool(same_bits(got, want).all()), mismatches(x.cpu(), got.cpu(), want.cpu())


def _scalings(name: str) -> list[dict]:
    if qbench.get_format(name).element != name:  # a preset (MX, NVFP4): its own scaling
        return [{}]
    return [
        {"mode": "tensor"},
        {"mode": "channel", "axis": 0},
        {"mode": "chunk", "chunk_size": 32},
        {"mode": "chunk", "chunk_size": 32, "scale_format": "e8m0"},
    ]


CASES = [
    (name, rounding, scaling)
    for name in [*ELEMENTS, "mxfp4_e2m1", "mxfp8_e4m3", "nvfp4"]
    for scaling in _scalings(name)
    for rounding in ["nearest_even"]
] + [
    (n, r, {"mode": "chunk", "chunk_size": 32})
    for n in ("fp8_e4m3", "fp4_e2m1", "int8")
    for r in ("nearest_away", "toward_zero")
]
# Each compiled case is a Triton compile: every element format and rounding in chunks, the
# other scalings on fp8_e4m3, and the presets.
COMPILED = [
    case
    for case in CASES
    if case[2].get("mode", "chunk") == "chunk"
    and "scale_format" not in case[2]
    or case[0] in ("fp8_e4m3", "mxfp4_e2m1", "mxfp8_e4m3", "nvfp4")
]
PATHS = [(*case, "eager") for case in CASES] + [(*case, "compiled") for case in COMPILED]


def _id(case: tuple) -> str:
    name, rounding, scaling, path = case
    return "-".join([name, rounding, *(str(v) for v in scaling.values()), path])


@pytest.mark.parametrize(("name", "rounding", "scaling", "path"), PATHS, ids=map(_id, PATHS))
def test_quantize_on_cuda_gives_the_cpu_reference_bits(
    name: str, rounding: str, scaling: dict, path: str
) -> None:
    """Dequantized values, codes and scales on CUDA equal the CPU reference twin's, on rows
    of 64 probes in their sorted order (so each chunk holds values of one magnitude)."""
    element = qbench.get_format(name).element
    x = _probes(element)
    x = x[: x.numel() // 64 * 64].reshape(-1, 64)
    spec = spec_from_arguments(name, rounding=rounding, **scaling)
    fmt = qbench.get_format(name)
    key = repr((name, rounding, scaling))
    if key not in _REFERENCE:  # the float64 twin is slow: once for both CUDA paths
        _REFERENCE[key] = fmt.quantize(x, spec, return_codes=True, path="reference")
    want = _REFERENCE[key]
    got = fmt.quantize(x.cuda(), spec, return_codes=True, path=path)
    if path == "compiled":
        assert not kernels._FAILED, "the compiled kernel fell back to eager"
    context = f"{name} {rounding} {scaling} {path}"
    flat = x.reshape(-1)
    dequantized = got.dequantized.cpu().reshape(-1)
    assert bool(same_bits(dequantized, want.dequantized.reshape(-1)).all()), (
        context + ": " + mismatches(flat, dequantized, want.dequantized.reshape(-1))
    )
    assert torch.equal(got.codes.cpu(), want.codes), context
    assert bool(same_bits(got.scales.cpu(), want.scales).all()), context
