"""Loading weights without ever unpickling code.

Checkpoints are safetensors files, or torch files read with ``torch.load(weights_only=True)``
(which refuses pickled classes and functions). torchvision's pretrained weights are looked up
in the local torch hub cache only: QBench runs on machines without internet and never
downloads at run time.

A safetensors file may name the factory that rebuilds its module (``qbench.factory`` metadata,
written by :func:`save_with_factory`). Importing and calling a factory runs code, so a factory
that only a file names is used only when the user confirms it (a model load never runs code
the user did not name): the config names it (``model.factory``), it is on the allow-list
:data:`TRUSTED_FACTORIES` (the zoo's own, plus any a plugin adds with :func:`trust_factory`),
or the config sets ``model.trust_checkpoint_factory: true``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qbench.errors import QBenchError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

# torch is imported inside the functions that need it: a plugin calls trust_factory() while it
# registers, and registration must not cost torch's import time.

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pt2")
#: safetensors metadata key naming the factory that rebuilds the module (``pkg.mod:fn``).
FACTORY_KEY = "qbench.factory"
KWARGS_KEY = "qbench.kwargs"

#: ``package.module:attribute`` (the generic adapter's ``factory`` syntax).
FACTORY_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"

#: Factories a checkpoint's metadata may name without the user's confirmation: the built-in
#: zoo's (``qbench_adapters.zoo.MODELS``). Plugins add theirs with :func:`trust_factory`.
TRUSTED_FACTORIES: set[str] = {
    "qbench_adapters.zoo:tiny_cnn",
    "qbench_adapters.zoo:tiny_resnet",
    "qbench_adapters.zoo:tiny_vit",
}


def trust_factory(spec: str) -> None:
    """Let checkpoints whose metadata names ``spec`` (``package.module:callable``) rebuild
    their model without ``model.trust_checkpoint_factory: true``.

    Meant for plugins: call it from ``qbench_register_adapters`` for the factories your
    package provides and whose files your users load with ``{adapter: generic, weights: ...}``.
    """
    if not isinstance(spec, str) or not re.match(FACTORY_PATTERN, spec):
        raise QBenchError(
            f"trust_factory: {spec!r} is not an import path of the form package.module:callable"
        )
    TRUSTED_FACTORIES.add(spec)


def is_trusted_factory(spec: str) -> bool:
    return spec in TRUSTED_FACTORIES


def checkpoint_factory(path: Path) -> tuple[str | None, dict[str, Any]]:
    """The factory a checkpoint's metadata names and its keyword arguments (``None, {}``
    when it names none). Malformed metadata is a one-line error naming the file and key."""
    metadata = read_metadata(path)
    spec = metadata.get(FACTORY_KEY)
    if not spec:
        return None, {}
    raw = metadata.get(KWARGS_KEY)
    if raw is None:
        return spec, {}
    try:
        kwargs = json.loads(raw)
    except ValueError as exc:
        raise QBenchError(
            f"model.weights: {path}: metadata {KWARGS_KEY} is not JSON ({exc}); "
            "expected a JSON object of factory arguments"
        ) from None
    if not isinstance(kwargs, dict):
        raise QBenchError(
            f"model.weights: {path}: metadata {KWARGS_KEY} is a JSON {type(kwargs).__name__}, "
            "not an object of factory arguments"
        )
    return spec, kwargs


def looks_like_path(value: str) -> bool:
    """Whether a ``weights:`` value names a file rather than a keyword or a weights enum."""
    return (
        "/" in value
        or "\\" in value
        or value.lower().endswith(CHECKPOINT_SUFFIXES)
        or Path(value).exists()
    )


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty for other files)."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QBenchError(f"model.weights: cannot read safetensors file {path}: {first}") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, on the CPU. Nested ``state_dict``/``model`` keys (as
    training loops commonly save) are unwrapped."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise QBenchError(f"model.weights: checkpoint {path} not found (cwd {Path.cwd()})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise QBenchError(
                f"model.weights: cannot read safetensors file {path}: {exc}"
            ) from None
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QBenchError(
            f"model.weights: {path} cannot be loaded with torch.load(weights_only=True) "
            f"({first}); QBench never unpickles code: save tensors only, e.g. "
            "torch.save(model.state_dict(), path) or safetensors"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise QBenchError(
            f"model.weights: {path} holds a {type(data).__name__}, not a state_dict of tensors"
        )
    return dict(data)


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(strict=True)`` with a one-line error naming what differs."""
    # Checkpoints saved from DataParallel/DDP prefix every key with "module.".
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        shapes = [
            f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
            for k in sorted(set(expected) & set(state_dict))
            if tuple(state_dict[k].shape) != tuple(expected[k].shape)
        ]
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})")
        detail = "; ".join(parts) or str(exc).splitlines()[0]
        raise QBenchError(f"model.weights: {source} does not fit the model: {detail}") from None


def save_with_factory(
    model: nn.Module, path: str | Path, factory: str, kwargs: Mapping[str, Any] | None = None
) -> None:
    """Save ``model``'s state_dict as safetensors with the factory that rebuilds it, so the
    ``generic`` adapter can load the file alone (no pickled code needed)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {FACTORY_KEY: factory, KWARGS_KEY: json.dumps(dict(kwargs or {}), sort_keys=True)}
    save_file(tensors, str(path), metadata=metadata)


# -- torchvision pretrained weights ---------------------------------------------------------


def torchvision_weights(model_name: str, value: str) -> Any:
    """The torchvision weights enum member that ``value`` names for ``model_name``.

    ``value`` is ``DEFAULT``, a member name (``IMAGENET1K_V1``) or a full name
    (``ResNet18_Weights.IMAGENET1K_V1``).
    """
    from torchvision.models import get_model_weights

    enum = get_model_weights(model_name)
    member = value.split(".", 1)[1] if value.startswith(enum.__name__ + ".") else value
    try:
        return enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        allowed = ", ".join(["DEFAULT", "none", *(w.name for w in enum), "<checkpoint path>"])
        raise QBenchError(
            f"model.weights: {value!r} is not a weights name of {model_name}; allowed: {allowed}"
        ) from None


def hub_checkpoint_path(weights: Any) -> Path:
    """Where torch.hub keeps ``weights``' file (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    import torch

    filename = weights.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_torchvision_weights(model: nn.Module, weights: Any) -> None:
    """Load ``weights`` into ``model`` from the local hub cache; never download."""
    path = hub_checkpoint_path(weights)
    if not path.is_file():
        raise QBenchError(
            f"model.weights: {weights} not found in the local torch hub cache: looked for "
            f"{path}; download {weights.url} to that path (or point TORCH_HOME at a cache "
            "holding it), give a checkpoint path, or use weights: none"
        )
    load_into(model, load_state_dict(path), str(path))
