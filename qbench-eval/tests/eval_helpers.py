"""Test helpers (a module of its own so it never clashes with another conftest): a tiny symmetric-integer format written here from first principles (so the
metrics are tested against an implementation independent of qbench-formats), a variant
whose rounding skips some values (a planted violation), and small synthetic models."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import qbench
import qbench.kernels
import qbench.plugins
import torch
from qbench.types import QuantResult, QuantSpec, Scaling


class TinyIntFormat:
    """Symmetric integer format with codes -qmax..qmax (codes are the integers themselves)."""

    default_scaling = None
    min_normal = 1.0
    min_subnormal = 1.0

    def __init__(self, name: str, bits: int, skip_below: float | None = None):
        self.name = name
        self.element = name
        self.bits = bits
        self.qmax = 2 ** (bits - 1) - 1
        self.max_value = float(self.qmax)
        # The planted bug: |x| below this is passed through unrounded.
        self.skip_below = skip_below

    def values(self) -> torch.Tensor:
        return torch.arange(-self.qmax, self.qmax + 1, dtype=torch.float32)

    def round(
        self,
        x: torch.Tensor,
        rounding: str = "nearest_even",
        overflow: str = "saturate",
        generator: Any = None,
    ) -> torch.Tensor:
        rounded = torch.round(x).clamp(-self.qmax, self.qmax)  # torch.round: ties to even
        if self.skip_below is not None:
            rounded = torch.where(x.abs() < self.skip_below, x, rounded)
        return rounded

    def is_representable(self, x: torch.Tensor) -> torch.Tensor:
        return (x == torch.round(x)) & (x.abs() <= self.qmax)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.round(x).to(torch.int32)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(torch.float32)

    def quantize(
        self, x: torch.Tensor, spec: QuantSpec, *, return_codes: bool = False, generator: Any = None
    ) -> Any:
        scaling = spec.scaling
        if scaling.mode == "chunk":
            size = scaling.chunk_size
            blocks = x.reshape(-1, size)
            amax = blocks.abs().amax(dim=1, keepdim=True)
            if scaling.scale_format == "e8m0":
                # smallest power of two with amax / scale <= qmax
                exponent = torch.ceil(torch.log2(torch.clamp(amax, min=1e-30) / self.qmax))
                scales = torch.where(amax > 0, torch.exp2(exponent), torch.ones_like(amax))
            else:
                scales = torch.where(amax > 0, amax / self.qmax, torch.ones_like(amax))
            shape = x.shape

            def expand(s: torch.Tensor) -> torch.Tensor:
                return s.expand(-1, size).reshape(shape)

            scaled = blocks / scales
            parts = {"block": (scales, scaling.scale_format)}
        else:
            amax = x.abs().amax()
            scales = amax / self.qmax if amax > 0 else torch.ones(())
            expand = None
            scaled = x / scales
            parts = {"tensor": (scales.reshape(()), "fp32")}
        q = self.round(scaled).reshape(x.shape)
        codes = q.to(torch.int32)  # truncation: skipped (unrounded) values lose their fraction
        full_scales = expand(scales) if expand is not None else scales
        dequantized = q * full_scales
        if not return_codes:
            return dequantized
        return QuantResult(dequantized, codes, scales, spec, scale_parts=parts, expand=expand)


class FormatsForTests:
    @staticmethod
    @qbench.hookimpl
    def qbench_register_formats(register: Any) -> None:
        register(TinyIntFormat("test_int4", 4))
        register(TinyIntFormat("test_int8", 8))
        register(TinyIntFormat("test_skip_int4", 4, skip_below=1.5))


def spec(
    format_name: str,
    mode: str = "tensor",
    chunk_size: int | None = None,
    scale_format: str = "fp32",
) -> QuantSpec:
    return QuantSpec(
        format=format_name,
        scaling=Scaling(mode=mode, chunk_size=chunk_size, scale_format=scale_format),
    )


def quantize(x: torch.Tensor, s: QuantSpec) -> QuantResult:
    return qbench.get_format(s.format).quantize(x, s, return_codes=True)


@contextlib.contextmanager
def kernels_on(path: str) -> Iterator[None]:
    """qbench.kernels' fused kernels all eager (``"eager"``, as on small tensors) or all
    compiled (``"compiled"``, as on large ones) for the block, whatever the tensor size."""
    saved = qbench.kernels.COMPILE_MIN_NUMEL
    qbench.kernels.COMPILE_MIN_NUMEL = 0 if path == "compiled" else 1 << 62
    try:
        yield
    finally:
        qbench.kernels.COMPILE_MIN_NUMEL = saved
