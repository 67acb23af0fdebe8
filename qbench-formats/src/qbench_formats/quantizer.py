"""Scaled fake quantization: groups (tensor / channel / chunk), scales, element rounding.

One algorithm, three ways to run it, all giving the same bits:

* ``reference``: float64 element rounding (:mod:`.reference`), exponents from ``frexp``;
* ``eager``: the float32 bit arithmetic of :mod:`.fused`, op by op (cheap per call, used for
  small tensors such as per-layer activations);
* ``compiled``: the same function through ``torch.compile(dynamic=True)``: one fused loop
  per kind of format and scaling, not one compile per shape or per format (the format's
  numbers are read at run time, :func:`kernel_plan`; with a second-level scale, three
  kernels: amax, scales, elements; see :func:`split_scales`).

Scales (``Scaling.scale_format``):

* ``fp32``: s = amax / max_value over the *finite* values of the group (an inf saturates to
  ±max, a NaN stays NaN, the rest of the group is unaffected).
* ``e8m0`` (OCP MX v1.0 §6.3): s = 2^(floor(log2(amax)) - emax_element), the exponent read
  from the bits and clamped to the E8M0 range [-127, 127]. A NaN or ±inf in the block makes
  the shared scale NaN (E8M0's NaN code 0xFF) and the whole block decodes to NaN, as the
  spec authors' microxcaling library does.
* another registered format (``fp8_e4m3`` for NVFP4): s = amax / max_element rounded to that
  format (clamped to its [min_normal, max] first), optionally divided by a ``second_level``
  fp32 per-tensor scale amax_tensor / (max_scale_format * max_element) — NVIDIA's NVFP4
  recipe as torchao implements it.

The value a scale maps onto max is the group's amax, or under ``scale_method`` percentile or
mse a clip value (:mod:`.scale_methods`, :func:`clipped_kernel`, eager only).

A group of zeros gets scale 1 (fp32), 2^-127 (e8m0) or the smallest block scale (fp8), so it
quantizes to zeros, never NaN. Non-float32 inputs are computed in float32 and cast back.

Formats that round themselves (:mod:`.generic`: any format that is not a built-in family,
or a family subclass overriding ``round``) take the same scales and their own ``round`` on
the scaled tensor, eagerly (:func:`own_round_kernel`); their codes come from their
``encode_grid``/``encode``, else the index into ``values()``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from qbench import kernels
from qbench.errors import QBenchError
from qbench.types import MODES, OVERFLOWS, ROUNDINGS, SCALE_METHODS, QuantResult, QuantSpec

from . import fused, reference, scale_methods
from .bits import floor_log2_f32, pow2_f32

# Whether a kernel runs compiled is qbench.kernels' decision, read at every call (its
# COMPILE_ENABLED and COMPILE_MIN_NUMEL, QBENCH_COMPILE and QBENCH_COMPILE_MIN_NUMEL), and
# qbench.kernels keeps the compiled kernels and falls back to the bit-identical eager twin
# where compiling fails. 2^18 elements keeps the built-in demo (largest activation
# 128x16x8x8 = 2^17) eager and every activation of a 224x224 ImageNet model at batch 16
# (>= 16x512x7x7) compiled.

#: OCP MX v1.0 §5.4: E8M0 encodes 2^-127 ... 2^127.
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127
#: Smallest positive float32 (a subnormal): the floor for fp32 scales of tiny groups.
F32_TINY = 2.0**-149
PATHS = ("auto", "compiled", "eager", "reference")


def check_rounding(rounding: str, overflow: str) -> None:
    """Refuse a rounding or overflow mode QBench does not implement (one actionable line)."""
    if rounding not in ROUNDINGS:
        raise QBenchError(
            f"rounding {rounding!r} is not supported; allowed: {', '.join(ROUNDINGS)}"
        )
    if overflow not in OVERFLOWS:
        raise QBenchError(
            f"overflow {overflow!r} is not supported; allowed: {', '.join(OVERFLOWS)}"
        )


# --- what the quantizer asks of a format ---------------------------------------------------


class QuantizeMethod:
    """``fmt.quantize(x, spec, ...)`` for every format object (element formats and presets):
    one entry point into :func:`quantize`, which reads the element grid and the scaling."""

    def quantize(
        self,
        x: torch.Tensor,
        spec: QuantSpec,
        *,
        return_codes: bool = False,
        generator: torch.Generator | None = None,
        path: str = "auto",
        narrow_codes: bool = False,
    ) -> Any:
        """Fake-quantize ``x`` with ``spec``; with ``return_codes`` a :class:`QuantResult`
        (``narrow_codes``: see :func:`quantize`)."""
        return quantize(
            self,
            x,
            spec,
            return_codes=return_codes,
            generator=generator,
            path=path,
            narrow_codes=narrow_codes,
        )


class ElementFormat(QuantizeMethod):
    """A format that is its own element (not a preset): the facts derived from its ``name``,
    ``bits`` and ``max_value``, shared by the built-in families and :class:`GridFormat`."""

    @property
    def element(self) -> str:
        return self.name  # type: ignore[attr-defined]

    @property
    def effective_bits(self) -> float:
        return float(self.bits)  # type: ignore[attr-defined]

    @property
    def emax(self) -> int:
        """floor(log2(max_value)): the element exponent OCP MX v1.0 §6.3 subtracts."""
        return _floor_log2(self.max_value)  # type: ignore[attr-defined]


def _floor_log2(value: float) -> int:
    return math.frexp(float(value))[1] - 1


class FamilyFormat(ElementFormat):
    """Base of the built-in families (:mod:`.families`): formats this package's twins round
    from their fields. Each family gives its own arithmetic as methods (:meth:`arith`, the
    fast twin's constants; :meth:`round_reference`, the slow twin), so that the quantizer
    dispatches on this type and never imports the families (imports run one way:
    bits <- twins <- quantizer <- families).

    Any other object, or a family subclass that overrides :meth:`round`, rounds itself
    (:func:`uses_own_round`).
    """

    def arith(self) -> fused.Arith | None:
        """The fast twin's constants, or None where float32 arithmetic would not be exact."""
        return None

    def round_reference(
        self, x: torch.Tensor, rounding: str, overflow: str, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """The slow twin's rounding of ``x`` (float64, explicit neighbours); float32."""
        raise NotImplementedError(f"{type(self).__name__} has no reference rounding")

    def encodes_from_bits(self) -> bool:
        """Whether every value is a float32 normal or zero, so that codes can be read off the
        float32 bits (:func:`fused.encode_grid_bits`)."""
        return False

    def round(
        self,
        x: torch.Tensor,
        rounding: str = "nearest_even",
        overflow: str = "saturate",
        generator: torch.Generator | None = None,
        *,
        path: str = "auto",
    ) -> torch.Tensor:
        """Round ``x`` onto this format's grid (no scaling); same shape and dtype as ``x``.

        ``path="reference"`` forces the slow float64 twin; ``"auto"`` uses the float32 bit
        arithmetic where the format allows it. Both give identical bits (tested).
        """
        check_rounding(rounding, overflow)
        noise = None
        if rounding == "stochastic":
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        exact_in_f32 = x.dtype in (torch.float32, torch.float16, torch.bfloat16)
        arith = self.arith() if path != "reference" and exact_in_f32 else None
        if arith is not None:
            out = fused.round_values(arith, x.to(torch.float32), rounding, overflow, noise)
        else:
            out = round_reference(self, x, rounding, overflow, noise)
        return out.to(x.dtype)


def uses_own_round(fmt: Any) -> bool:
    """Whether ``fmt`` is rounded by its own ``round`` (the generic path, :mod:`.generic`)
    rather than by this package's twins: true for every object that is not a built-in
    family, and for a family subclass that overrides ``round``."""
    if not isinstance(fmt, FamilyFormat):
        return True
    return getattr(type(fmt), "round", None) is not FamilyFormat.round


def arith_of(fmt: Any) -> fused.Arith | None:
    """The fast twin's constants for ``fmt`` (a family's :meth:`FamilyFormat.arith`), or None
    where only the reference applies (lookup tables, formats that round themselves)."""
    return fmt.arith() if isinstance(fmt, FamilyFormat) else None


def encodes_from_bits(fmt: Any) -> bool:
    """Whether ``fmt``'s codes can be read off float32 bits: only the float family says so; a
    format of another kind with float-like fields keeps its own ``encode_grid``."""
    return isinstance(fmt, FamilyFormat) and fmt.encodes_from_bits()


def round_reference(
    fmt: Any, x: torch.Tensor, rounding: str, overflow: str, noise: torch.Tensor | None
) -> torch.Tensor:
    """Round ``x`` onto ``fmt``'s grid with the slow twin; float32. ``noise``: U[0,1) draws.

    A format of no built-in family rounds itself (:mod:`.generic`) and is its own reference;
    its round takes a generator, not pre-drawn noise. (A family subclass overriding round is
    rounded here from its fields: its round may call the family's, which lands here.)"""
    if not isinstance(fmt, FamilyFormat):
        if noise is not None:
            raise TypeError(f"{type(fmt).__name__} rounds itself: pass a generator to its round")
        return fmt.round(x.to(torch.float32), rounding, overflow).to(torch.float32)
    return fmt.round_reference(x.to(torch.float64), rounding, overflow, noise)


def emax_of(fmt: Any) -> int:
    """``fmt.emax`` if it has one, else floor(log2(max_value)) (OCP MX v1.0 §6.3's emax)."""
    emax = getattr(fmt, "emax", None)
    if emax is not None:
        return int(emax)
    return _floor_log2(fmt.max_value)


def encode_on_grid(fmt: Any, values: torch.Tensor) -> torch.Tensor:
    """Codes of on-grid values for any format: its ``encode_grid``, else its ``encode``,
    else the index into ``values()``."""
    for method in ("encode_grid", "encode"):
        encode = getattr(fmt, method, None)
        if callable(encode):
            return encode(values)
    return reference.index_codes(fmt, values)


@dataclass(frozen=True)
class Plan:
    """Everything a kernel needs, hashable: one compiled kernel per distinct plan."""

    element: Any  # the element format object (lookup tables round through it)
    element_arith: fused.Arith | None  # its constants, None where only the reference applies
    reduce_dims: tuple[int, ...]
    scale_kind: str  # "fp32" | "e8m0" | "format"
    scale_arith: fused.Arith | None  # the scale format's constants for scale_kind "format"
    second_level: bool
    rounding: str
    overflow: str
    want_elements: bool
    scale_format: Any = None  # the scale format object (reference twin)
    element_facts: Any = None  # _Facts: max_value and emax as plain numbers
    own_round: bool = False  # the element rounds itself (generic path, eager only)
    whole_tensor: bool = False  # one group: the whole tensor (mode "tensor")
    encoding: fused.Encoding | None = None  # the element's bit fields, where it encodes from them
    codes_dtype: torch.dtype = torch.int32  # the codes' dtype (see :func:`narrow_codes_dtype`)


@dataclass(frozen=True)
class _Facts(fused.RunTimeNumbers):
    NUMBERS = ("max_value", "emax")

    max_value: float
    emax: int
    #: emax >= 0: E8M0 scales by :func:`fused.e8m0_scale`. Structure, derived from emax.
    nonnegative_emax: bool | None = None

    def __post_init__(self) -> None:
        if self.nonnegative_emax is None and isinstance(self.emax, int):
            object.__setattr__(self, "nonnegative_emax", self.emax >= 0)


def _facts(element: Any) -> _Facts:
    return _Facts(float(element.max_value), emax_of(element))


#: The parts of a :class:`Plan` whose numbers a compiled kernel reads at run time.
_NUMBERED = ("element_arith", "scale_arith", "element_facts", "encoding")


def kernel_plan(plan: Plan) -> tuple[Plan, tuple[int | float, ...]]:
    """(the plan a compiled kernel is built for, the numbers it reads at run time).

    The first has no format objects and no format numbers: only what decides the kernel's
    code (the families, special values where they matter, scaling, rounding, what it
    returns; :meth:`fused.RunTimeNumbers.structure`). The numbers
    (each format's max, exponents, bias, codes) reach the kernel as
    :func:`qbench.kernels.fused`'s ``numbers``, and :func:`bound` puts them back inside it.
    So one compiled kernel serves every float format with a mantissa (fp8, fp6, fp4_e2m1)
    under one scaling, and a sweep over formats compiles once; measured: see
    benchmarks/README.md."""
    numbers: list[int | float] = []
    parts = {}
    for name in _NUMBERED:
        part = getattr(plan, name)
        if part is not None:
            numbers.extend(part.numbers())
            # the scale format is always rounded saturating
            parts[name] = part.structure("saturate" if name == "scale_arith" else plan.overflow)
    return dataclasses.replace(plan, element=None, scale_format=None, **parts), tuple(numbers)


def bound(plan: Plan, numbers: tuple[Any, ...] | None) -> Plan:
    """``plan`` (a :func:`kernel_plan`) with its numbers back (0-dim tensors inside a
    compiled kernel); ``plan`` itself for None (a plan that has its numbers)."""
    if numbers is None:
        return plan
    parts, at = {}, 0
    for name in _NUMBERED:
        part = getattr(plan, name)
        if part is not None:
            count = len(part.NUMBERS)
            parts[name] = part.with_numbers(numbers[at : at + count])
            at += count
    return dataclasses.replace(plan, **parts)


# --- layout ------------------------------------------------------------------------------


@dataclass
class Layout:
    """How a tensor is viewed as groups, and how scales map back onto it."""

    grouped: Callable[[torch.Tensor], torch.Tensor]
    reduce_dims: tuple[int, ...]
    restore: Callable[[torch.Tensor], torch.Tensor]
    compact: Callable[[torch.Tensor], torch.Tensor]
    expand: Callable[[torch.Tensor], torch.Tensor]
    #: chunk mode with a short last block: (axis, block length, axis length), else None
    padded: tuple[int, int, int] | None = None


def _normalize_axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise QBenchError(
            f"{what} axis {axis} is out of range for a tensor of {ndim} dimension(s); "
            f"allowed: {-ndim}...{ndim - 1}"
        )
    return axis % ndim


def layout_for(shape: torch.Size, mode: str, axis: int | None, chunk_size: int | None) -> Layout:
    ndim = len(shape)
    if mode == "tensor" or ndim == 0:
        return Layout(
            grouped=lambda t: t.reshape(1) if t.dim() == 0 else t,
            reduce_dims=tuple(range(max(ndim, 1))),
            restore=lambda t: t.reshape(shape),
            compact=lambda s: s.reshape(()),
            expand=lambda s: s,
        )
    if mode == "channel":
        a = _normalize_axis(0 if axis is None else axis, ndim, "channel")
        channels = shape[a]
        view = [1] * ndim
        view[a] = channels
        return Layout(
            grouped=lambda t: t,
            reduce_dims=tuple(d for d in range(ndim) if d != a),
            restore=lambda t: t,
            compact=lambda s: s.reshape(channels),
            expand=lambda s: s.reshape(view),
        )
    a = _normalize_axis(-1 if axis is None else axis, ndim, "chunk")
    length = shape[a]
    # An axis shorter than the chunk is one short block: use its length as the block size
    # rather than padding (an NCHW activation chunked along W=7 by 128 would grow 18x).
    c = max(1, min(int(chunk_size), length))  # type: ignore[arg-type]
    blocks = max(1, -(-length // c))
    pad = blocks * c - length

    def grouped(t: torch.Tensor) -> torch.Tensor:
        if pad:
            # Zeros never change an absmax, so padding the short last block cannot leak
            # into its scale; the padded lanes are cut off again in ``restore``.
            # (zeros in t's layout: the padded tensor, and so the result, keep a channels-last
            # activation's layout)
            t = torch.cat([t, torch.zeros_like(t.narrow(a, 0, pad))], dim=a)
        return t.unflatten(a, (blocks, c))

    def restore(t: torch.Tensor) -> torch.Tensor:
        t = t.flatten(a, a + 1)
        # a dense copy in the input's layout: a channels-last activation stays channels-last
        return t.narrow(a, 0, length).clone(memory_format=torch.preserve_format) if pad else t

    return Layout(
        grouped=grouped,
        reduce_dims=(a + 1,),
        restore=restore,
        compact=lambda s: s.squeeze(a + 1),
        expand=lambda s: s.repeat_interleave(c, dim=a).narrow(a, 0, length),
        padded=(a, c, length) if pad else None,
    )


# --- the kernels -------------------------------------------------------------------------


def _amax(xg: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """max |x| per group, NaN if the group holds a NaN. abs then amax: eagerly much faster
    than one ``vector_norm(ord=inf)`` pass over a group axis that is not the last (measured:
    see benchmarks/README.md); compiled, one fused loop either way."""
    if not dims:  # one element per group (channel mode on a 1-D tensor); dim=() means "all"
        return xg.abs()
    return xg.abs().amax(dim=dims, keepdim=True)


def _finite_amax(xg: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """max |x| over the finite values of each group."""
    if not torch.compiler.is_compiling():
        amax = _amax(xg, dims)
        if _all_finite(amax):
            return amax  # the common case: one read of x, same values as below
        magnitude = torch.where(torch.isfinite(xg), xg.abs(), torch.zeros_like(xg))
        if not dims:
            return magnitude
        return torch.amax(magnitude, dim=dims, keepdim=True)
    # Compiled: |x| and the finite test on the bits (inf and NaN are the patterns from
    # 0x7F800000 up), three integer ops a vector instead of the float form's seven (two
    # compares, mask conversions, a blend). The maximum stays a float one: inductor reduces
    # an int32 vector across its lanes element by element.
    bits = xg.view(torch.int32) & 0x7FFFFFFF
    magnitude = torch.where(bits < 0x7F800000, bits, 0).view(torch.float32)
    if not dims:
        return magnitude
    return torch.amax(magnitude, dim=dims, keepdim=True)


def _all_finite(amax: torch.Tensor) -> bool:
    """Whether every group's max |x| is finite, read on the host: they are magnitudes, so all
    are finite iff their maximum is (``amax`` propagates a NaN). One pass over the n/chunk
    values where ``isfinite(...).all()`` takes five (0.1 ms against 3.4 for NVFP4's million
    block maxima on a 2-core x86 VM)."""
    return math.isfinite(float(amax.amax()))


def _fp32_scale(amax: torch.Tensor, max_value: float) -> torch.Tensor:
    scale = fused.divide(amax, max_value)
    # A group of zeros gets scale 1 (zeros out); a group so small that amax / max underflows
    # gets the smallest float32 instead of 0, so x / scale never divides by zero.
    fallback = torch.where(amax > 0, torch.full_like(amax, F32_TINY), torch.ones_like(amax))
    return torch.where(scale > 0, scale, fallback)


def group_amax(xg: torch.Tensor, plan: Plan) -> torch.Tensor:
    """max |x| per group (keepdim): NaN-propagating for e8m0, else over the finite values."""
    if plan.scale_kind == "e8m0":
        return _amax(xg, plan.reduce_dims)  # NaN propagates
    return _finite_amax(xg, plan.reduce_dims)


def _scales(
    amax: torch.Tensor,
    plan: Plan,
    round_scale: Callable[..., torch.Tensor],
    log2: Callable,
    tensor_amax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(effective scale, block-level part, tensor-level part) with keepdim shapes, from the
    groups' ``amax`` (:func:`group_amax`)."""
    element = plan.element_facts
    if plan.scale_kind == "e8m0":
        shared = torch.clamp(log2(amax) - element.emax, E8M0_MIN_EXP, E8M0_MAX_EXP)
        shared = torch.where(amax == 0, torch.full_like(shared, E8M0_MIN_EXP), shared)
        scale = torch.where(torch.isfinite(amax), pow2_f32(shared), float("nan"))
        return scale, scale, None
    if plan.scale_kind == "fp32":
        scale = _fp32_scale(amax, element.max_value)
        return scale, scale, None
    scale_format = plan.scale_arith
    tensor_scale = None
    block = fused.divide(amax, element.max_value)
    if plan.second_level:
        if tensor_amax is None:  # a clipping scale method passes the tensor's own amax
            tensor_amax = torch.amax(amax)
        tensor_scale = _fp32_scale(tensor_amax, scale_format.max_value * element.max_value)
        block = fused.divide(block, tensor_scale)
    block = torch.clamp(block, scale_format.min_normal, scale_format.max_value)
    block = round_scale(block)
    scale = block if tensor_scale is None else block * tensor_scale
    scale = torch.where(scale > 0, scale, F32_TINY)  # only if tensor_scale * block underflows
    return scale, block, tensor_scale


def fused_scales(
    amax: torch.Tensor,
    plan: Plan,
    tensor_amax: torch.Tensor | None = None,
    *,
    numbers: tuple[Any, ...] | None = None,
) -> tuple[Any, ...]:
    """The fast twin's scales from the groups' amax: (effective scale, block part, tensor
    part), the two parts only where the caller asked for codes (else None, so that a
    compiled kernel need not store them). ``numbers``: a compiled kernel's (:func:`bound`),
    here and in every kernel function below."""
    plan = bound(plan, numbers)
    if plan.scale_kind == "e8m0" and plan.element_facts.nonnegative_emax:
        scale = block = fused.e8m0_scale(amax, plan.element_facts.emax)
        tensor_scale = None
    else:
        scale, block, tensor_scale = _scales(
            amax,
            plan,
            lambda b: fused.round_values(plan.scale_arith, b, "nearest_even", "saturate", None),
            floor_log2_f32,
            tensor_amax,
        )
    if plan.want_elements:
        return scale, block, tensor_scale
    return scale, None, None


def fused_elements(
    xg: torch.Tensor,
    noise: torch.Tensor | None,
    scale: torch.Tensor,
    block: torch.Tensor | None,
    tensor_scale: torch.Tensor | None,
    plan: Plan,
    *,
    numbers: tuple[Any, ...] | None = None,
) -> tuple[Any, ...]:
    """The fast twin's element rounding of ``xg / scale`` and the multiplication back
    (``plan`` last: :func:`qbench.kernels.fused` appends the constants to the tensors)."""
    plan = bound(plan, numbers)
    elements = round_elements(xg, noise, scale, plan)
    if plan.want_elements:
        dequantized = elements * scale
        if torch.compiler.is_compiling() and plan.encoding is not None:
            # Compiled: the int32 codes come out of the same loop, instead of a float32 copy
            # of the elements stored here and read back by a second kernel (encode_codes).
            # The eager twin keeps the elements (element.encode_grid encodes them).
            return (
                dequantized,
                fused.encode_bit_fields(plan.encoding, elements).to(plan.codes_dtype),
                scale,
                block,
                tensor_scale,
            )
        return dequantized, elements, scale, block, tensor_scale
    return (elements.mul_(scale),)  # the rounding returned a fresh buffer: reuse it


def round_elements(
    xg: torch.Tensor, noise: torch.Tensor | None, scale: torch.Tensor, plan: Plan
) -> torch.Tensor:
    """The element rounding of ``xg / scale`` (a fresh tensor): :func:`fused_elements` less
    the multiplication back."""
    scaled = _scaled(xg, scale, plan)
    if plan.element_arith is not None:
        return fused.round_values(plan.element_arith, scaled, plan.rounding, plan.overflow, noise)
    # lookup tables: binary search in float64 (eager only)
    return round_reference(plan.element, scaled, plan.rounding, plan.overflow, noise)


def amax_scales(
    xg: torch.Tensor, plan: Plan, *, numbers: tuple[Any, ...] | None = None
) -> tuple[Any, ...]:
    """The groups' scales from ``xg`` (:func:`group_amax` then :func:`fused_scales`): the
    first kernel of a large whole-tensor plan (:func:`split_tensor_scale`)."""
    plan = bound(plan, numbers)
    return fused_scales(group_amax(xg, plan), plan)


def fused_kernel(
    xg: torch.Tensor,
    noise: torch.Tensor | None,
    plan: Plan,
    *,
    numbers: tuple[Any, ...] | None = None,
) -> tuple[Any, ...]:
    """The fast twin (eager or compiled): float32 bit arithmetic throughout."""
    plan = bound(plan, numbers)
    return fused_elements(xg, noise, *fused_scales(group_amax(xg, plan), plan), plan)


def own_round_kernel(
    xg: torch.Tensor,
    generator: torch.Generator | None,
    plan: Plan,
    path: str,
    amax: torch.Tensor | None = None,
    tensor_amax: torch.Tensor | None = None,
) -> tuple[Any, ...]:
    """The generic path (:mod:`.generic`): QBench's scales, the format's own ``round`` of
    ``xg / scale`` (with the caller's generator for stochastic rounding). ``path="reference"``
    rounds the scales with the float64 twin, any other path with the float32 one (the same
    bits)."""
    if amax is None:
        amax = group_amax(xg, plan)
    if path == "reference":
        scale, block, tensor_scale = _reference_scales(xg, plan, amax, tensor_amax)
    else:
        scale, block, tensor_scale = fused_scales(amax, plan, tensor_amax)
    scaled = fused.divide(xg, scale)
    elements = plan.element.round(scaled, plan.rounding, plan.overflow, generator)
    elements = torch.as_tensor(elements).to(device=xg.device, dtype=torch.float32)
    return elements * scale, elements, scale, block, tensor_scale


def _frexp_floor_log2(amax: torch.Tensor) -> torch.Tensor:
    _, exponent = torch.frexp(amax.to(torch.float64))
    return exponent.to(torch.int32) - 1


def _reference_scales(
    xg: torch.Tensor,
    plan: Plan,
    amax: torch.Tensor | None = None,
    tensor_amax: torch.Tensor | None = None,
) -> tuple[Any, ...]:
    """:func:`_scales` of the slow twin: exponents from frexp, float64 scale rounding."""
    return _scales(
        group_amax(xg, plan) if amax is None else amax,
        plan,
        lambda b: round_reference(plan.scale_format, b, "nearest_even", "saturate", None),
        _frexp_floor_log2,
        tensor_amax,
    )


def reference_kernel(
    xg: torch.Tensor,
    noise: torch.Tensor | None,
    plan: Plan,
    amax: torch.Tensor | None = None,
    tensor_amax: torch.Tensor | None = None,
) -> tuple[Any, ...]:
    """The slow twin: exponents from frexp, rounding in float64 with explicit neighbours.
    ``amax``/``tensor_amax``: the groups' clip values and the tensor's amax of a clipping
    scale method (:func:`clipped_kernel`), else computed here."""
    scale, block, tensor_scale = _reference_scales(xg, plan, amax, tensor_amax)
    elements = round_reference(plan.element, xg / scale, plan.rounding, plan.overflow, noise)
    return elements * scale, elements, scale, block, tensor_scale


def split_scales(plan: Plan) -> bool:
    """Whether the compiled twin runs as three kernels rather than one: the groups' amax (a
    read of x), the scales from those (n/chunk values, on one thread), then the elements (a
    read and a write of x).

    Only plans with a second-level (per-tensor) scale: its tensor amax must be known before
    any block is scaled, so x is read twice however the work is fused. Traced as one graph,
    inductor stores the rounded block scales but inlines the rest of the scale arithmetic
    (amax / max, / tensor scale, * tensor scale: three divisions and a dozen scalar ops)
    into the elementwise loop, once per vector of 8 elements, which doubles that loop's
    arithmetic; and it runs the small loops (tensor amax, block-scale rounding) as parallel
    regions of their own, each a barrier at which one thread parked by the OS (a shared,
    loaded box) holds up the other. Split, the elementwise loop only loads one float per
    block, and there are two parallel regions, the least for two passes over x.
    """
    return plan.second_level


#: From this many elements a whole-tensor plan runs compiled as two kernels
#: (:func:`split_tensor_scale`); below it, as one. A second kernel costs one more compiled
#: call (about 0.1 ms on a 2-core x86 VM), and the split saves about 0.1 ns an element there.
SPLIT_TENSOR_MIN_NUMEL = 1 << 20


def split_tensor_scale(plan: Plan) -> bool:
    """Whether a large tensor (:data:`SPLIT_TENSOR_MIN_NUMEL`) of a whole-tensor plan (mode
    ``tensor``, one fp32 or e8m0 scale) runs compiled as two kernels: the amax and the scale
    from it (a read of x, the scale computed once at its end), then the elements (a read and
    a write of x).

    x is read twice either way: the amax must be complete before any element is scaled.
    Traced as one graph, inductor inlines the scalar scale arithmetic (the amax loaded from
    its buffer, divided by the format's max, the zero and underflow fallbacks) into the
    elementwise loop, where it runs once per vector of 8 elements; split, that loop loads
    one float. Measured on a 2-core x86 VM (one thread, cache-resident data, fp8_e4m3):
    0.86 -> 0.63 ns an element."""
    return plan.whole_tensor and not plan.second_level


#: From this many scales a split plan's scales piece runs on torch's threads rather than
#: one (:func:`compiled_kernel`).
SCALES_ONE_THREAD_BELOW = 1 << 18


#: :func:`compiled_kernel`'s closures by the identity of their plan (held, so that its id is
#: not reused): :func:`_prepared` hands a layer the same plan object on every call, and an
#: identity needs no hash of a plan's fields, which a plugin's format subclass may not have.
_KERNELS: dict[int, tuple[Plan, Callable[[torch.Tensor, Any], tuple[Any, ...]]]] = {}
_KERNELS_MAX = 256


def kernel_for(plan: Plan) -> Callable[[torch.Tensor, Any], tuple[Any, ...]]:
    """:func:`compiled_kernel` of ``plan``, built once for the same plan object."""
    hit = _KERNELS.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1]
    kernel = compiled_kernel(plan)
    if len(_KERNELS) >= _KERNELS_MAX:
        _KERNELS.clear()
    _KERNELS[id(plan)] = (plan, kernel)
    return kernel


def compiled_kernel(plan: Plan) -> Callable[[torch.Tensor, Any], tuple[Any, ...]]:
    """The compiled fused kernel for ``plan``: :func:`fused_kernel`, for a large tensor of a
    whole-tensor plan (:func:`split_tensor_scale`) :func:`amax_scales` then
    :func:`fused_elements`, or for a split plan (:func:`split_scales`) its three pieces, each
    through :func:`qbench.kernels.fused`, which compiles it once per (piece, plan, thread
    count) with ``dynamic=True`` (one kernel across tensor shapes, each piece a code object
    of its own so that plans do not share dynamo's cache slots) and runs the piece eagerly,
    with one warning, where compiling fails (the eager twin gives the same bits). The scales
    piece covers n/chunk values and runs on one thread below
    :data:`SCALES_ONE_THREAD_BELOW` of them, where its loops cost less than a barrier on a
    loaded box; NVFP4's blocks of 16 make a 4096x4096 tensor a million of them, 2.7 ms on
    one thread of a 2-core x86 VM and 1.75 ms on two. Kept per plan (:func:`kernel_for`):
    the same ``numbers`` tuple on every call lets :func:`qbench.kernels.fused` reuse their
    words."""
    key, numbers = kernel_plan(plan)
    if split_tensor_scale(plan):

        def tensor_kernel(xg: torch.Tensor, noise: torch.Tensor | None) -> tuple[Any, ...]:
            if xg.numel() < SPLIT_TENSOR_MIN_NUMEL:
                return _whole_compiled(xg, noise, key, numbers)
            scales = kernels.fused(
                amax_scales,
                (xg,),
                (key,),
                numbers=numbers,
                path="compiled",
                name="tensor_scale_kernel",
            )
            return _elements_compiled(xg, noise, scales, key, numbers)

        return tensor_kernel
    if not split_scales(plan):

        def whole_kernel(xg: torch.Tensor, noise: torch.Tensor | None) -> tuple[Any, ...]:
            return _whole_compiled(xg, noise, key, numbers)

        return whole_kernel
    one_thread = {"cpp.threads": 1} if kernels.cpu_options() else None

    def split_kernel(xg: torch.Tensor, noise: torch.Tensor | None) -> tuple[Any, ...]:
        amax = compiled_group_amax(xg, key)
        scales = kernels.fused(
            fused_scales,
            (amax,),
            (key,),
            numbers=numbers,
            path="compiled",
            options=one_thread if amax.numel() < SCALES_ONE_THREAD_BELOW else None,
            name="scales_kernel",
        )
        return _elements_compiled(xg, noise, scales, key, numbers)

    return split_kernel


def compiled_group_amax(xg: torch.Tensor, plan: Plan) -> torch.Tensor:
    """:func:`group_amax` as a compiled kernel of its own (the first piece of a split plan).

    On the CPU, where reading a flag costs no device sync, the plain ``max |x|`` runs first
    and is the answer when every group's is finite: a group's amax is NaN or inf only if the
    group holds a NaN or an inf, and without them the finite-only amax is the same number.
    Otherwise (rare) the finite-only kernel runs over the whole tensor. With NVFP4's blocks
    of 16, one vector a block, the finite filter (bits masked, compared and selected per
    element) nearly doubles the pass: on a 2-core x86 VM, 4096x4096 float32, 14.8 ms with
    it (13.0 in float form) against 7.8 ms for the plain pass, and 0.1 ms for the look at
    the plain pass's maximum (benchmarks/README.md)."""
    if plan.scale_kind != "e8m0" and xg.device.type == "cpu":
        amax = kernels.fused(
            _amax, (xg,), (plan.reduce_dims,), path="compiled", name="abs_amax_kernel"
        )
        if _all_finite(amax):
            return amax
    return kernels.fused(group_amax, (xg,), (plan,), path="compiled", name="amax_kernel")


def _whole_compiled(
    xg: torch.Tensor, noise: torch.Tensor | None, key: Plan, numbers: tuple[Any, ...]
) -> tuple[Any, ...]:
    """:func:`fused_kernel` as one compiled kernel (``key``, ``numbers``: :func:`kernel_plan`)."""
    return kernels.fused(
        fused_kernel,
        (xg, noise),
        (key,),
        numbers=numbers,
        path="compiled",
        name="quantize_kernel",
    )


def _elements_compiled(
    xg: torch.Tensor,
    noise: torch.Tensor | None,
    scales: tuple[Any, ...],
    key: Plan,
    numbers: tuple[Any, ...],
) -> tuple[Any, ...]:
    """:func:`fused_elements` as one compiled kernel, from scales computed before."""
    return kernels.fused(
        fused_elements,
        (xg, noise, *scales),
        (key,),
        numbers=numbers,
        path="compiled",
        name="elements_kernel",
    )


def encode_codes(element: Any, elements: torch.Tensor, path: str = "auto") -> torch.Tensor:
    """Codes of on-grid ``elements`` computed apart from the quantize kernel (the eager and
    reference paths; a compiled quantize kernel encodes in its own loop): large float32
    tensors of fp8/fp6/fp4 formats through one compiled bit-field kernel per format,
    everything else through ``element.encode_grid`` (formats that round themselves: their
    ``encode_grid`` or ``encode``, else the index into ``values()``)."""
    if uses_own_round(element) and not hasattr(element, "encode_grid"):
        return encode_on_grid(element, elements)
    if elements.dtype == torch.float32 and encodes_from_bits(element):
        kernel_path = path if path in ("auto", "compiled") else "eager"
        encoding = fused.encoding(element)
        return kernels.fused(
            _encode_bits,
            (elements,),
            (encoding.structure("saturate"),),
            numbers=encoding.numbers(),
            eager=lambda values, _, numbers: element.encode_grid(values),
            path=kernel_path,
        )
    return element.encode_grid(elements)


def _encode_bits(
    values: torch.Tensor, encoding: fused.Encoding, *, numbers: tuple[Any, ...]
) -> torch.Tensor:
    """The compiled encoder (its eager twin is the format's own ``encode_grid``)."""
    return fused.encode_bit_fields(encoding.with_numbers(numbers), values)


def narrow_codes_dtype(encoding: fused.Encoding | None) -> torch.dtype:
    """The narrowest dtype that holds every code :func:`fused.encode_bit_fields` gives for
    ``encoding``: codes from 0 up to the sign bit's (the top bit) and the NaN code, which is
    -1 for a format without NaN (a NaN input has no code). uint8 for the 8-bit formats with
    a NaN code, int8 for the narrower formats without one (fp6, fp4); int32 otherwise, and
    for formats encoded otherwise (their codes' range is not known here)."""
    if encoding is None:
        return torch.int32
    top = 2 * encoding.sign_code - 1
    for dtype in (torch.uint8, torch.int8):
        info = torch.iinfo(dtype)
        if info.min <= encoding.nan_code <= info.max and top <= info.max:
            return dtype
    return torch.int32


def compilable(plan: Plan) -> bool:
    return plan.element_arith is not None and not plan.own_round


# --- entry point -------------------------------------------------------------------------


def _scale_plan(spec: QuantSpec) -> tuple[str, Any, bool]:
    scaling = spec.scaling
    if scaling.second_level not in (None, "fp32"):
        raise QBenchError(
            f"second_level scale format {scaling.second_level!r} is not supported; allowed: fp32"
        )
    if scaling.scale_format in ("fp32", "e8m0"):
        # A second fp32 level only matters under low-precision block scales; it is ignored
        # here so that overriding nvfp4's scale_format (which keeps second_level) works.
        return scaling.scale_format, None, False
    from qbench.plugins import get

    scale_format = get("format", scaling.scale_format)
    scale_format = getattr(scale_format, "element_format", scale_format)
    if arith_of(scale_format) is None:
        raise QBenchError(
            f"scale_format {scaling.scale_format!r} cannot hold scales; allowed: fp32, e8m0, "
            f"or a signed float/int format such as fp8_e4m3"
        )
    return "format", scale_format, scaling.second_level == "fp32"


def validate(spec: QuantSpec) -> None:
    """Refuse a spec this package cannot honour, with a one-line actionable message."""
    scaling = spec.scaling
    check_rounding(spec.rounding, spec.overflow)
    if scaling.mode not in MODES:
        raise QBenchError(f"mode {scaling.mode!r} is not supported; allowed: {', '.join(MODES)}")
    if scaling.scale_method not in SCALE_METHODS:
        raise QBenchError(
            f"scale_method {scaling.scale_method!r} is not supported; "
            f"allowed: {', '.join(SCALE_METHODS)}"
        )
    scale_methods.check_percentile(scale_methods.percentile_of(scaling))
    if scaling.mode == "chunk":
        size = scaling.chunk_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise QBenchError(f"chunk_size must be a positive integer, found {size!r}")


@dataclass(frozen=True)
class _Prepared:
    """What :func:`quantize` derives from its arguments before any tensor is touched."""

    element: Any
    spec: QuantSpec
    scale_source: Any  # the registered scale format the plan was built with, or None
    plan: Plan
    layout: Layout


#: :func:`_prepared`'s entries, by the identity of the element format and the spec, the
#: tensor's shape and what is returned. Cleared whole when full (specs made per call, as
#: ``qbench.quantize(x, "fp8_e4m3")`` makes them, only churn it).
_PREPARED: dict[tuple[Any, ...], _Prepared] = {}
_PREPARED_MAX = 1024


def _prepared(
    element: Any, spec: QuantSpec, shape: torch.Size, return_codes: bool, narrow_codes: bool
) -> tuple[Plan, Layout]:
    """The validated plan and the layout of a call, built once per (element format, spec,
    shape, codes or not): a quantized layer passes the same spec object on every call, and
    building them took about a quarter of a small tensor's compiled call (validation, the
    format's constants, a frozen plan of 15 fields). Kept only for a format of a built-in
    family, a frozen dataclass whose constants cannot change; a registered scale format is
    looked up on every call, so a plugin registered since is seen."""
    scaling = spec.scaling
    source = None
    if scaling.scale_format not in ("fp32", "e8m0"):
        from qbench.plugins import get

        try:
            source = get("format", scaling.scale_format)
        except QBenchError:  # _scale_plan names the problem
            source = None
    key = (id(element), id(spec), shape, return_codes, narrow_codes)
    hit = _PREPARED.get(key)
    if (
        hit is not None
        and hit.element is element
        and hit.spec is spec
        and hit.scale_source is source
    ):
        return hit.plan, hit.layout
    validate(spec)
    own_round = uses_own_round(element)
    encoding = fused.encoding(element) if encodes_from_bits(element) else None
    scale_kind, scale_format, second_level = _scale_plan(spec)
    layout = layout_for(shape, scaling.mode, scaling.axis, scaling.chunk_size)
    plan = Plan(
        element=element,
        element_arith=None if own_round else arith_of(element),
        own_round=own_round,
        reduce_dims=layout.reduce_dims,
        scale_kind=scale_kind,
        scale_arith=None if scale_format is None else arith_of(scale_format),
        scale_format=scale_format,
        element_facts=_facts(element),
        encoding=encoding,
        # only with codes: without, the same kernel serves narrow_codes and not
        codes_dtype=narrow_codes_dtype(encoding) if narrow_codes and return_codes else torch.int32,
        second_level=second_level,
        rounding=spec.rounding,
        overflow=spec.overflow,
        want_elements=return_codes,
        whole_tensor=scaling.mode == "tensor",
    )
    params = getattr(type(element), "__dataclass_params__", None)
    if isinstance(element, FamilyFormat) and params is not None and params.frozen:
        if len(_PREPARED) >= _PREPARED_MAX:
            _PREPARED.clear()
        _PREPARED[key] = _Prepared(element, spec, source, plan, layout)
    return plan, layout


def quantize(
    fmt: Any,
    x: torch.Tensor,
    spec: QuantSpec,
    *,
    return_codes: bool = False,
    generator: torch.Generator | None = None,
    path: str = "auto",
    narrow_codes: bool = False,
) -> Any:
    """Fake-quantize ``x`` per ``spec`` with element format ``fmt`` (a preset passes its
    element). Returns a tensor like ``x``, or a :class:`QuantResult` with codes and scales.

    The codes are int32, or with ``narrow_codes`` a byte each (uint8 or int8,
    :func:`narrow_codes_dtype`) where every code of the element format fits one: the kernels
    then write them so, instead of four bytes that a consumer keeping them (the compliance
    audit) reads back to narrow them itself."""
    if path not in PATHS:
        raise QBenchError(f"path {path!r} is not one of {', '.join(PATHS)}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise QBenchError(f"quantize needs a floating-point tensor, found {type(x).__name__}")
    element = getattr(fmt, "element_format", fmt)
    scaling = spec.scaling
    plan, layout = _prepared(element, spec, x.shape, return_codes, narrow_codes)
    restore = layout.restore
    with torch.no_grad():
        x32 = x.detach().to(torch.float32)
        if x32.numel() == 0:  # nothing to scale: an empty result of the right shape
            if not return_codes:
                return x.detach().clone()
            codes = torch.zeros(x.shape, dtype=plan.codes_dtype, device=x.device)
            empty = torch.zeros((), device=x.device)
            return QuantResult(x.detach().clone(), codes, empty, spec, {}, lambda s: s)
        if scaling.scale_method != "absmax":
            valid = None
            xg = layout.grouped(x32)
            if xg.numel() != x32.numel():  # a padded short last block: its zeros do not rank
                valid = layout.grouped(torch.ones_like(x32, dtype=torch.bool))
            noise = None
            if spec.rounding == "stochastic" and not plan.own_round:
                noise = layout.grouped(torch.rand(x.shape, generator=generator, device=x.device))
            outputs = clipped_kernel(plan, scaling, xg, valid, noise, generator, path)
        elif plan.own_round:
            outputs = own_round_kernel(layout.grouped(x32), generator, plan, path)
        else:
            noise = None
            if spec.rounding == "stochastic":
                noise = torch.rand(x.shape, generator=generator, device=x.device)
            if _unpadded(layout, plan, path, x32.numel()):
                outputs = unpadded_kernel(plan, x32, noise, *layout.padded)  # type: ignore[misc]
                restore = _same
            else:
                noise = None if noise is None else layout.grouped(noise)
                outputs = _run(plan, layout.grouped(x32), noise, path, x32.numel())
        dequantized = restore(outputs[0]).to(x.dtype)
        if not return_codes:
            return dequantized
        _, elements, scale, block, tensor_scale = outputs
        elements = restore(elements)
        # a compiled kernel returns the codes themselves (see fused_elements)
        codes = (
            elements if not elements.is_floating_point() else encode_codes(element, elements, path)
        )
        codes = codes.to(plan.codes_dtype)  # the paths that do not write narrow codes
        parts = _scale_parts(scaling.mode, scaling.scale_format, layout, block, tensor_scale)
        return QuantResult(
            dequantized=dequantized,
            codes=codes,
            scales=layout.compact(scale),
            spec=spec,
            scale_parts=parts,
            expand=layout.expand,
        )


def _scale_parts(
    mode: str, scale_format: str, layout: Layout, block: Any, tensor_scale: Any
) -> dict[str, tuple[Any, str]]:
    level = {"tensor": "tensor", "channel": "channel", "chunk": "block"}[mode]
    parts = {level: (layout.compact(block), scale_format)}
    if tensor_scale is not None:
        parts["tensor"] = (tensor_scale.reshape(()), "fp32")
    return parts


def _run(plan: Plan, xg: torch.Tensor, noise: Any, path: str, numel: int) -> tuple[Any, ...]:
    if path == "reference":
        return reference_kernel(xg, noise, plan)
    if compilable(plan) and kernels.use_compiled(numel, path):
        return kernel_for(plan)(xg, noise)
    return sliced_kernel(xg, noise, plan)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _unpadded(layout: Layout, plan: Plan, path: str, numel: int) -> bool:
    """Whether a chunked tensor with a short last block runs as :func:`unpadded_kernel`: on
    the eager fast twin (a compiled kernel fuses the padding into its loop; the reference
    twin keeps the plain layout), for block scales alone (a second-level scale is the whole
    padded tensor's)."""
    if layout.padded is None or path == "reference" or plan.second_level:
        return False
    return not (compilable(plan) and kernels.use_compiled(numel, path))


def unpadded_kernel(
    plan: Plan, x: torch.Tensor, noise: torch.Tensor | None, axis: int, chunk: int, length: int
) -> tuple[Any, ...]:
    """:func:`sliced_kernel` over a chunked axis whose last block is short, without padding:
    the full blocks and the short one are two views of ``x``, each quantized straight into
    its part of outputs laid out like ``x``. Padding would copy ``x`` into a buffer up to
    twice its size (144 channels by 128: 256) and copy the result out again. Blocks are
    independent and their scales are concatenated in block order, so the bits, codes and
    scales are those of the padded layout (the padding's zeros never change an absmax).
    Outputs: ``x``'s shape (no restore); scales in the padded layout's grouped shape."""
    full = length // chunk
    dequantized = torch.empty_like(x)  # x's layout: a channels-last activation stays so
    codes = torch.empty_like(x, dtype=plan.codes_dtype) if plan.want_elements else None
    parts = []
    for start, blocks, size in ((0, full, chunk), (full * chunk, 1, length - full * chunk)):

        def view(t: torch.Tensor, start: int = start, blocks: int = blocks, size: int = size):
            return t.narrow(axis, start, blocks * size).unflatten(axis, (blocks, size))

        into = (view(dequantized), None if codes is None else view(codes))
        part_noise = None if noise is None else view(noise)
        parts.append(sliced_kernel(view(x), part_noise, plan, into=into))
    if not plan.want_elements:
        return (dequantized,)
    scale, block = (torch.cat([p[i] for p in parts], dim=axis) for i in (2, 3))
    return dequantized, codes, scale, block, None


#: Elements the eager fast twin rounds at a time (:func:`sliced_kernel`).
EAGER_SLICE = 1 << 20


def sliced_kernel(
    xg: torch.Tensor,
    noise: torch.Tensor | None,
    plan: Plan,
    into: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> tuple[Any, ...]:
    """:func:`fused_kernel`, eagerly, with the element rounding done a slice of about
    :data:`EAGER_SLICE` elements (whole rows of ``xg``'s first dimension) at a time: op by op,
    each of its dozen float32 temporaries would otherwise be as large as ``xg`` (a gigabyte
    for one ImageNet activation at batch 32), and each slice's results are written straight
    into the outputs. Asked for codes, it encodes each slice's elements
    (:func:`encode_codes`) and returns the codes in their place. The scales come from the
    whole tensor first and rounding is elementwise, so the bits are those of
    :func:`fused_kernel`. ``into``: views like ``xg`` the dequantized values and the codes
    (``plan.codes_dtype``; None without codes) are written into, in place of new tensors."""
    rows = xg.shape[0] if xg.dim() else 1
    per_row = xg.numel() // max(rows, 1)
    step = max(1, EAGER_SLICE // max(per_row, 1))
    cast = fused.cast_dtype(plan.element_arith, plan.rounding, plan.overflow)
    if rows <= step and cast is None and into is None:
        return fused_kernel(xg, noise, plan)
    # the groups' amax slice by slice too (``abs`` makes a copy): a maximum is exact in any
    # order, and NaN-propagating or finite-only as each slice's is
    amax = torch.cat([group_amax(xg[s : s + step], plan) for s in range(0, rows, step)])
    if 0 in plan.reduce_dims:
        amax = amax.amax(0, keepdim=True)
    scale, block, tensor_scale = fused_scales(amax, plan)

    def rows_of(t: Any, start: int) -> Any:
        if t is None or t.dim() == 0 or t.shape[0] == 1:
            return t  # one value for every row (a tensor's scale)
        return t[start : start + step]

    dequantized, codes = (torch.empty_like(xg), None) if into is None else into  # xg's strides
    # the cast's bits are the codes: widened straight into the codes
    bit_codes = plan.want_elements and cast is not None and fused.float8_dtype(plan.element) == cast
    if codes is None and plan.want_elements:
        codes = torch.empty_like(xg, dtype=plan.codes_dtype)
    for start in range(0, rows, step):
        scale_rows = rows_of(scale, start)
        out = dequantized[start : start + step]
        if cast is not None:
            codes_rows = codes[start : start + step] if bit_codes else None  # type: ignore[index]
            part = _cast_slice(xg[start : start + step], scale_rows, plan, cast, out, codes_rows)
        else:
            elements = round_elements(
                xg[start : start + step], rows_of(noise, start), scale_rows, plan
            )
            torch.mul(elements, scale_rows, out=out)
            # the slice's codes, not a float32 copy of all the elements encoded afterwards
            part = encode_codes(plan.element, elements, "eager") if plan.want_elements else None
        if part is not None:
            codes[start : start + step].copy_(part)  # type: ignore[index]
    if plan.want_elements:
        return dequantized, codes, scale, block, tensor_scale
    return (dequantized,)


def _scaled(xg: torch.Tensor, scale: torch.Tensor, plan: Plan) -> torch.Tensor:
    """``xg / scale`` as the element rounding sees it (a fresh tensor)."""
    if plan.scale_kind == "e8m0":  # a power of two: multiplying by 1/scale is exact
        return xg * fused.pow2_reciprocal(scale)
    return fused.divide(xg, scale)


def _cast_slice(
    rows: torch.Tensor,
    scale: torch.Tensor,
    plan: Plan,
    cast: torch.dtype,
    out: torch.Tensor,
    codes: torch.Tensor | None,
) -> torch.Tensor | None:
    """One slice of :func:`sliced_kernel` rounded by a float8 cast (:func:`fused.cast_dtype`):
    the cast's result is widened straight into ``out`` and multiplied back there. Asked for
    codes: with ``codes`` (the format's codes are that dtype's bit patterns,
    :func:`fused.float8_dtype`) the bits are widened into it, the format's one NaN code for
    every NaN; without, the format's encoding of the elements is returned."""
    scaled = _scaled(rows, scale, plan)
    rounded = fused.round_by_cast(plan.element_arith, scaled, cast, in_place=True)
    fused.widen_float8(rounded, out)
    part = None
    if codes is not None:
        codes.copy_(rounded.view(torch.uint8))
        if plan.element.has_nan and bool(torch.isnan(out.amax())):  # amax keeps a NaN
            codes.masked_fill_(torch.isnan(out), plan.element.nan_code)
    elif plan.want_elements:
        part = encode_codes(plan.element, out.clone(), "eager")
    out.mul_(scale)
    return part


def clipped_kernel(
    plan: Plan,
    scaling: Any,
    xg: torch.Tensor,
    valid: torch.Tensor | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
    path: str,
) -> tuple[Any, ...]:
    """The scale methods that clip (``percentile``, ``mse``; :mod:`.scale_methods`), eagerly:
    each group's clip value takes the place of its amax in the chosen twin (the reference
    twin for ``path="reference"``, else the fast one, never compiled; the same bits). A
    second-level scale stays the tensor's amax's. ``valid`` masks the zero padding of a
    short last block (None: no padding)."""
    amax = group_amax(xg, plan)
    tensor_amax = torch.amax(amax) if plan.second_level else None

    def twin(clip: torch.Tensor, run_plan: Plan, noise: Any, generator: Any) -> tuple[Any, ...]:
        if run_plan.own_round:
            return own_round_kernel(xg, generator, run_plan, path, clip, tensor_amax)
        if path == "reference":
            return reference_kernel(xg, noise, run_plan, clip, tensor_amax)
        scales = fused_scales(clip, run_plan, tensor_amax)
        return fused_elements(xg, noise, *scales, run_plan)

    if scaling.scale_method == "percentile":
        # chunk mode's default percentile depends on the block length (the layout's, which
        # is the axis length where that is shorter than chunk_size)
        chunked = scaling.mode == "chunk" and xg.dim() > 1
        block_length = xg.shape[plan.reduce_dims[0]] if chunked else None
        clip = scale_methods.percentile_clip(
            xg, amax, valid, plan.reduce_dims, scale_methods.percentile_of(scaling), block_length
        )
    else:  # mse: candidates rounded to nearest (never a random draw), without codes
        search_rounding = "nearest_even" if plan.rounding == "stochastic" else plan.rounding
        search = dataclasses.replace(plan, rounding=search_rounding, want_elements=False)
        clip = scale_methods.mse_clip(
            xg, amax, plan.reduce_dims, lambda c: twin(c, search, None, None)[0]
        )
    return twin(clip, plan, noise, generator)
