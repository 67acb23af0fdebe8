"""Functional calls inside ``forward``, quantized as they run: attention math written as
functions (``q @ k.transpose(-2, -1)``, ``softmax``, ``F.scaled_dot_product_attention``), a
residual ``x + y``, ``F.linear``/``F.conv2d`` on a module's parameters.

Module swapping cannot see these: they are calls, not modules. While the twin's forward runs, a
:class:`torch.overrides.TorchFunctionMode` sees every torch function call, and forward hooks on
every module of the twin keep the stack of modules being run, so each call is attributed to the
innermost module. A call of a selected function group (``quantization.functions``, see
:data:`GROUPS`) made by a module that is not itself a quantized twin (those quantize their own
math) gets its operands quantized per role, with the specs that module's name and type resolve
to (``layers:`` overrides apply; a pattern may also name the call site itself). Each call site
has a stable name, ``<module>:<group>#<n>`` (the n-th call of that group in one forward of that
module: ``blocks.3.attn:matmul#1`` is Q·Kᵀ, ``#2`` is P·V), under which its quantizations reach
the audit and its outputs the layer-wise metric.

=========  ============================================  ======  =============================
group      functions                                     role    operands (chunk axis)
=========  ============================================  ======  =============================
matmul     ``@``, matmul, bmm, mm, einsum (2 operands)   input   left (last), right (-2)
sdpa       ``F.scaled_dot_product_attention``            input   Q, K (last), V (-2)
softmax    ``softmax`` (function or method)              act     output (the softmax dim)
add        ``+``, ``+=``, ``torch.add``, ``Tensor.add``  input   both tensors (channels/last)
linear     ``F.linear`` on a parameter                   weight  weight (per output row)
                                                         input   input (last)
conv       ``F.conv1d/2d/3d`` on a parameter             weight  weight (per output channel)
                                                         input   input (channels)
=========  ============================================  ======  =============================

The interceptor also counts multiply-accumulates of every conv, linear, matmul and attention
call, quantized or not, for the report's coverage (``mac_share``).

Compiled kernels never run under the mode: ``qbench.kernels`` suspends torch function modes
around every compiled call (dynamo would otherwise trace into the mode).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from qbench import LayerSpecs, QBenchError
from torch import nn
from torch.overrides import TorchFunctionMode

from .quantizer import TensorQuantizer, is_quantized

#: Function groups a config names in ``quantization.functions``.
GROUPS: dict[str, tuple[Callable[..., Any], ...]] = {
    "matmul": (
        torch.matmul,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
        torch.bmm,
        torch.Tensor.bmm,
        torch.mm,
        torch.Tensor.mm,
        torch.einsum,
    ),
    "sdpa": (F.scaled_dot_product_attention,),
    "softmax": (torch.softmax, F.softmax, torch.Tensor.softmax),
    "add": (
        torch.add,
        torch.Tensor.add,
        torch.Tensor.__add__,
        torch.Tensor.__radd__,
        # in place (ResNet's ``out += identity``): the sum lands in the quantized copy of the
        # left operand, which Python rebinds ``out`` to
        torch.Tensor.__iadd__,
        torch.Tensor.add_,
    ),
    "linear": (F.linear,),
    "conv": (F.conv1d, F.conv2d, F.conv3d),
}
#: The default: a transformer's attention math and layers written as functions; residual
#: additions only when asked for (``add``), as deployed kernels often fuse them.
DEFAULT_GROUPS = ("matmul", "sdpa", "softmax", "linear", "conv")
#: Groups whose calls are counted as multiply-accumulates.
_MAC_GROUPS = ("matmul", "sdpa", "linear", "conv")
_ALL = {func: group for group, funcs in GROUPS.items() for func in funcs}

#: Attribute of the twin's root holding its :class:`CallInterceptor`.
ATTRIBUTE = "_qbench_calls"


def resolve_groups(value: Any) -> tuple[str, ...]:
    """The groups ``quantization.functions`` names (None: :data:`DEFAULT_GROUPS`)."""
    if value is None:
        return DEFAULT_GROUPS
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise QBenchError(
            f"quantization.functions: found {value!r}; allowed: a list of {', '.join(GROUPS)}"
        )
    unknown = [v for v in value if v not in GROUPS]
    if unknown:
        raise QBenchError(
            f"quantization.functions: unknown function group {unknown[0]!r}; allowed: "
            f"{', '.join(GROUPS)}"
        )
    return tuple(dict.fromkeys(value))


class _Frame:
    __slots__ = ("name", "module", "owned", "counts", "suspended", "started")

    def __init__(self, name: str, module: nn.Module, owned: bool) -> None:
        self.name = name
        self.module = module
        self.owned = owned  # a quantized twin: it quantizes its own calls
        self.counts: dict[str, int] = {}
        self.suspended: list[Any] | None = None  # modes popped while an opaque module runs
        self.started = False  # the outermost module called: it entered the mode


def _opaque(module: nn.Module, owned: bool) -> bool:
    """Whether ``module`` runs without the mode: a quantized twin (it quantizes its own calls,
    and its quantizers' math is not the model's), or a module of torch's own left FP32
    (``nn.Linear``, ``nn.MultiheadAttention``...), whose calls are its own and whose result
    an active mode would change (torch's attention takes its fused fast path only when no mode
    is active): the twin's FP32 layers must stay the reference's. Their multiply-accumulates
    are counted from their shapes (:func:`_module_macs`)."""
    cls = type(module)
    return owned or (
        cls.__module__.startswith("torch.nn.")
        and cls not in (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    )


class _Mode(TorchFunctionMode):
    def __init__(self, interceptor: CallInterceptor) -> None:
        super().__init__()
        self.interceptor = interceptor

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        group = _ALL.get(func)
        if group is None:
            return func(*args, **(kwargs or {}))
        return self.interceptor._call(func, group, args, dict(kwargs or {}))


class _Enter:
    """Forward pre-hook: a module starts (the outermost one called, usually the root, also
    enters the mode; an opaque module suspends it, see :func:`_opaque`)."""

    def __init__(self, interceptor: CallInterceptor, name: str, owned: bool):
        self.interceptor, self.name, self.owned = interceptor, name, owned
        self.opaque: bool | None = None  # learned on the first call

    def __call__(self, module: nn.Module, args: Any) -> None:
        interceptor = self.interceptor
        frame = _Frame(self.name, module, self.owned)
        if not interceptor._stack:
            interceptor._enter()
            frame.started = True
        if self.opaque is None:
            self.opaque = _opaque(module, self.owned)
        if self.opaque and interceptor._mode is not None:
            frame.suspended = _pop_modes()
        interceptor._stack.append(frame)


class _Exit:
    """Forward hook (always called): the module ended (the outermost also leaves the mode)."""

    def __init__(self, interceptor: CallInterceptor):
        self.interceptor = interceptor

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        interceptor = self.interceptor
        if not interceptor._stack:
            return
        frame = interceptor._stack.pop()
        if frame.suspended is not None:  # an opaque module: its MACs, from its shapes
            for mode in reversed(frame.suspended):
                torch._C._push_on_torch_function_stack(mode)
            macs = _module_macs(module, args, output)
            interceptor.macs_total += macs
            if frame.owned:
                interceptor.macs_quantized += macs
        if frame.started:
            interceptor._leave()


def _pop_modes() -> list[Any]:
    modes = []
    while torch._C._len_torch_function_stack():
        modes.append(torch._C._pop_torch_function_stack())
    return modes


def _module_macs(module: nn.Module, args: Any, output: Any) -> int:
    """Multiply-accumulates of one call of a torch layer left FP32 (Linear, convolutions,
    MultiheadAttention; 0 for the others)."""
    out = output[0] if isinstance(output, tuple) else output
    if not isinstance(out, torch.Tensor):
        return 0
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return out.numel() * module.weight[0].numel()
    if isinstance(module, nn.MultiheadAttention) and len(args) >= 2:
        query, key = args[0], args[1]
        embed = module.embed_dim
        # projections of Q, K, V and the output, then Q·Kᵀ and P·V
        lq, lk = query.numel() // embed, key.numel() // module.kdim
        batch = query.shape[1 if not module.batch_first and query.dim() == 3 else 0]
        batch = batch if query.dim() == 3 else 1
        return (
            lq * embed * embed * 2
            + lk * (module.kdim + module.vdim) * embed
            + 2 * lq * (lk // batch) * embed
        )
    return 0


class CallInterceptor:
    """Quantizes (or, with ``record_only``, only reports) the functional calls of one model;
    see the module docstring. Installed by :func:`install`; observed like a quantized module
    (``qbench_attach_observer``)."""

    #: while ``qbench_ops.calibration.calibrating`` runs: called with each quantizer created
    #: meanwhile (call sites are found as they run), so that it records too
    calibration: Callable[[TensorQuantizer], None] | None = None

    def __init__(
        self,
        groups: Iterable[str],
        specs_for: Callable[[str, str, nn.Module], LayerSpecs],
        *,
        record_only: bool = False,
    ) -> None:
        self.groups = frozenset(groups)
        self.specs_for = specs_for
        self.record_only = record_only
        self._observers: list[Any] = []
        self._quantizers: dict[tuple[str, str], TensorQuantizer | None] = {}
        self.call_hooks: list[Callable[[str, torch.Tensor], None]] = []
        #: call site -> what it is (module, type, group, roles): the sites seen so far
        self.sites: dict[str, dict[str, Any]] = {}
        self.macs_quantized = 0
        self.macs_total = 0
        self._stack: list[_Frame] = []
        self._mode: _Mode | None = None

    # -- the mode's lifetime (root pre/post hooks) ------------------------------------

    def _enter(self) -> None:
        self._mode = _Mode(self)
        self._mode.__enter__()

    def _leave(self) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)

    def __getstate__(self) -> dict[str, Any]:  # deepcopy/pickle: no live mode, no hooks
        return {**self.__dict__, "_mode": None, "_stack": [], "call_hooks": []}

    # -- observation (qbench.preparation.observe) ---------------------------------------

    def qbench_attach_observer(self, observer: Any) -> None:
        self._observers.append(observer)

    def qbench_detach_observer(self, observer: Any) -> None:
        while observer in self._observers:
            self._observers.remove(observer)

    # -- one call -------------------------------------------------------------------------

    def _call(
        self, func: Callable[..., Any], group: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        frame = self._stack[-1] if self._stack else None
        if frame is None or frame.owned or group not in self.groups:
            result = func(*args, **kwargs)
            if group in _MAC_GROUPS:
                self._count(
                    group, args, kwargs, result, quantized=frame is not None and frame.owned
                )
            return result
        if group in ("linear", "conv") and not _on_parameter(args, kwargs):
            return func(*args, **kwargs)  # a weight computed in forward: not a layer's
        count = frame.counts[group] = frame.counts.get(group, 0) + 1
        site = f"{frame.name or 'model'}:{group}#{count}"
        quantized = False
        if not self.record_only:
            args, kwargs, quantized = self._quantize(site, frame, group, func, args, kwargs)
        result = func(*args, **kwargs)
        if group == "softmax" and not self.record_only:
            quantizer = self._quantizer(site, frame, group, "act", _softmax_axis(args, kwargs))
            if quantizer is not None and isinstance(result, torch.Tensor):
                result, quantized = quantizer(result), True
        if group in _MAC_GROUPS:
            self._count(group, args, kwargs, result, quantized=quantized)
        if self.call_hooks and isinstance(result, torch.Tensor):
            for hook in list(self.call_hooks):
                hook(site, result)
        return result

    def _quantize(
        self,
        site: str,
        frame: _Frame,
        group: str,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
        """The call's arguments with its operands quantized (see the module docstring)."""
        values = list(args)
        done = False
        for position, role, axis in _operands(group, func, values, kwargs):
            value = values[position] if position < len(values) else None
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                continue
            quantizer = self._quantizer(site, frame, group, role, axis)
            if quantizer is not None:
                values[position] = quantizer(value)
                done = True
        return tuple(values), kwargs, done

    def _quantizer(
        self, site: str, frame: _Frame, group: str, role: str, axis: int | None
    ) -> TensorQuantizer | None:
        key = (site, f"{role}@{axis}")
        if key not in self._quantizers:
            specs = self.specs_for(site, frame.name, frame.module)
            spec = specs.get(role)
            quantizer = None
            if spec is not None:
                weight = role == "weight"
                quantizer = TensorQuantizer(
                    spec,
                    site,
                    role,
                    self._observers,
                    default_axis=None if weight else axis,
                    flatten_weight=weight,
                )
            self._quantizers[key] = quantizer
            if quantizer is not None and self.calibration is not None:
                self.calibration(quantizer)
            entry = self.sites.setdefault(
                site,
                {
                    "name": site,
                    "module": frame.name,
                    "type": type(frame.module).__name__,
                    "function": group,
                    "roles": {},
                },
            )
            if spec is not None:
                entry["roles"][role] = spec.describe()
        return self._quantizers[key]

    def _count(
        self,
        group: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        result: Any,
        *,
        quantized: bool,
    ) -> None:
        macs = _macs(group, args, kwargs, result)
        self.macs_total += macs
        if quantized:
            self.macs_quantized += macs

    def qbench_report(self) -> dict[str, Any]:
        """What the run's report adds to its preparation section: the multiply-accumulate
        coverage and every call site seen, with the roles quantized there."""
        return {"coverage": self.coverage(), "calls": [dict(site) for site in self.sites.values()]}

    def coverage(self) -> dict[str, Any]:
        """Multiply-accumulates counted so far, and the share that ran quantized."""
        total = self.macs_total
        return {
            "macs": total,
            "macs_quantized": self.macs_quantized,
            "mac_share": self.macs_quantized / total if total else None,
        }


def _on_parameter(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    return isinstance(weight, nn.Parameter) and not is_quantized(weight)


def _softmax_axis(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
    return int(dim) if isinstance(dim, int) else -1


def _operands(
    group: str, func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> list[tuple[int, str, int | None]]:
    """``(position, role, chunk axis)`` of the operands a call of ``group`` quantizes; keyword
    operands are moved into ``args`` first, so positions index it."""
    if group == "matmul":
        if func is torch.einsum:
            operands = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
            if len(operands) != 2:  # one operand, or more than two: not a matmul of two
                return []
            return [(operands[0], "input", None), (operands[1], "input", None)]
        return [(0, "input", -1), (1, "input", -2)]
    if group == "sdpa":
        for position, name in enumerate(("query", "key", "value")):
            if len(args) <= position and name in kwargs:
                args.append(kwargs.pop(name))
        return [(0, "input", -1), (1, "input", -1), (2, "input", -2)]
    if group == "add":
        return [(0, "input", None), (1, "input", None)]
    if group in ("linear", "conv"):
        for position, name in enumerate(("input", "weight")):
            if len(args) <= position and name in kwargs:
                args.append(kwargs.pop(name))
        return [(0, "input", 1 if group == "conv" else -1), (1, "weight", None)]
    return []  # softmax: its output, after the call


def _macs(group: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], result: Any) -> int:
    """Multiply-accumulates of one call, from its shapes."""
    if not isinstance(result, torch.Tensor):
        return 0
    if group in ("linear", "conv"):
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if not isinstance(weight, torch.Tensor) or weight.dim() == 0:
            return 0
        per_output = weight[0].numel() if group == "conv" else weight.shape[-1]
        channels = weight.shape[0]
        outputs = result.numel() // max(channels, 1) if group == "conv" else result.numel()
        return int(outputs * per_output * (channels if group == "conv" else 1))
    if group == "sdpa":
        query = args[0] if args else kwargs.get("query")
        key = args[1] if len(args) > 1 else kwargs.get("key")
        if not isinstance(query, torch.Tensor) or not isinstance(key, torch.Tensor):
            return 0
        # Q·Kᵀ and P·V: every query position against every key position, twice
        return int(2 * math.prod(query.shape[:-1]) * key.shape[-2] * query.shape[-1])
    operands = [a for a in args if isinstance(a, torch.Tensor)]
    if len(operands) < 2 or operands[0].dim() == 0:
        return 0
    return int(result.numel() * operands[0].shape[-1])


def install(
    twin: nn.Module,
    groups: Iterable[str],
    specs_for: Callable[[str, str, nn.Module], LayerSpecs],
    owned: Iterable[str],
    *,
    record_only: bool = False,
) -> CallInterceptor:
    """Attach a :class:`CallInterceptor` to ``twin``: hooks on every module (``owned`` names
    the quantized twins among them, whose calls are their own), the interceptor on the root
    (:func:`interceptor_of`)."""
    interceptor = CallInterceptor(groups, specs_for, record_only=record_only)
    owned = set(owned)
    for name, module in twin.named_modules():
        module.register_forward_pre_hook(_Enter(interceptor, name, name in owned))
        module.register_forward_hook(_Exit(interceptor), always_call=True)
    object.__setattr__(twin, ATTRIBUTE, interceptor)
    return interceptor


def uninstall(model: nn.Module) -> None:
    """Remove the interceptor :func:`install` put on ``model`` and its hooks (found by what
    they are, so a deep copy's hooks go too)."""
    interceptor = model.__dict__.pop(ATTRIBUTE, None)
    if interceptor is None:
        return
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [
                k for k, h in hooks.items() if getattr(h, "interceptor", None) is interceptor
            ]:
                del hooks[key]
                module._forward_hooks_always_called.pop(key, None)


def interceptor_of(model: nn.Module) -> CallInterceptor | None:
    """The :class:`CallInterceptor` installed on ``model``, if any."""
    return getattr(model, ATTRIBUTE, None)


class QuantCalls:
    """The op that quantizes functional calls: installed on the whole twin by
    ``qbench.prepare`` (its ``install``), never swapped for a module."""

    name = "calls"
    module_types: tuple[type, ...] = ()
    roles = ("weight", "input", "act")

    @classmethod
    def from_module(cls, module: nn.Module, specs: LayerSpecs, *, name: str) -> nn.Module:
        raise QBenchError(f"{name}: the calls op is installed on a whole model, not a module")

    @classmethod
    def install(
        cls,
        twin: nn.Module,
        quantization: Mapping[str, Any] | None,
        specs_for: Callable[[str, str, nn.Module], LayerSpecs],
        *,
        owned: Iterable[str],
    ) -> CallInterceptor:
        """Quantize ``quantization.functions`` (default :data:`DEFAULT_GROUPS`) in ``twin``."""
        groups = resolve_groups((quantization or {}).get("functions"))
        return install(twin, groups, specs_for, owned)
