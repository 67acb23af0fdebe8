"""QBench: what a low-precision number format does to a PyTorch model.

Public API::

    fmt = qbench.get_format("fp8_e4m3")
    y = qbench.quantize(x, "fp8_e4m3", mode="chunk", chunk_size=128)
    r = qbench.quantize(x, "mxfp4_e2m1", return_codes=True)   # r.dequantized, r.codes, r.scales
    model_q = qbench.prepare(model, {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 128})
    result = qbench.run("config.yaml")

Importing ``qbench`` does not import torch; the functions that need it import it lazily.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    ConfigError,
    DuplicateComponentError,
    PluginError,
    QBenchError,
    UnknownComponentError,
)
from .hookspecs import Register, hookimpl, hookspec
from .types import LayerSpecs, QuantResult, QuantSpec, Scaling
from .version import __version__ as __version__

__all__ = [
    "ConfigError",
    "DuplicateComponentError",
    "LayerSpecs",
    "PluginError",
    "QBenchError",
    "QuantResult",
    "QuantSpec",
    "Register",
    "Scaling",
    "UnknownComponentError",
    "get_format",
    "hookimpl",
    "hookspec",
    "list_formats",
    "prepare",
    "quantize",
    "run",
]


def get_format(name: str) -> Any:
    """The registered format (or preset) called ``name``; an error lists what is installed."""
    from .plugins import get

    return get("format", name)


def list_formats() -> list[str]:
    from .plugins import registry

    return registry("format").names()


def quantize(
    x: Any,
    format: str | QuantSpec,
    *,
    mode: str | None = None,
    chunk_size: int | None = None,
    axis: int | None = None,
    scale_format: str | None = None,
    scale_method: str | None = None,
    percentile: float | None = None,
    rounding: str | None = None,
    overflow: str | None = None,
    return_codes: bool = False,
    generator: Any = None,
) -> Any:
    """Fake-quantize ``x`` (same shape and dtype). A preset name brings its scaling; explicit
    arguments override it. With ``return_codes=True`` returns a :class:`QuantResult`."""
    from .spec import spec_from_arguments

    if isinstance(format, QuantSpec):
        spec = format
    else:
        spec = spec_from_arguments(
            format,
            mode=mode,
            chunk_size=chunk_size,
            axis=axis,
            scale_format=scale_format,
            scale_method=scale_method,
            percentile=percentile,
            rounding=rounding,
            overflow=overflow,
        )
    fmt = get_format(spec.format)
    return fmt.quantize(x, spec, return_codes=return_codes, generator=generator)


def prepare(model: Any, spec: Any) -> Any:
    """The quantized twin of ``model`` (a deep copy; the original is untouched).

    ``spec`` is a config's ``quantization`` mapping, or a :class:`QuantSpec` applied to every
    role. Modules are swapped through the op registry; weights are quantized once.
    """
    from .preparation import prepare as _prepare

    return _prepare(model, spec)


def run(config: Any, **overrides: Any) -> Any:
    """Do what ``qbench run CONFIG`` does and return the run's result object."""
    from .runner import run as _run

    return _run(config, **overrides)
