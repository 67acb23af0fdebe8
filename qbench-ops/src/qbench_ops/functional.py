"""Additions and matmuls written as functions, quantized through torch.fx (issue 4, item 1).

Module swapping cannot see ``x + y``, ``torch.add``, ``x @ w`` or ``torch.matmul`` in a model's
``forward``: residual additions of ResNet blocks and ViT encoder blocks are written that way.
:func:`quantize_functions` traces the prepared twin with ``torch.fx`` (quantized modules are
leaves, so their own forwards are untouched), and replaces each

* ``operator.add`` / ``operator.iadd`` / ``torch.add`` / ``Tensor.add`` (no ``alpha``) with a
  :class:`QuantAdd` module, which quantizes both tensor operands (role ``input``), and
* ``operator.matmul`` / ``torch.matmul`` / ``torch.bmm`` / ``Tensor.matmul`` / ``Tensor.bmm``
  with a :class:`QuantMatmul`, which quantizes both operands along the reduction axis
  (the last axis of the left operand, the second-to-last of the right one).

The new modules are named ``<enclosing module>.add`` / ``.matmul`` (then ``add_1``, ``add_2``...
in order of execution: ``layer1.0.add``, ``encoder.layers.encoder_layer_0.add_1``), have no parameters (state_dicts are unchanged), take
their specs from a ``quantization`` mapping (``layers:`` overrides match these names and the
types ``QuantAdd``/``QuantMatmul``) and are appended to the preparation report. Give overrides
that target functions only to :func:`quantize_functions` (``qbench.prepare`` refuses entries
matching none of the model's modules); here too an entry matching nothing is an error.

Limits, as documented by torch.fx: models with data-dependent control flow cannot be traced
(:class:`qbench.QBenchError` is raised and the twin from ``qbench.prepare`` is still usable);
the traced twin is a ``GraphModule``, so container modules such as ResNet's ``BasicBlock`` are
inlined (forward hooks on them no longer fire; hooks on quantized leaves do). Matmuls inside
``nn.MultiheadAttention`` are covered by :class:`~qbench_ops.QuantMultiheadAttention` instead.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
from qbench import LayerSpecs, QBenchError, QuantSpec
from qbench.prepare import REPORT_ATTRIBUTE, check_layer_patterns, preparation_report
from qbench.spec import layer_specs
from qbench.types import ROLES
from torch import nn

from .base import QuantModule

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm}
_ADD_METHODS = {"add"}
_MATMUL_METHODS = {"matmul", "bmm"}


class QuantAdd(QuantModule, nn.Module):
    """``a + b`` with both tensor operands quantized (a residual addition)."""

    name = "add"
    module_types = ()  # created by quantize_functions, never swapped for a module type
    roles = ("input",)

    def _qbench_setup(self) -> None:
        self._q_input = self._point("input")

    def forward(self, a: Any, b: Any) -> Any:
        if self._q_input is not None:
            a = self._q_input(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            b = self._q_input(b) if isinstance(b, torch.Tensor) and b.is_floating_point() else b
        return a + b


class QuantMatmul(QuantModule, nn.Module):
    """``a @ b`` with both operands quantized along the reduction axis."""

    name = "matmul"
    module_types = ()
    roles = ("input",)

    def _qbench_setup(self) -> None:
        self._q_left = self._point("input", default_axis=-1)
        self._q_right = self._point("input", default_axis=-2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self._q_left is not None:
            a = self._q_left(a)
            b = self._q_right(b) if b.dim() > 1 else self._q_left(b)  # type: ignore[misc]
        return torch.matmul(a, b)


def _new(cls: type[QuantModule], specs: LayerSpecs, name: str) -> QuantModule:
    return cls.from_module(nn.Module(), specs, name=name)  # type: ignore[return-value]


class _Tracer(fx.Tracer):
    """Quantized modules (and torch's own leaves) are not traced into."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, QuantModule) or super().is_leaf_module(m, module_qualified_name)


def _kind(node: fx.Node) -> type[QuantModule] | None:
    if node.kwargs or len(node.args) != 2:  # alpha=..., out=...: leave alone
        return None
    if node.op == "call_function":
        if node.target in _ADD_FUNCTIONS:
            return QuantAdd
        if node.target in _MATMUL_FUNCTIONS:
            return QuantMatmul
    if node.op == "call_method":
        if node.target in _ADD_METHODS:
            return QuantAdd
        if node.target in _MATMUL_METHODS:
            return QuantMatmul
    return None


def _scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last_key, last_value = list(stack.items())[-1]
    path = last_value[0] if isinstance(last_value, tuple) else last_key
    return str(path)


def quantize_functions(model_q: nn.Module, spec: Mapping[str, Any] | QuantSpec) -> fx.GraphModule:
    """The twin from ``qbench.prepare`` with its functional adds and matmuls quantized too.

    ``spec`` is the same ``quantization`` mapping (or QuantSpec) given to ``qbench.prepare``.
    """
    report = preparation_report(model_q)
    tracer = _Tracer()
    try:
        graph = tracer.trace(model_q)
    except Exception as exc:  # torch.fx refuses data-dependent control flow
        raise QBenchError(
            f"torch.fx cannot trace {type(model_q).__name__} ({type(exc).__name__}: {exc}); "
            "functional adds/matmuls stay FP32, use the twin from qbench.prepare as is"
        ) from exc
    module = fx.GraphModule(tracer.root, graph, class_name=type(model_q).__name__)
    taken = {name for name, _ in module.named_modules()}
    added: list[dict[str, Any]] = []
    disabled: list[tuple[str, QuantModule]] = []
    for node in list(graph.nodes):
        cls = _kind(node)
        if cls is None:
            continue
        scope = _scope(node)
        base = f"{scope}.{cls.name}" if scope else cls.name
        name, count = base, 0
        while name in taken:  # add, add_1, add_2... within each module
            count += 1
            name = f"{base}_{count}"
        taken.add(name)
        if isinstance(spec, QuantSpec):
            specs = LayerSpecs(**{role: spec for role in ROLES})
        else:
            probe = _new(cls, LayerSpecs(), name)
            specs = layer_specs(spec, name, probe)
        if specs.input is None:
            disabled.append((name, _new(cls, LayerSpecs(), name)))
            report["not_quantized"].append(
                {
                    "name": name,
                    "type": cls.__name__,
                    "reason": "input quantization disabled for this function",
                }
            )
            continue
        quantized = _new(cls, specs, name)
        module.add_submodule(name, quantized)
        with graph.inserting_after(node):
            replacement = graph.call_module(name, args=node.args)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        added.append(
            {
                "name": name,
                "type": "function",
                "op": cls.name,
                "roles": quantized.qbench_roles(),
                "observable": True,
            }
        )
    graph.lint()
    module.recompile()
    if not isinstance(spec, QuantSpec):
        check_layer_patterns(
            spec, module, disabled
        )  # names now include the functions: typos still fail
    report["quantized"].extend(added)
    setattr(module, REPORT_ATTRIBUTE, report)
    return module
