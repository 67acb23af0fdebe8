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


def test_large_tensors_are_rounded_in_slices(monkeypatch):
    """The eager path calls the element rounding once per slice (so no temporary is the
    tensor's size), and not at all on the whole tensor."""
    calls: list[int] = []
    original = quantizer.round_elements

    def counting(xg, *args):
        calls.append(xg.shape[0])
        return original(xg, *args)

    monkeypatch.setattr(quantizer, "round_elements", counting)
    monkeypatch.setattr(quantizer, "EAGER_SLICE", 700)
    spec = spec_from_arguments("fp8_e4m3", mode="chunk", chunk_size=32)
    _quantize(qbench.get_format("fp8_e4m3"), _activation(0), spec, codes=True)
    assert calls == [1] * 7
