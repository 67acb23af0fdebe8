"""Block-scaled presets against independent numpy/ml_dtypes implementations of the rules.

MX: OCP Microscaling Formats v1.0 §6.3 — X = 2^(floor(log2(amax)) - emax_elem) clamped to
the E8M0 range, P_i = element(V_i / X) with saturation. NVFP4: NVIDIA's recipe as torchao
implements it (fp32 tensor scale amax / (448 * 6), E4M3 block scales clamped to
[2^-6, 448], elements clamped to ±6).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import qbench
import torch
from formats_probes import same_bits

MX = {
    "mxfp8_e4m3": (ml_dtypes.float8_e4m3fn, 8),
    "mxfp8_e5m2": (ml_dtypes.float8_e5m2, 15),
    "mxfp6_e3m2": (ml_dtypes.float6_e3m2fn, 4),
    "mxfp6_e2m3": (ml_dtypes.float6_e2m3fn, 2),
    "mxfp4_e2m1": (ml_dtypes.float4_e2m1fn, 2),
    "mxint8": (None, 0),
}


def mx_reference(blocks: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(dequantized, scale per block) for float32 blocks of shape [n, 32], per OCP MX v1.0."""
    ml_type, emax = MX[name]
    elem_max = 127 / 64 if ml_type is None else float(ml_dtypes.finfo(ml_type).max)
    out = np.empty_like(blocks)
    scales = np.empty(blocks.shape[0], dtype=np.float32)
    for i, block in enumerate(blocks):
        amax = np.max(np.abs(block))
        if not np.isfinite(amax):
            out[i], scales[i] = np.nan, np.nan  # E8M0 NaN scale: the whole block is NaN
            continue
        if amax == 0:
            shared = -127
        else:
            shared = int(np.frexp(np.float64(amax))[1]) - 1 - emax  # exponent from the bits
        shared = min(max(shared, -127), 127)
        scale = np.ldexp(np.float32(1.0), shared).astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            p = np.clip(block / scale, -elem_max, elem_max)
            if ml_type is None:
                # two's complement has no -0: +0.0 turns -0 into +0
                p = (np.clip(np.round(p * 64), -127, 127) / 64 + 0.0).astype(np.float32)
            else:
                p = p.astype(ml_type).astype(np.float32)
        out[i] = p * scale
        scales[i] = scale
    return out, scales


def edge_blocks(rng: np.random.Generator) -> np.ndarray:
    f32max = np.finfo(np.float32).max
    subnormal_bits = rng.integers(1, 2**23, size=32, dtype=np.uint32)
    just_below = np.float32(np.nextafter(np.float32(4.0), np.float32(0)))  # 4 - ulp: floor(log2)=1
    rows = [
        np.zeros(32),
        subnormal_bits.view(np.float32),
        np.full(32, 2.0**-149),
        rng.uniform(-1, 1, 32) * f32max,
        np.full(32, f32max),
        np.concatenate([[just_below], rng.uniform(-1, 1, 31)]),
        np.concatenate([[np.nan], rng.standard_normal(31)]),
        np.concatenate([[np.inf], rng.standard_normal(31)]),
        np.concatenate([[-np.inf], rng.standard_normal(31)]),
        np.concatenate([[1000.0], rng.standard_normal(31) * 1e-6]),  # tiny elements underflow
        np.concatenate([[5.9], rng.standard_normal(31)]),  # max not on the grid
        np.concatenate([[2.0**-126], rng.uniform(-1, 1, 31) * 2.0**-130]),
        rng.standard_normal(32) * 2.0**-127,
        np.full(32, -0.0),
    ]
    return np.stack(rows).astype(np.float32)


def mx_blocks(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    random_blocks = rng.standard_normal((512, 32)) * np.exp2(rng.integers(-140, 120, (512, 1)))
    return np.concatenate([edge_blocks(rng), random_blocks.astype(np.float32)])


@pytest.mark.parametrize("path", ["reference", "eager"])
@pytest.mark.parametrize("name", sorted(MX))
def test_mx_matches_ocp_rule(name: str, path: str) -> None:
    blocks = mx_blocks()
    want, want_scales = mx_reference(blocks, name)
    fmt = qbench.get_format(name)
    spec = qbench.QuantSpec(name, fmt.default_scaling)
    result = fmt.quantize(torch.from_numpy(blocks), spec, return_codes=True, path=path)
    got = result.dequantized
    assert bool(same_bits(got, torch.from_numpy(want)).all())
    assert bool(same_bits(result.scales.squeeze(-1), torch.from_numpy(want_scales)).all())
    element = qbench.get_format(fmt.element)
    product = element.decode(result.codes) * result.expand_scales()
    assert bool(same_bits(product, got).all())
    block_scales, scale_format = result.scale_parts["block"]
    assert scale_format == "e8m0"
    legal = qbench.get_format("e8m0").is_representable(block_scales)
    assert bool(legal.all())
    nan_blocks = ~np.isfinite(np.max(np.abs(blocks), axis=1))
    assert bool(torch.isnan(got[torch.from_numpy(nan_blocks)]).all())  # NaN/inf -> NaN block
    assert torch.equal(got[0], torch.zeros(32))  # all zeros -> zeros


def test_mx_trap_amax_just_below_power_of_two() -> None:
    """log2(4 - ulp) rounds to 2 in float32; the exponent must come from the bits (1)."""
    x = torch.tensor([[4.0 - 2.0**-21] + [0.0] * 31])
    result = qbench.quantize(x, "mxfp4_e2m1", return_codes=True)
    assert result.scales.item() == 0.5  # 2^(1 - emax 2); log2 in float32 would give 1.0
    # 7.99... saturates to 6 on E2M1, so 3.0; the float32-log2 trap would return 4.0.
    assert result.dequantized[0, 0].item() == 3.0


def test_mx_short_last_block_and_axis() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 70)).astype(np.float32)
    x[:, 64:] *= 1e-3  # the 6-element tail block must be scaled on its own
    got = qbench.quantize(torch.from_numpy(x), "mxfp8_e4m3")
    for row in range(5):
        for start in range(0, 70, 32):
            block = x[row, start : start + 32]
            padded = np.zeros((1, 32), np.float32)
            padded[0, : block.size] = block
            want, _ = mx_reference(padded, "mxfp8_e4m3")
            segment = got[row, start : start + 32]
            assert torch.equal(segment, torch.from_numpy(want[0, : block.size]))
    along0 = qbench.quantize(torch.from_numpy(x.T.copy()), "mxfp8_e4m3", axis=0)
    assert torch.equal(along0.T, got)


def nvfp4_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.float32]:
    f4 = ml_dtypes.float4_e2m1fn
    finite = np.where(np.isfinite(x), np.abs(x), 0).astype(np.float32)
    tensor_amax = np.float32(finite.max())
    tensor_scale = np.float32(tensor_amax / np.float32(448.0 * 6.0))
    if tensor_scale == 0:
        tensor_scale = np.float32(1.0)
    blocks = x.reshape(-1, 16)
    block_amax = finite.reshape(-1, 16).max(axis=1)
    block = (block_amax / np.float32(6.0)).astype(np.float32) / tensor_scale
    block = np.clip(block, np.float32(2.0**-6), np.float32(448.0)).astype(np.float32)
    block = block.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    total = (tensor_scale * block).astype(np.float32)
    with np.errstate(invalid="ignore"):
        p = np.clip(blocks / total[:, None], -6, 6).astype(f4).astype(np.float32)
    p = np.where(np.isnan(blocks), np.nan, p)
    return (p * total[:, None]).reshape(x.shape), block, tensor_scale


@pytest.mark.parametrize("path", ["reference", "eager"])
def test_nvfp4_matches_torchao_recipe(path: str) -> None:
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((64, 64)) * np.exp2(rng.integers(-20, 20, (64, 1)))).astype(np.float32)
    x[0, :16] = 0.0
    x[1, 3] = np.nan
    x[2, 5] = np.inf
    want, want_block, want_tensor = nvfp4_reference(x)
    fmt = qbench.get_format("nvfp4")
    result = fmt.quantize(
        torch.from_numpy(x),
        qbench.QuantSpec("nvfp4", fmt.default_scaling),
        return_codes=True,
        path=path,
    )
    assert bool(same_bits(result.dequantized, torch.from_numpy(want)).all())
    block, block_format = result.scale_parts["block"]
    tensor, tensor_format = result.scale_parts["tensor"]
    assert (block_format, tensor_format) == ("fp8_e4m3", "fp32")
    assert torch.equal(block.reshape(-1), torch.from_numpy(want_block))
    assert tensor.item() == want_tensor
    assert bool(qbench.get_format("fp8_e4m3").is_representable(block).all())
    product = qbench.get_format("fp4_e2m1").decode(result.codes) * result.expand_scales()
    assert bool(same_bits(product, result.dequantized).all())
