"""BatchNorm folding: the deployment-shaped graph that quantization toolkits measure.

Inference compilers (TensorRT, OpenVINO, TFLite) and quantization toolkits (MQBench,
Brevitas, ModelOpt) fold an eval-mode BatchNorm into the convolution or linear layer whose
output it normalizes *before* the weights are quantized, so the quantized weight is
``W * gamma / sqrt(var + eps)``, not ``W``. :func:`fold_batchnorm` builds that graph:

    W' = W * gamma / sqrt(var + eps)                 (per output channel)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta

and replaces the BatchNorm by ``nn.Identity()`` (or, for a BatchNorm that also applies an
activation, such as timm's ``BatchNormAct2d``, by what it runs after the normalization).

"Directly follows" means: the BatchNorm's input is the conv's output and nothing else uses
that output. It is found from a ``torch.fx`` graph where the model traces (conv, linear and
BatchNorm modules, subclasses included, are kept as leaves), and otherwise by a heuristic
over module order (``nn.Sequential`` neighbours, a conv attribute registered just before a
BatchNorm attribute, ``convN``/``bnN`` names) whose candidates must pass one forward pass
on ``example_inputs`` that checks, by tensor identity, that the BatchNorm receives exactly
the conv's output and that no other torch call (and not the model's return value) uses it.
Every fold is also checked on a small probe input before it is kept, which catches convs
whose forward is not linear in their weight (weight standardization, a LoRA branch).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from qbench.errors import QBenchError
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["fold_batchnorm"]

FoldMethod = Literal["auto", "fx", "hooks"]

# A fold must reproduce conv -> BatchNorm on the probe input to within float32 accuracy.
_PROBE_RTOL = 1e-4
_PROBE_ATOL = 1e-5  # times the reference output's largest magnitude

# Tensor attributes that read metadata only; reading them is not a use of the values.
_METADATA_ATTRIBUTES = frozenset(
    {"shape", "ndim", "dtype", "device", "layout", "is_cuda", "requires_grad", "names"}
)
_METADATA_METHODS = frozenset({"size", "dim", "numel", "stride", "is_contiguous", "data_ptr"})


def fold_batchnorm(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[Any, ...] | None = None,
    *,
    method: FoldMethod = "auto",
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Fold each eval-mode BatchNorm into the conv or linear layer it directly follows.

    :param model: the model; it is not modified (a deep copy is folded and returned).
    :param example_inputs: positional inputs for one forward pass (a tensor or a tuple).
        Needed by the module-order heuristic (``method="hooks"``, or ``"auto"`` when the
        model does not trace) and to confirm a ``Linear -> BatchNorm1d`` pair normalizes
        the linear's features; with them, fx-found pairs are verified the same way too.
    :param method: ``"fx"`` (trace, raise if the model does not trace), ``"hooks"`` (the
        module-order heuristic only) or ``"auto"`` (fx, falling back to the heuristic).
    :returns: ``(folded_model, report)``. The report has one entry per BatchNorm, in module
        order: ``{"conv": name, "bn": name}`` for a fold, ``{"bn": name, "reason": why}``
        for a BatchNorm left in place.
    """
    if method not in ("auto", "fx", "hooks"):
        raise QBenchError(f"fold_batchnorm: unknown method {method!r}; allowed: auto, fx, hooks")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)

    folded = copy.deepcopy(model)
    batchnorms = {name: module for name, module in folded.named_modules() if _is_batchnorm(module)}
    left: dict[str, str] = {}
    candidates: dict[str, str] = {}  # bn name -> conv name
    graph_proven = False

    trace_error: Exception | None = None
    if method in ("auto", "fx"):
        try:
            candidates, left = _candidates_from_fx(folded, batchnorms)
            graph_proven = True
        except Exception as error:  # fx raises many types for untraceable code
            if method == "fx":
                raise QBenchError(
                    f"fold_batchnorm: {type(model).__name__} is not traceable by torch.fx "
                    f"({type(error).__name__}: {error}); use method='hooks' with example_inputs"
                ) from error
            trace_error = error
    if not graph_proven:
        candidates, left = _candidates_from_module_order(folded, batchnorms)
        if example_inputs is None:
            why = (
                f"not traceable by torch.fx ({type(trace_error).__name__}: {trace_error}) and "
                if trace_error is not None
                else ""
            )
            for bn_name in candidates:
                left[bn_name] = (
                    f"model {why}no example_inputs were given to verify the module-order "
                    f"candidate {' or '.join(map(repr, candidates[bn_name]))} with a forward pass"
                )
            candidates = {}

    if example_inputs is not None and candidates:
        candidates, verified_left, shapes = _verify_by_forward(
            model, folded, candidates, example_inputs
        )
        left.update(verified_left)
    else:
        shapes = {}

    modules = dict(folded.named_modules())
    folds: dict[str, str] = {}
    for bn_name, conv_name in candidates.items():
        conv, bn = modules[conv_name], modules[bn_name]
        if isinstance(conv, nn.Linear):
            ndim = shapes.get(conv_name)
            if ndim is None:
                left[bn_name] = (
                    f"follows Linear {conv_name!r}, but only a forward pass can confirm it "
                    "normalizes the linear's features: pass example_inputs"
                )
                continue
            if ndim != 2:
                left[bn_name] = (
                    f"follows Linear {conv_name!r} whose output has {ndim} dims, so the "
                    "BatchNorm normalizes another axis than the linear's features"
                )
                continue
        elif conv_name in shapes and shapes[conv_name] != conv.weight.ndim:
            left[bn_name] = (
                f"follows {type(conv).__name__} {conv_name!r} on unbatched input, so the "
                "BatchNorm normalizes another axis than its channels"
            )
            continue
        reason = _fold_pair(folded, conv_name, conv, bn_name, bn)
        if reason is None:
            folds[bn_name] = conv_name
        else:
            left[bn_name] = reason

    report: list[dict[str, Any]] = []
    for bn_name in batchnorms:
        if bn_name in folds:
            report.append({"conv": folds[bn_name], "bn": bn_name})
        else:
            report.append({"bn": bn_name, "reason": left.get(bn_name, "not folded")})
    return folded, report


# ---------------------------------------------------------------------------------------
# What counts as a BatchNorm and as a foldable producer
# ---------------------------------------------------------------------------------------


def _is_frozen_batchnorm(module: nn.Module) -> bool:
    # torchvision.ops.FrozenBatchNorm2d (detection backbones): statistics as buffers, always
    # applied, not a _BatchNorm subclass. Matched by name so torchvision stays optional.
    cls = type(module)
    return cls.__name__ == "FrozenBatchNorm2d" and cls.__module__.startswith("torchvision.")


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm) or _is_frozen_batchnorm(module)


def _is_producer(module: nn.Module) -> bool:
    return isinstance(module, (_ConvNd, nn.Linear))


def _forward_owner(module: nn.Module) -> type:
    """The class in the module's MRO that defines the ``forward`` it runs."""
    for cls in type(module).__mro__:
        if "forward" in vars(cls):
            return cls
    return nn.Module


def _runs_activation_after(bn: nn.Module) -> bool:
    # timm.layers.norm_act: BatchNormAct2d.forward is batch_norm -> self.drop -> self.act;
    # SyncBatchNormAct.forward is the same with both children optional.
    owner = _forward_owner(bn)
    return owner.__module__.startswith("timm.") and owner.__name__ in {
        "BatchNormAct2d",
        "SyncBatchNormAct",
    }


def _replacement_for(bn: nn.Module) -> nn.Module:
    """What runs in place of a folded BatchNorm: nothing, or what its subclass adds."""
    owner = _forward_owner(bn)
    if owner.__module__.startswith("torch.nn.") or _is_frozen_batchnorm(bn):
        return nn.Identity()
    if _runs_activation_after(bn):
        tail = [
            child
            for child in (getattr(bn, "drop", None), getattr(bn, "act", None))
            if child is not None and not isinstance(child, nn.Identity)
        ]
        return nn.Sequential(*tail) if tail else nn.Identity()
    # An unknown subclass: keep the module, so whatever its forward adds still runs, with
    # its normalization made an exact identity (mean 0, var 1, eps 0, weight 1, bias 0).
    # The probe in _fold_pair checks the result.
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        if bn.weight is not None:
            bn.weight.fill_(1.0)
        if bn.bias is not None:
            bn.bias.zero_()
    bn.eps = 0.0
    return bn


def _unfoldable_batchnorm(bn: nn.Module) -> str | None:
    if bn._forward_hooks or bn._forward_pre_hooks:
        return "has forward hooks"
    if _is_frozen_batchnorm(bn):
        return None
    if bn.training:
        return "in training mode (normalizes with batch statistics): call model.eval() first"
    if bn.running_mean is None or bn.running_var is None:
        return "has no running statistics (track_running_stats=False)"
    return None


def _unfoldable_producer(model: nn.Module, name: str, conv: nn.Module, bn: nn.Module) -> str | None:
    kind = type(conv).__name__
    if isinstance(conv, _ConvNd) and conv.transposed:
        return f"follows transposed convolution {name!r} ({kind}), which is not folded"
    if isinstance(conv.weight, nn.parameter.UninitializedParameter):
        return f"follows uninitialized lazy module {name!r}"
    if torch.nn.utils.parametrize.is_parametrized(conv):
        return f"follows {name!r}, whose weight is parametrized"
    if conv._forward_hooks or conv._forward_pre_hooks:
        return f"follows {name!r}, which has forward hooks (they may recompute its weight)"
    out_channels = conv.out_channels if isinstance(conv, _ConvNd) else conv.out_features
    features = bn.running_mean.numel()
    if out_channels != features:
        return f"follows {name!r} with {out_channels} output channels, but has {features} features"
    own = {id(conv.weight)} | ({id(conv.bias)} if conv.bias is not None else set())
    users = [
        other
        for other_name, other in model.named_modules(remove_duplicate=False)
        if other is not conv and any(id(p) in own for p in other.parameters(recurse=False))
    ]
    if users:
        return f"follows {name!r}, whose weight or bias is shared with another module"
    return None


# ---------------------------------------------------------------------------------------
# Finding pairs: torch.fx
# ---------------------------------------------------------------------------------------


class _LeafTracer(fx.Tracer):
    """Keeps convs, linears and BatchNorms, subclasses included, as single graph nodes, so a
    subclass with its own forward (timm's Conv2dSame, BatchNormAct2d) is no obstacle."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if _is_producer(module) or _is_batchnorm(module):
            return True
        return super().is_leaf_module(module, qualified_name)


def _module_aliases(model: nn.Module) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        counts[id(module)] = counts.get(id(module), 0) + 1
    return counts


def _candidates_from_fx(
    model: nn.Module, batchnorms: dict[str, nn.Module]
) -> tuple[dict[str, str], dict[str, str]]:
    graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())
    aliases = _module_aliases(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    candidates: dict[str, str] = {}
    left: dict[str, str] = {}
    for bn_name, bn in batchnorms.items():
        reason = _unfoldable_batchnorm(bn)
        if reason is None and aliases[id(bn)] > 1:
            reason = "is registered under several names"
        if reason is None and calls.get(bn_name, 0) != 1:
            reason = f"is called {calls.get(bn_name, 0)} times in forward (folding needs once)"
        if reason is not None:
            left[bn_name] = reason
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in batchnorms or node.target in left:
            continue
        bn_name = node.target
        source = node.args[0] if node.args else None
        if len(node.args) != 1 or node.kwargs or not isinstance(source, fx.Node):
            left[bn_name] = "is called with other arguments than one tensor"
            continue
        producer = modules.get(source.target) if source.op == "call_module" else None
        if producer is None or not _is_producer(producer):
            what = (
                f"module {source.target!r} ({type(producer).__name__})"
                if producer is not None
                else f"{source.op} {getattr(source.target, '__name__', source.target)!r}"
            )
            left[bn_name] = f"does not follow a conv or linear layer (its input comes from {what})"
            continue
        if len(source.users) != 1:
            users = ", ".join(str(user) for user in source.users if user is not node)
            left[bn_name] = f"follows {source.target!r}, whose output is also used by {users}"
            continue
        if calls.get(source.target, 0) != 1 or aliases[id(producer)] > 1:
            left[bn_name] = f"follows {source.target!r}, which runs more than once in forward"
            continue
        candidates[bn_name] = source.target
    return candidates, left


# ---------------------------------------------------------------------------------------
# Finding pairs without tracing: module order, then one verified forward pass
# ---------------------------------------------------------------------------------------


def _candidates_from_module_order(
    model: nn.Module, batchnorms: dict[str, nn.Module]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Per BatchNorm, the convs it might follow: its previous sibling in an ``nn.Sequential``
    or in registration order (torchvision's ``conv1``/``bn1``, timm's ``conv_dw``/``bn2``),
    and a ``convX`` sibling for a ``bnX`` (``X`` a suffix such as ``1`` or ``_dw``)."""
    aliases = _module_aliases(model)
    candidates: dict[str, list[str]] = {}
    left: dict[str, str] = {}
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        names = {child_name for child_name, _ in children}
        for index, (child_name, child) in enumerate(children):
            bn_name = f"{parent_name}.{child_name}" if parent_name else child_name
            if bn_name not in batchnorms:
                continue
            reason = _unfoldable_batchnorm(child)
            if reason is None and aliases[id(child)] > 1:
                reason = "is registered under several names"
            if reason is not None:
                left[bn_name] = reason
                continue
            found: list[str] = []
            if index > 0 and _is_producer(children[index - 1][1]):
                found.append(children[index - 1][0])
            for prefix in ("bn", "norm"):
                if child_name.startswith(prefix):
                    partner = "conv" + child_name[len(prefix) :]
                    if partner in names and partner not in found:
                        if _is_producer(getattr(parent, partner)):
                            found.append(partner)
            if found:
                candidates[bn_name] = [
                    f"{parent_name}.{conv}" if parent_name else conv for conv in found
                ]
            else:
                left[bn_name] = (
                    "does not follow a conv or linear layer in module order (without a torch.fx "
                    "graph only nn.Sequential neighbours and conv/bn attribute pairs are "
                    "considered)"
                )
    # the first candidate is the caller's guess only until the forward pass decides
    return candidates, left


class _UseRecorder(TorchFunctionMode):
    """Records every torch call that reads a watched tensor's values, outside the watched
    BatchNorm that is allowed to consume it."""

    def __init__(self, watched: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.watched = watched  # id -> tensor (the reference keeps the id unique)
        self.allowed: list[int] = []  # ids of inputs of the BatchNorms now running
        self.uses: dict[int, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if self.watched and not _reads_metadata_only(func):
            for value in tree_flatten((args, kwargs))[0]:
                key = id(value)
                if key in self.watched and self.watched[key] is value and key not in self.allowed:
                    self.uses.setdefault(key, _function_name(func))
        return func(*args, **kwargs)


def _function_name(func: Any) -> str:
    owner = getattr(func, "__self__", None)
    if getattr(func, "__name__", "") == "__get__" and owner is not None:
        return f"Tensor.{getattr(owner, '__name__', owner)}"
    return getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))


def _reads_metadata_only(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", "") in _METADATA_ATTRIBUTES
    return name in _METADATA_METHODS


@dataclass
class _Seen:
    calls: int = 0
    tensor: Any = None


def _verify_by_forward(
    original: nn.Module,
    model: nn.Module,
    candidates: dict[str, str] | dict[str, list[str]],
    example_inputs: tuple[Any, ...],
) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """Run one forward pass and keep the (bn, conv) pairs in which the BatchNorm's input is
    the very tensor object the conv returned, each ran once, and nothing else read it."""
    modules = dict(model.named_modules())
    wanted = {
        bn: [conv] if isinstance(conv, str) else list(conv) for bn, conv in candidates.items()
    }
    conv_names = {conv for convs in wanted.values() for conv in convs}
    outputs = {name: _Seen() for name in conv_names}
    inputs = {name: _Seen() for name in wanted}
    watched: dict[int, torch.Tensor] = {}
    recorder = _UseRecorder(watched)

    def after_conv(name: str):  # type: ignore[no-untyped-def]
        def hook(module, args, output):  # type: ignore[no-untyped-def]
            seen = outputs[name]
            seen.calls += 1
            seen.tensor = output
            if isinstance(output, torch.Tensor):
                watched[id(output)] = output

        return hook

    def before_bn(name: str):  # type: ignore[no-untyped-def]
        def hook(module, args):  # type: ignore[no-untyped-def]
            seen = inputs[name]
            seen.calls += 1
            seen.tensor = args[0] if len(args) == 1 else None
            recorder.allowed.append(id(seen.tensor))

        return hook

    def after_bn(name: str):  # type: ignore[no-untyped-def]
        def hook(module, args, output):  # type: ignore[no-untyped-def]
            recorder.allowed.pop()

        return hook

    handles = []
    try:
        for name in conv_names:
            handles.append(modules[name].register_forward_hook(after_conv(name)))
        for name in wanted:
            handles.append(modules[name].register_forward_pre_hook(before_bn(name)))
            handles.append(modules[name].register_forward_hook(after_bn(name)))
        with torch.no_grad(), recorder:
            result = model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        _restore_buffers(original, model)
    returned = {id(leaf) for leaf in tree_flatten(result)[0] if isinstance(leaf, torch.Tensor)}

    verified: dict[str, str] = {}
    left: dict[str, str] = {}
    shapes: dict[str, int] = {}
    for bn_name, convs in wanted.items():
        seen_bn = inputs[bn_name]
        if seen_bn.calls != 1:
            left[bn_name] = f"ran {seen_bn.calls} times in the forward pass (folding needs once)"
            continue
        match = next((c for c in convs if outputs[c].tensor is seen_bn.tensor), None)
        if match is None:
            left[bn_name] = (
                f"does not receive the output of {' or '.join(map(repr, convs))} "
                "in the forward pass"
            )
            continue
        output = outputs[match].tensor
        if outputs[match].calls != 1:
            left[bn_name] = f"follows {match!r}, which ran {outputs[match].calls} times"
        elif id(output) in recorder.uses:
            left[bn_name] = (
                f"follows {match!r}, whose output is also read by {recorder.uses[id(output)]}"
            )
        elif id(output) in returned:
            left[bn_name] = f"follows {match!r}, whose output is also returned by the model"
        else:
            verified[bn_name] = match
            shapes[match] = output.ndim
    return verified, left, shapes


def _restore_buffers(original: nn.Module, model: nn.Module) -> None:
    # The verification forward may touch buffers (a module left in training mode updates its
    # statistics): the returned copy must hold exactly the original's state.
    originals = dict(original.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for name, buffer in model.named_buffers(remove_duplicate=False):
            source = originals.get(name)
            if source is not None and buffer.shape == source.shape:
                buffer.copy_(source)


# ---------------------------------------------------------------------------------------
# The fold itself
# ---------------------------------------------------------------------------------------


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    """The fold is computed in float64 (one rounding, to the weight's dtype, at the end);
    MPS has no float64, so there it is float32."""
    wide = torch.float32 if tensor.device.type == "mps" else torch.float64
    return tensor.detach().to(wide)


def _batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(x) == x * scale + shift per channel."""
    mean = _wide(bn.running_mean)
    var = _wide(bn.running_var)
    gamma = _wide(bn.weight) if bn.weight is not None else torch.ones_like(mean)
    beta = _wide(bn.bias) if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _probe_input(conv: nn.Module) -> torch.Tensor:
    """A small random input the conv accepts: each spatial size covers the dilated kernel,
    two strides and the padding on both sides (reflect padding needs input > padding)."""
    generator = torch.Generator().manual_seed(0)
    device, dtype = conv.weight.device, conv.weight.dtype
    if isinstance(conv, nn.Linear):
        shape: list[int] = [2, conv.in_features]
    else:
        padding = (
            conv.padding if not isinstance(conv.padding, str) else (0,) * len(conv.kernel_size)
        )
        shape = [2, conv.in_channels] + [
            dilation * (kernel - 1) + 1 + 2 * stride + 2 * pad
            for kernel, stride, dilation, pad in zip(
                conv.kernel_size, conv.stride, conv.dilation, padding
            )
        ]
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)


def _fold_pair(
    model: nn.Module, conv_name: str, conv: nn.Module, bn_name: str, bn: nn.Module
) -> str | None:
    """Fold ``bn`` into ``conv`` in place and swap ``bn`` for its replacement; on failure,
    leave both untouched and return why."""
    reason = _unfoldable_producer(model, conv_name, conv, bn)
    if reason is not None:
        return reason
    probe = _probe_input(conv)
    saved_weight = conv.weight.detach().clone()
    saved_bias = conv.bias.detach().clone() if conv.bias is not None else None
    saved_bn = copy.deepcopy(bn)
    try:
        with torch.no_grad():
            reference = bn(conv(probe))
    except Exception as error:
        return f"follows {conv_name!r}, but conv -> BatchNorm failed on a probe input ({error})"

    scale, shift = _batchnorm_affine(bn)
    with torch.no_grad():
        weight = _wide(conv.weight)
        view = (-1,) + (1,) * (weight.ndim - 1)  # output channels lead in conv and linear
        conv.weight.copy_((weight * scale.view(view)).to(conv.weight.dtype))
        bias = _wide(conv.bias) if conv.bias is not None else torch.zeros_like(scale)
        new_bias = (bias * scale + shift).to(device=conv.weight.device, dtype=conv.weight.dtype)
        if conv.bias is not None:
            conv.bias.copy_(new_bias)
        else:
            conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
    replacement = _replacement_for(bn)

    try:
        with torch.no_grad():
            result = replacement(conv(probe))
        tolerance = _PROBE_ATOL * float(reference.abs().max()) if reference.numel() else 0.0
        agrees = result.shape == reference.shape and torch.allclose(
            result, reference, rtol=_PROBE_RTOL, atol=tolerance
        )
        failure = "" if agrees else "its output changed"
    except Exception as error:
        failure = f"{type(error).__name__}: {error}"
    if failure:
        with torch.no_grad():
            conv.weight.copy_(saved_weight)
            if saved_bias is None:
                conv.bias = None
            else:
                conv.bias.copy_(saved_bias)
        if replacement is bn:  # restore the identity-affine BatchNorm's statistics
            bn.load_state_dict(saved_bn.state_dict())
            bn.eps = saved_bn.eps
        return (
            f"follows {type(conv).__name__} {conv_name!r}, but folding did not reproduce "
            f"conv -> BatchNorm on a probe input ({failure}): its forward is not linear "
            "in its weight and bias, or the BatchNorm subclass does more than normalize"
        )

    _set_submodule(model, bn_name, replacement)
    return None


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, module)


class FoldBatchNorm:
    """The op behind ``quantization.fold_batchnorm: true``: ``qbench.prepare`` calls its
    ``rewrite`` before swapping modules, so the twin is the deployment-shaped graph (each
    BatchNorm folded into the conv or linear before it, then quantized) while the FP32
    reference keeps its BatchNorms. Never swapped for a module."""

    name = "fold_batchnorm"
    module_types: tuple[type, ...] = ()
    roles: tuple[str, ...] = ()

    @classmethod
    def from_module(cls, module: nn.Module, specs: Any, *, name: str) -> nn.Module:
        raise QBenchError(f"{name}: fold_batchnorm rewrites a whole model, not a module")

    @classmethod
    def rewrite(
        cls, model: nn.Module, quantization: Mapping[str, Any]
    ) -> tuple[nn.Module, list[dict[str, Any]]]:
        """``model`` folded (a copy) when the config asks for it, with what was folded and
        what was left and why; else ``model`` itself and nothing."""
        if not quantization.get("fold_batchnorm"):
            return model, []
        folded, report = fold_batchnorm(model)
        return folded, [{"rewrite": "fold_batchnorm", **entry} for entry in report]
