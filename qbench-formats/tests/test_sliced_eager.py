"""The eager fast twin rounds large tensors a slice of rows at a time (bounded memory,
``quantizer.sliced_kernel``): its bits, codes and scales are those of the whole tensor at
once, for every format, mode, overflow and rounding, with specials in different slices."""

from __future__ import annotations

import pytest
import qbench
import torch
from formats_probes import same_bits
from qbench.spec import spec_from_arguments
from qbench_formats import quantizer
from qbench_formats.catalog import ALL_FORMATS

QUANTIZABLE = [f.name for f in ALL_FORMATS if f.kind != "scale"]

VARIANTS = [
    {"mode": "tensor"},
    {"mode": "channel", "axis": 0},
    {"mode": "channel", "axis": 1},
    {"mode": "chunk", "chunk_size": 20},  # a short padded last block
    {"mode": "chunk", "chunk_size": 32, "scale_format": "e8m0"},
    {"mode": "chunk", "chunk_size": 16, "scale_format": "fp8_e4m3", "second_level": "fp32"},
]


def _activation(seed: int) -> torch.Tensor:
    """An NCHW activation stored channels-last, values over many magnitudes, with NaN, ±inf,
    zeros and subnormals in different rows (slices)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 3, 5, 44, generator=gen) * torch.exp2(
        torch.randint(-20, 20, (7, 3, 1, 1), generator=gen)
    )
    x[1, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x[3, 2, 4, 5] = 3.0e38
    x[4] = 0.0
    x[5, 1] = torch.randn(5, 44, generator=gen) * 2.0**-140
    return x.contiguous(memory_format=torch.channels_last)


def _quantize(fmt, x, spec, codes: bool):
    return fmt.quantize(
        x, spec, return_codes=codes, generator=torch.Generator().manual_seed(3), path="eager"
    )


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_sliced_eager_rounding_gives_the_whole_tensors_bits(name, monkeypatch):
    fmt = qbench.get_format(name)
    x = _activation(len(name))
    for rounding in ("nearest_even", "stochastic"):
        for overflow in ("saturate", "format"):
            for kwargs in VARIANTS:
                spec = spec_from_arguments(name, rounding=rounding, overflow=overflow, **kwargs)
                for codes in (False, True):
                    monkeypatch.setattr(quantizer, "EAGER_SLICE", 1 << 30)
                    whole = _quantize(fmt, x, spec, codes)
                    monkeypatch.setattr(quantizer, "EAGER_SLICE", 700)  # 1 row of 660 each
                    sliced = _quantize(fmt, x, spec, codes)
                    context = f"{name} {rounding} {overflow} {kwargs} codes={codes}"
                    if not codes:
                        assert bool(same_bits(whole, sliced).all()), context
                        assert sliced.stride() == whole.stride(), context
                        continue
                    assert bool(same_bits(whole.dequantized, sliced.dequantized).all()), context
                    assert torch.equal(whole.codes, sliced.codes), context
                    assert bool(same_bits(whole.scales, sliced.scales).all()), context
                    for level, (part, _) in whole.scale_parts.items():
                        assert bool(same_bits(part, sliced.scale_parts[level][0]).all()), context


@pytest.mark.parametrize(
    ("name", "rounder"), [("fp4_e2m1", "round_elements"), ("fp8_e4m3", "_cast_slice")]
)
def test_large_tensors_are_rounded_in_slices(monkeypatch, name, rounder):
    """The eager path calls the element rounding once per slice (so no temporary is the
    tensor's size), and not at all on the whole tensor: the bit arithmetic, or for an fp8
    format with saturation the float8 cast."""
    calls: list[int] = []
    original = getattr(quantizer, rounder)

    def counting(xg, *args):
        calls.append(xg.shape[0])
        return original(xg, *args)

    monkeypatch.setattr(quantizer, rounder, counting)
    monkeypatch.setattr(quantizer, "EAGER_SLICE", 700)
    spec = spec_from_arguments(name, mode="chunk", chunk_size=22)  # 44 = 2 blocks
    _quantize(qbench.get_format(name), _activation(0), spec, codes=True)
    assert calls == [1] * 7


PADDED = [
    {"mode": "chunk", "chunk_size": 20},  # 44 = 2 x 20 + 4
    {"mode": "chunk", "chunk_size": 32, "scale_format": "e8m0"},
    {"mode": "chunk", "chunk_size": 2, "axis": 1},  # 3 channels = 2 + 1
]


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_a_short_last_block_is_quantized_without_padding(name, monkeypatch):
    """A chunked axis whose last block is short runs as two views (the full blocks, the
    short one) written into outputs laid out like x: the same bits, codes and scales as
    the padded layout, a channels-last result, and no padded copy of x."""
    fmt = qbench.get_format(name)
    x = _activation(len(name) + 1)
    for rounding in ("nearest_even", "stochastic"):
        for kwargs in PADDED:
            spec = spec_from_arguments(name, rounding=rounding, **kwargs)
            for codes in (False, True):
                context = f"{name} {rounding} {kwargs} codes={codes}"
                monkeypatch.setattr(quantizer, "_unpadded", lambda *a: False)
                padded = _quantize(fmt, x, spec, codes)
                monkeypatch.undo()
                calls = []
                original = quantizer.unpadded_kernel

                def counting(*args, original=original, calls=calls):
                    calls.append(args[3:])
                    return original(*args)

                monkeypatch.setattr(quantizer, "unpadded_kernel", counting)
                unpadded = _quantize(fmt, x, spec, codes)
                monkeypatch.undo()
                # a format that rounds itself keeps its own path; a second-level scale is
                # the whole (padded) tensor's
                own_round = quantizer.uses_own_round(getattr(fmt, "element_format", fmt))
                second_level = quantizer._scale_plan(spec)[2]
                assert len(calls) == (0 if own_round or second_level else 1), context
                got, want = (
                    (unpadded, padded) if not codes else (unpadded.dequantized, padded.dequantized)
                )
                assert bool(same_bits(got, want).all()), context
                assert got.is_contiguous(memory_format=torch.channels_last), context
                if codes:
                    assert torch.equal(unpadded.codes, padded.codes), context
                    assert bool(same_bits(unpadded.scales, padded.scales).all()), context
                    for level, (part, _) in padded.scale_parts.items():
                        other = unpadded.scale_parts[level][0]
                        assert bool(same_bits(part, other).all()), context
