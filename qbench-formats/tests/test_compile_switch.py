"""qbench.kernels is the one home of compiled-vs-eager: its settings, read at every call,
reach every kernel QBench compiles, the formats' quantize pieces included."""

from __future__ import annotations

import pytest
import qbench
import torch
from formats_probes import same_bits
from qbench import kernels
from qbench.spec import spec_from_arguments
from qbench_formats import quantizer

#: One plan compiled whole, one split into amax / scales / elements (NVFP4's second level).
CASES = [
    ("fp8_e4m3", {"mode": "chunk", "chunk_size": 32}),
    ("nvfp4", {}),
]


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions handed to torch.compile (each then runs eagerly: which
    kernels are compiled is what is checked, not inductor)."""
    seen: list[str] = []

    def recording(fn, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(fn.__name__)
        return fn

    monkeypatch.setattr(kernels, "_COMPILED", {})
    monkeypatch.setattr(kernels, "_FAILED", set())
    monkeypatch.setattr(torch, "compile", recording)
    return seen


def _run_every_kernel(path: str) -> None:
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    for name, kwargs in CASES:
        fmt = qbench.get_format(name)
        spec = spec_from_arguments(name, **kwargs)
        got = fmt.quantize(x, spec, return_codes=True, path=path)
        want = fmt.quantize(x, spec, return_codes=True, path="reference")
        assert bool(same_bits(got.dequantized, want.dequantized).all()), name
        assert torch.equal(got.codes, want.codes), name
    fp8 = qbench.get_format("fp8_e4m3")
    quantizer.encode_codes(fp8, fp8.round(x), path=path)


def test_compile_enabled_off_in_qbench_kernels_keeps_every_kernel_eager(
    monkeypatch: pytest.MonkeyPatch, compiles: list[str]
) -> None:
    monkeypatch.setattr(kernels, "COMPILE_ENABLED", False)
    _run_every_kernel("compiled")
    assert compiles == []
    monkeypatch.setattr(kernels, "COMPILE_ENABLED", True)  # the same calls, switched on
    _run_every_kernel("compiled")
    assert set(compiles) == {
        "quantize_kernel",
        "abs_amax_kernel",  # a finite tensor: the finite-only amax_kernel is not needed
        "scales_kernel",
        "elements_kernel",
        "fused_kernel",  # the stand-alone code encoder
    }


def test_compile_min_numel_in_qbench_kernels_decides_for_the_quantizer(
    monkeypatch: pytest.MonkeyPatch, compiles: list[str]
) -> None:
    monkeypatch.setattr(kernels, "COMPILE_ENABLED", True)
    monkeypatch.setattr(kernels, "COMPILE_MIN_NUMEL", 1 << 40)
    _run_every_kernel("auto")
    assert compiles == []
    monkeypatch.setattr(kernels, "COMPILE_MIN_NUMEL", 0)
    _run_every_kernel("auto")
    assert "quantize_kernel" in compiles and "elements_kernel" in compiles


def test_a_failing_quantize_piece_falls_back_in_qbench_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compile failure is qbench.kernels' to handle: one warning, the eager twin's bits,
    and the failure recorded there (no second cache in the quantizer)."""

    def broken(fn, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(kernels, "COMPILE_ENABLED", True)
    monkeypatch.setattr(kernels, "_COMPILED", {})
    monkeypatch.setattr(kernels, "_FAILED", set())
    monkeypatch.setattr(torch, "compile", broken)
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    spec = spec_from_arguments("fp8_e4m3", mode="chunk", chunk_size=32)
    fmt = qbench.get_format("fp8_e4m3")
    with pytest.warns(RuntimeWarning, match="torch.compile of fused_kernel failed"):
        got = fmt.quantize(x, spec, path="compiled")
    assert bool(same_bits(got, fmt.quantize(x, spec, path="eager")).all())
    assert [key[0] for key in kernels._FAILED] == [quantizer.fused_kernel]
    assert not any(name.startswith("_COMPILE") for name in vars(quantizer))
