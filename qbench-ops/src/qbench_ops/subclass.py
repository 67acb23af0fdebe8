"""Quantized twins of *subclasses* that keep their own ``forward``.

Real models subclass ``nn.Conv2d`` and ``nn.Linear`` and change what ``forward`` does before
the underlying functional call: TF-style "same" padding (timm's ``Conv2dSame``, EfficientNet
ports' ``Conv2dStaticSamePadding``), weight standardization (``StdConv2d``), a low-rank branch
beside the frozen weight (LoRA). Swapping such a module for ``QuantConv2d`` would run the
parent's ``forward`` and silently compute something else; leaving it FP32 silently skips it.

The twin made here keeps the subclass's own ``forward`` and quantizes what its functional call
consumes, while that call runs: a :class:`torch.overrides.TorchFunctionMode` is active during
the module's ``forward`` and rewrites each call of the op's function (``F.conv2d`` for a
convolution, ``F.linear``, ``F.batch_norm``, ``F.layer_norm``; see :data:`CALLS`) that is the
module's own. Each tensor argument the call takes from the module (weight, running statistics)
is

* the module's own tensor: replaced by its cached quantization (quantized once, as the swapped
  twins do);
* a tensor derived from it inside ``forward`` (a standardized weight): quantized for this
  call with the same role's spec;

and the call's input is quantized (role ``input``). A call is the module's own when one of
those arguments is the module's own tensor or a derived one; a call whose weight is another
module's parameter, or a tensor a quantizer produced (a child twin's call, e.g. LoRA's
``lora_A``), is left alone: children are prepared as modules of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .base import QuantModule
from .quantizer import TensorQuantizer, is_quantized


@dataclass(frozen=True)
class Argument:
    """A tensor argument of a functional call: where it is (position or keyword), its role,
    and the module attribute it normally comes from (None for the input)."""

    position: int
    keyword: str
    role: str
    attribute: str | None = None


_INPUT = Argument(0, "input", "input")
_WEIGHTED = (_INPUT, Argument(1, "weight", "weight", "weight"))
#: The functional call each kind of module computes through, and its quantized arguments.
CALLS: dict[type[nn.Module], tuple[frozenset[Any], tuple[Argument, ...]]] = {
    nn.modules.conv._ConvNd: (frozenset({F.conv1d, F.conv2d, F.conv3d}), _WEIGHTED),
    nn.Linear: (frozenset({F.linear}), _WEIGHTED),
    nn.modules.batchnorm._BatchNorm: (
        frozenset({F.batch_norm}),
        (
            _INPUT,
            Argument(1, "running_mean", "stats", "running_mean"),
            Argument(2, "running_var", "stats", "running_var"),
            Argument(3, "weight", "weight", "weight"),
        ),
    ),
    nn.LayerNorm: (frozenset({F.layer_norm}), (_INPUT, Argument(2, "weight", "weight", "weight"))),
}


class _OwnCalls(TorchFunctionMode):
    """Rewrites the twin's own functional calls (see module docstring)."""

    def __init__(self, twin: _SubclassQuantized) -> None:
        super().__init__()
        self.twin = twin

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in self.twin.functions:
            args, kwargs = self.twin._qbench_rewrite(args, kwargs)
        return func(*args, **kwargs)


class _SubclassQuantized(QuantModule):
    """The mixin placed before the subclass in the twin's class (see :func:`twin_class`)."""

    #: The functional calls this twin quantizes, and their arguments (from :data:`CALLS`).
    functions: ClassVar[frozenset[Any]] = frozenset()
    arguments: ClassVar[tuple[Argument, ...]] = ()

    def _qbench_setup(self) -> None:
        axis = 1 if isinstance(self, nn.modules.conv._ConvNd) else None  # conv: channels
        flatten = isinstance(self, (nn.modules.conv._ConvNd, nn.Linear))
        self._q_args: dict[Argument, Any] = {}
        # tensors derived inside forward (a standardized weight): quantized per call
        self._q_derived: dict[Argument, TensorQuantizer | None] = {}
        for argument in self.arguments:
            if argument.attribute is None:
                self._q_args[argument] = self._point(argument.role, default_axis=axis)
                continue
            weight = flatten and argument.role == "weight"
            self._q_args[argument] = self._cached(
                argument.role, argument.attribute, flatten_weight=weight
            )
            self._q_derived[argument] = self._point(argument.role, flatten_weight=weight)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with _OwnCalls(self):
            return super().forward(*args, **kwargs)  # the subclass's own forward

    def _qbench_rewrite(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments with its tensors quantized, or unchanged when the call is not
        this module's own (see module docstring)."""
        values = list(args)
        replaced: list[tuple[Argument, Any]] = []
        own = False
        for argument in self.arguments:
            if argument.attribute is None:
                continue
            value = _get(values, kwargs, argument)
            if not isinstance(value, torch.Tensor):
                continue
            if value is getattr(self, argument.attribute, None):
                own = True
                replaced.append((argument, self._use(self._q_args[argument], value)))
            elif not isinstance(value, nn.Parameter) and not is_quantized(value):
                own = True
                quantizer = self._q_derived[argument]
                replaced.append((argument, value if quantizer is None else quantizer(value)))
            else:
                return args, kwargs  # another module's parameter, or a child twin's call
        if not own:
            return args, kwargs
        for argument, value in replaced:
            _set(values, kwargs, argument, value)
        for argument in self.arguments:
            quantizer = self._q_args[argument]
            value = _get(values, kwargs, argument)
            if (
                argument.attribute is None
                and quantizer is not None
                and isinstance(value, torch.Tensor)
            ):
                _set(values, kwargs, argument, quantizer(value))
        return tuple(values), kwargs


def _get(args: list[Any], kwargs: dict[str, Any], argument: Argument) -> Any:
    if len(args) > argument.position:
        return args[argument.position]
    return kwargs.get(argument.keyword)


def _set(args: list[Any], kwargs: dict[str, Any], argument: Argument, value: Any) -> None:
    if len(args) > argument.position:
        args[argument.position] = value
    else:
        kwargs[argument.keyword] = value


_TWIN_CLASSES: dict[type, type] = {}


def calls_of(cls: type) -> tuple[frozenset[Any], tuple[Argument, ...]] | None:
    """The functional call ``cls``'s modules compute through (None: not one of :data:`CALLS`)."""
    for base, call in CALLS.items():
        if issubclass(cls, base):
            return call
    return None


def twin_class(op: type[QuantModule], cls: type[nn.Module]) -> type[QuantModule]:
    """``Quant<Subclass>``: the subclass with :class:`_SubclassQuantized` in front of it (one
    class per subclass, so ``isinstance`` and every attribute of the subclass hold)."""
    twin = _TWIN_CLASSES.get(cls)
    if twin is None:
        call = calls_of(cls)
        if call is None:
            raise TypeError(f"{cls.__qualname__} computes through no call QBench knows")
        functions, arguments = call
        twin = type(
            f"Quant{cls.__name__}",
            (_SubclassQuantized, cls),
            {
                "name": op.name,
                "module_types": (),
                "roles": tuple(dict.fromkeys(a.role for a in arguments)),
                "functions": functions,
                "arguments": arguments,
                "__module__": __name__,
            },
        )
        _TWIN_CLASSES[cls] = twin
    return twin


def from_subclass(op: type[QuantModule], module: nn.Module, specs: Any, *, name: str) -> nn.Module:
    """The twin of ``module``, an instance of a subclass of one of ``op``'s module types with
    a ``forward`` of its own (``qbench.prepare`` calls it through the op's ``from_subclass``)."""
    return twin_class(op, type(module)).from_module(module, specs, name=name)


class KeepsSubclassForward:
    """Mixin of the ops whose module types are computed through a call in :data:`CALLS`:
    their ``from_subclass`` (called by ``qbench.prepare`` for a subclass with a ``forward``
    of its own) returns a twin that keeps that forward."""

    @classmethod
    def from_subclass(cls, module: nn.Module, specs: Any, *, name: str) -> nn.Module | None:
        """The twin of ``module``, or None when its kind computes through no call QBench
        knows (it then stays FP32, listed with the reason)."""
        if calls_of(type(module)) is None:
            return None
        return from_subclass(cls, module, specs, name=name)  # type: ignore[arg-type]
