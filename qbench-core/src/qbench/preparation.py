"""Model preparation: the quantized twin of a model, built through the op registry.

The public function is ``qbench.prepare``; this module (``qbench.preparation``) holds it and
what inspects a prepared twin (:func:`preparation_report`, :func:`observe`...).

``prepare(model, spec)`` deep-copies the model and replaces every module whose type a
registered op claims (``qbench_register_ops``) with ``op.from_module(module, specs, name=...)``,
where ``specs`` is the layer's :class:`~qbench.types.LayerSpecs` resolved by
:func:`qbench.spec.layer_specs` (per-role settings, presets, ``layers:`` overrides). Core knows
no concrete op; everything below is generic over what plugins registered.

The twin carries a record of what was done (:func:`preparation_report`): which modules were
quantized, with which spec per role, and which stayed FP32 and why, so nothing is silently left
unquantized.

Observation protocol (what :func:`observe` relies on): a swapped module may implement
``qbench_attach_observer(observer)`` — report its cached weight/statistics QuantResults to
``observer.on_tensor(layer, role, result)`` now, then every quantization it performs in forward
passes — and ``qbench_detach_observer(observer)``. Modules without these methods are not
observable and are listed in the report with ``"observable": False``.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, QBenchError
from .spec import layer_override, layer_specs, override_matches
from .types import ROLES, LayerSpecs, QuantSpec

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: Attribute of the twin's root module holding the preparation report.
REPORT_ATTRIBUTE = "_qbench_preparation"
#: Attribute of the twin's root holding what ops installed on the whole model (``install``):
#: observed like quantized modules (functional calls quantized as they run).
OBSERVABLES_ATTRIBUTE = "_qbench_observables"

__all__ = ["observe", "preparation_report", "prepare", "quantized_modules"]


def prepare(model: nn.Module, spec: Mapping[str, Any] | QuantSpec) -> nn.Module:
    """The quantized twin of ``model``: a deep copy with modules swapped by registered ops.

    ``spec`` is a config's ``quantization`` mapping, or one :class:`QuantSpec` applied to every
    role of every layer. A mapping is validated exactly as ``qbench validate`` validates a
    config's ``quantization:`` section (unknown keys and values, ``chunk_size: 0``, a role
    setting for a role without a format...): :class:`~qbench.errors.ConfigError` lists every
    problem, one line each. The original model is untouched and shares no tensor with the
    twin. A ``layers:`` override that matches no module is an error (a typo must not silently
    run FP32); module types no op claims stay FP32 and are listed in the report.
    """
    from torch import nn

    if not isinstance(model, nn.Module):
        raise QBenchError(
            f"qbench.prepare: expected a torch.nn.Module, found {type(model).__name__}"
        )
    if isinstance(spec, QuantSpec):
        q: Mapping[str, Any] | None = None
        uniform = LayerSpecs(**{role: spec for role in ROLES})
    elif isinstance(spec, Mapping):
        from .config import check_quantization

        problems = check_quantization(spec, "qbench.prepare")
        if problems:
            raise ConfigError(problems)
        q = spec
        uniform = None
        check_layer_patterns(q, model)
    else:
        raise QBenchError(
            f"qbench.prepare: spec must be a quantization mapping or a QuantSpec, found {type(spec).__name__}"
        )

    rewrites: list[dict[str, Any]] = []
    for op in ops_with("rewrite"):  # deployment-shaped graphs first (BatchNorm folding)
        model, done = op.rewrite(model, q or {})
        rewrites.extend(done or ())
    ops = _ops_by_type()
    twin = copy.deepcopy(model)
    quantized: list[dict[str, Any]] = []
    not_quantized: list[dict[str, Any]] = []
    swapped: dict[int, nn.Module] = {}  # id(original submodule) -> twin (shared submodules)

    def specs_for(name: str, module: nn.Module) -> LayerSpecs:
        return uniform if uniform is not None else layer_specs(q or {}, name, module)

    def disabled_reason(name: str, module: nn.Module) -> str:
        if q is not None:
            hit = layer_override(q, name, module)
            if hit is not None and hit[1].get("enabled", True) is False:
                return f"disabled by quantization.layers[{hit[0]}]"
        return "quantization disabled for every role of this layer"

    weight_specs: dict[str, QuantSpec | None] = {}

    def visit(module: nn.Module, name: str) -> nn.Module:
        """The module to put at ``name``: its twin if an op claims it, else itself with its
        children visited."""
        if id(module) in swapped:
            return swapped[id(module)]
        op, own_forward = _op_for(module, ops)
        type_name = _type_name(module)
        if op is not None:
            # A subclass with a forward of its own gets a twin that keeps it, where the op
            # can make one (``from_subclass``); its children are prepared as modules of
            # their own. Either way a module left FP32 is listed with the reason.
            specs = specs_for(name, module)
            done = visit_children if own_forward else (lambda kept, _name: kept)
            reason, new = None, None
            if not any(specs.get(role) is not None for role in getattr(op, "roles", ROLES)):
                reason = disabled_reason(name, module)
            elif own_forward:
                make = getattr(op, "from_subclass", None)
                new = make(module, specs, name=name) if make is not None else None
                if new is None:
                    reason = (
                        f"{type_name} has its own forward, which op {op.name!r} cannot quantize"
                    )
            else:
                unsupported = getattr(op, "unsupported_reason", None)
                why = unsupported(module) if unsupported is not None else None
                reason = f"op {op.name!r}: {why}" if why is not None else None
                new = op.from_module(module, specs, name=name) if why is None else None
            if reason is not None:
                not_quantized.append({"name": name, "type": type_name, "reason": reason})
                return done(module, name)
            swapped[id(module)] = new
            weight_specs[name] = specs.get("weight")
            quantized.append(
                {
                    "name": name,
                    "type": type_name,
                    "op": op.name,
                    "roles": _roles(op, new, specs),
                    "observable": hasattr(new, "qbench_attach_observer"),
                    **({"own_forward": True} if own_forward else {}),
                }
            )
            return done(new, name)
        children = [(n, c) for n, c in module._modules.items() if c is not None]
        own = [n for n, _ in module.named_parameters(recurse=False)]
        own += [n for n, b in module.named_buffers(recurse=False) if b is not None]
        if not children:
            not_quantized.append(
                {"name": name, "type": type_name, "reason": f"no op registered for {type_name}"}
            )
        elif own:
            not_quantized.append(
                {
                    "name": name,
                    "type": type_name,
                    "reason": f"no op registered for {type_name}; its own tensors stay FP32: {', '.join(own)}",
                }
            )
        return visit_children(module, name)

    def visit_children(module: nn.Module, name: str) -> nn.Module:
        # every slot, not named_children(), which skips a module seen under an earlier name
        for child_name, child in list(module._modules.items()):
            if child is None:
                continue
            full = f"{name}.{child_name}" if name else child_name
            new_child = visit(child, full)
            if new_child is not child:
                setattr(module, child_name, new_child)
        return module

    root = visit(twin, "")
    report = {"quantized": quantized, "not_quantized": not_quantized}
    if rewrites:
        report["rewrites"] = rewrites
    report["coverage"] = weight_coverage(root, report, weight_specs)
    setattr(root, REPORT_ATTRIBUTE, report)

    observables = []
    specs_for_call = CallSpecs(q, uniform)
    for op in ops_with("install"):
        installed = op.install(
            root, q, specs_for_call, owned=[entry["name"] for entry in quantized]
        )
        if installed is not None:
            observables.append(installed)
    object.__setattr__(root, OBSERVABLES_ATTRIBUTE, observables)
    return root


class CallSpecs:
    """The specs of a functional call site (``<module>:<function>#<n>``) inside a module's
    forward, for ops that quantize calls (``install``): a ``layers:`` entry that names the
    site wins, else the module's own resolution. A class, not a closure, so a twin holding
    it pickles."""

    def __init__(self, q: Mapping[str, Any] | None, uniform: LayerSpecs | None) -> None:
        self.q = dict(q or {})
        self.uniform = uniform

    def __call__(self, site: str, module_name: str, module: nn.Module) -> LayerSpecs:
        if self.uniform is not None:
            return self.uniform
        if layer_override(self.q, site, module) is not None:
            return layer_specs(self.q, site, module)
        return layer_specs(self.q, module_name, module)


#: How many unquantized modules the coverage names (largest first).
LARGEST_LISTED = 5


def storage_bits(spec: QuantSpec, shape: tuple[int, ...]) -> float | None:
    """Bits per element of a tensor of ``shape`` stored in ``spec``: the element format's
    bits plus each scale's bits shared by its group (a tensor, a channel, a chunk), and a
    second-level scale's over the tensor. MXFP4 4 + 8/32 = 4.25; NVFP4 4 + 8/16 (+ 32 per
    tensor); fp8 in chunks of 128 with fp32 scales 8.25. None when a format does not state
    its ``bits`` or is not installed."""
    from .plugins import get

    def bits_of(name: str) -> float | None:
        try:
            bits = getattr(get("format", name), "bits", None)
        except QBenchError:  # a scale format no installed plugin provides: unknown size
            return None
        return float(bits) if isinstance(bits, (int, float)) else None

    element, scale = bits_of(spec.format), bits_of(spec.scaling.scale_format)
    if element is None or scale is None:
        return None
    elements = 1
    for size in shape:
        elements *= int(size)
    if elements == 0:
        return element
    scaling = spec.scaling
    if scaling.mode == "chunk" and scaling.chunk_size:
        group = float(min(scaling.chunk_size, elements))
    elif scaling.mode == "channel" and shape:
        axis = scaling.axis if scaling.axis is not None else 0
        group = elements / max(int(shape[axis % len(shape)]), 1)
    else:
        group = float(elements)
    bits = element + scale / group
    if scaling.second_level:
        second = bits_of(scaling.second_level)
        bits += (second or 0.0) / elements
    return bits


def weight_coverage(
    twin: nn.Module,
    report: Mapping[str, Any],
    weight_specs: Mapping[str, QuantSpec | None] | None = None,
) -> dict[str, Any]:
    """The share of the model's weight elements that run quantized, and the bits they take.

    ``weight_bits`` is the mean storage of a weight element in bits (:func:`storage_bits`,
    scales counted; a weight left FP32 counts 32), ``weight_bits_quantized`` the same over
    the quantized weights only: the effective bits a sweep plots accuracy against.

    Weight elements are the elements of every parameter except biases (which accelerators
    add in the accumulator, so QBench keeps them FP32 by design), each shared parameter once.
    A parameter counts as quantized when it belongs to a module whose ``weight`` role is
    quantized: the module's own parameters, and those of its children where the op took the
    module whole (attention's projections). ``largest_unquantized`` names the biggest modules
    left FP32 and why."""

    def weights(module: nn.Module, recurse: bool) -> dict[int, int]:
        return {id(p): p.numel() for p in _weights(module, recurse)}

    total = weights(twin, True)
    quantized: dict[int, int] = {}
    stored: dict[int, float | None] = {}
    for entry in report["quantized"]:
        if "weight" in entry["roles"]:
            module = twin.get_submodule(entry["name"])
            own = _weights(module, not entry.get("own_forward", False))
            quantized.update({id(p): p.numel() for p in own})
            spec = (weight_specs or {}).get(entry["name"])
            for p in own:
                stored[id(p)] = storage_bits(spec, tuple(p.shape)) if spec is not None else None
    reasons = {entry["name"]: entry["reason"] for entry in report["not_quantized"]}
    left: list[dict[str, Any]] = []
    counted = set(quantized)
    for name, module in twin.named_modules():
        own = {k: v for k, v in weights(module, False).items() if k not in counted}
        if own:
            reason = reasons.get(name) or "its weight role is not quantized"
            row = {"name": name, "type": type(module).__name__, "elements": sum(own.values())}
            left.append({**row, "reason": reason})
            counted.update(own)  # a shared parameter is named once
    elements = sum(total.values())
    done = sum(quantized.values())
    left.sort(key=lambda row: -row["elements"])
    out: dict[str, Any] = {
        "weight_elements": elements,
        "weight_elements_quantized": done,
        "weight_share": done / elements if elements else 1.0,
        "largest_unquantized": left[:LARGEST_LISTED],
    }
    if weight_specs is not None and all(stored.get(key) is not None for key in quantized):
        quantized_bits = sum(quantized[key] * (stored[key] or 0.0) for key in quantized)
        out["weight_bits"] = (
            (quantized_bits + 32.0 * (elements - done)) / elements if elements else None
        )
        out["weight_bits_quantized"] = quantized_bits / done if done else None
    return out


def _weights(module: nn.Module, recurse: bool) -> list[nn.Parameter]:
    """Weight tensors of ``module``: its parameters less biases (accelerators add biases in
    the accumulator, so QBench keeps them FP32 by design)."""
    return [
        p
        for n, p in module.named_parameters(recurse=recurse)
        if not n.rsplit(".", 1)[-1].startswith("bias")
    ]


def preparation_report(model_q: nn.Module) -> dict[str, Any]:
    """What :func:`prepare` did: ``{"quantized": [{"name", "type", "op", "roles": {role:
    spec.describe()}, "observable"}...], "not_quantized": [{"name", "type", "reason"}...],
    "coverage": {...}}`` (see :func:`weight_coverage`)."""
    report = getattr(model_q, REPORT_ATTRIBUTE, None)
    if report is None:
        raise QBenchError(
            f"{type(model_q).__name__} was not returned by qbench.prepare: it has no preparation report"
        )
    return copy.deepcopy(report)


def quantized_modules(model_q: nn.Module) -> dict[str, nn.Module]:
    """Every module :func:`prepare` swapped, by its qualified name (unchanged from the FP32
    model, so forward hooks on the same names compare the two layer by layer)."""
    report = preparation_report(model_q)
    return {entry["name"]: model_q.get_submodule(entry["name"]) for entry in report["quantized"]}


@contextmanager
def observe(model_q: nn.Module, observer: Any) -> Iterator[Any]:
    """While active, ``observer.on_tensor(layer, role, result)`` is called for every
    quantization a forward pass of ``model_q`` uses (``result.dequantized`` is the exact
    tensor used), and once on entry for each cached weight and statistic. Outside it no codes
    are computed (the fast path)."""
    if not callable(getattr(observer, "on_tensor", None)):
        raise QBenchError(
            f"observer {type(observer).__name__} has no on_tensor(layer, role, result) method"
        )
    attached: list[Any] = []
    seen: set[int] = set()
    extra = getattr(model_q, OBSERVABLES_ATTRIBUTE, ())
    try:
        for module in [*quantized_modules(model_q).values(), *extra]:
            attach = getattr(module, "qbench_attach_observer", None)
            if attach is None or id(module) in seen:
                continue
            seen.add(id(module))
            attach(observer)
            attached.append(module)
        yield observer
    finally:
        for module in attached:
            module.qbench_detach_observer(observer)


# --------------------------------------------------------------------------------------
# Overrides that match nothing
# --------------------------------------------------------------------------------------


def check_layer_patterns(
    q: Mapping[str, Any], model: nn.Module, extra: Iterable[tuple[str, Any]] = ()
) -> None:
    """Refuse a ``layers:`` entry that matches no module of ``model`` (nor any of the
    ``extra`` ``(name, module)`` candidates), naming the pattern and the closest module names
    (or types), so a typo never silently runs a layer in FP32."""
    modules = [*model.named_modules(), *extra]
    names = [name for name, _ in modules if name]
    for index, entry in enumerate(q.get("layers") or ()):
        if not isinstance(entry, Mapping):
            continue
        if any(override_matches(entry, name, module) for name, module in modules):
            continue
        pattern = entry.get("match")
        if isinstance(pattern, str) and ":" in pattern:
            # a call site (``blocks.3.attn:matmul#1``): its module part must name a module
            owner = pattern.split(":", 1)[0]
            site = {**entry, "match": owner or "*"}
            if any(override_matches(site, name, module) for name, module in modules):
                continue
        where = f"quantization.layers[{index}]"
        pattern, type_name = entry.get("match"), entry.get("type")
        if pattern is not None and not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.0)
            raise QBenchError(
                f"{where}: match {pattern!r} matches no module of the model; closest module names: "
                + ", ".join(close)
            )
        types = sorted(
            {
                cls.__name__
                for _, m in modules
                for cls in type(m).__mro__
                if cls.__module__ != "builtins"
            }
        )
        if type_name is not None and pattern is None:
            close = difflib.get_close_matches(type_name, types, n=3, cutoff=0.0)
            raise QBenchError(
                f"{where}: type {type_name!r} matches no module of the model; closest module types: "
                + ", ".join(close)
            )
        matching = [n for n in names if fnmatch.fnmatchcase(n, pattern)][:3]
        raise QBenchError(
            f"{where}: no module matches both match {pattern!r} and type {type_name!r}; "
            f"modules matching the pattern: {', '.join(matching)}"
        )


# --------------------------------------------------------------------------------------
# Op lookup
# --------------------------------------------------------------------------------------


def _ops_by_type() -> dict[type, Any]:
    """Module type -> op class, from every registered op; two ops claiming one type is an
    error naming both (and their distributions)."""
    from .plugins import registry

    reg = registry("op")
    by_type: dict[type, Any] = {}
    owner: dict[type, str] = {}
    for name, op in reg.items():
        for module_type in getattr(op, "module_types", ()):
            if module_type in by_type:
                first = owner[module_type]
                raise QBenchError(
                    f"ops {first!r} ({reg.plugin_of(first).label}) and {name!r} "
                    f"({reg.plugin_of(name).label}) both claim {_qualname(module_type)}; "
                    "uninstall one or block it with QBENCH_DISABLE_PLUGINS"
                )
            by_type[module_type] = op
            owner[module_type] = name
    return by_type


def ops_with(method: str) -> list[Any]:
    """Registered ops that act on the whole model through ``method`` (``rewrite`` before
    modules are swapped, ``install`` after), in registration order."""
    from .plugins import registry

    return [op for _, op in registry("op").items() if callable(getattr(op, method, None))]


def _op_for(module: nn.Module, ops: Mapping[type, Any]) -> tuple[Any, bool]:
    """The op for ``module``'s type or its nearest base type, and whether ``module``'s class
    has a ``forward`` of its own (a subclass such as timm's ``Conv2dSame``: the op's
    ``from_subclass`` then keeps that forward; a subclass that does not change ``forward``,
    e.g. ``NonDynamicallyQuantizableLinear``, is swapped like its base)."""
    cls = type(module)
    if cls in ops:
        return ops[cls], False
    for base in cls.__mro__[1:]:
        if base in ops:
            return ops[base], cls.forward is not base.forward
    return None, False


def _roles(op: Any, new: Any, specs: LayerSpecs) -> dict[str, str]:
    roles = getattr(new, "qbench_roles", None)
    if callable(roles):
        return dict(roles())
    return {
        role: spec.describe()
        for role in getattr(op, "roles", ROLES)
        if (spec := specs.get(role)) is not None
    }


def _type_name(module: Any) -> str:
    return type(module).__name__


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
