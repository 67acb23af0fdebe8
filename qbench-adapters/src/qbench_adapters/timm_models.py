"""The ``timm`` adapter: any architecture of PyTorch Image Models, built offline.

``model: {adapter: timm, name: tf_efficientnet_b0, weights: none | <checkpoint>,
num_classes: 10}`` builds ``timm.create_model(name, pretrained=False, num_classes=...)``
(random initialisation from ``seed``) and loads the checkpoint, if any, through
:mod:`qbench_adapters.checkpoints` (safetensors or ``torch.load(weights_only=True)``). timm's
own pretrained download is never used: QBench runs on machines without internet,
so ``weights`` is a file the user already has (e.g. the ``model.safetensors`` of a timm model
repository).

The input transform is timm's own evaluation pipeline for the model
(``timm.data.resolve_data_config`` + ``timm.data.create_transform``: its resize, crop
percentage, interpolation and normalisation), so folder datasets are preprocessed as timm
preprocesses them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qbench.errors import QBenchError
from qbench.types import ModelBundle

from .adapters import _SEED_SCHEMA, _finish, _weights_value

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: How many similar names an unknown-name error lists.
CLOSE_NAMES = 8

#: ``weights`` values that ask for timm's pretrained download, refused with a hint instead.
_DOWNLOAD_WORDS = {"default", "pretrained", "true"}


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as exc:  # timm is a declared dependency; a broken install is possible
        raise QBenchError(
            f"model.adapter: timm needs the timm package ({exc}); pip install 'timm>=1.0'"
        ) from None
    return timm


def close_names(timm: Any, name: str) -> list[str]:
    """Architectures whose names resemble ``name``: those containing its first word
    (``timm.list_models("*resnet*")``), then the closest by spelling, best first."""
    stem = name.split(".", 1)[0]
    word = stem.replace("-", "_").split("_", 1)[0].rstrip("0123456789") or stem
    spelled = difflib.get_close_matches(stem, timm.list_models(), n=4 * CLOSE_NAMES, cutoff=0.6)
    containing = timm.list_models(f"*{word}*") if len(word) >= 3 else []

    def similarity(candidate: str) -> float:
        return difflib.SequenceMatcher(None, stem, candidate).ratio()

    # best first; equally similar names in alphabetical order (b0 before b8)
    ranked = sorted(set(spelled) | set(containing), key=lambda n: (-similarity(n), n))
    return ranked[:CLOSE_NAMES]


def _classifier_rows(model: nn.Module, state: Mapping[str, Any]) -> int | None:
    """Output rows of the checkpoint's classifier (timm names it in ``pretrained_cfg``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier")
    names = [classifier] if isinstance(classifier, str) else list(classifier or ())
    for prefix in names:
        weight = state.get(f"{prefix}.weight")
        if weight is not None and getattr(weight, "ndim", 0) >= 2:
            return int(weight.shape[0])
    return None


class TimmAdapter:
    """timm architectures by name (``model.name: convnext_atto``, ``vit_tiny_patch16_224`` ...).

    timm's layer subclasses (``Conv2dSame``, ``BatchNormAct2d``, ``LayerNorm2d`` ...) keep
    their own ``forward``; qbench-ops quantizes them as subclasses of the torch layers.
    """

    name = "timm"
    options_schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {
                "type": "string",
                "minLength": 1,
                "description": (
                    "timm architecture, as timm.list_models() spells it (e.g. resnet18, "
                    "tf_efficientnet_b0, vit_tiny_patch16_224); a .tag suffix selects that "
                    "tag's data config"
                ),
            },
            "weights": {
                "type": "string",
                "default": "none",
                "description": (
                    "none (random init from seed) or a checkpoint path (.safetensors, or a "
                    "torch file read with weights_only=True); timm's hub weights are never "
                    "downloaded: point this at the model.safetensors you have"
                ),
            },
            "num_classes": {
                "type": "integer",
                "minimum": 0,
                "description": (
                    "classifier outputs (0: no classifier, the model returns pooled features); "
                    "default: the checkpoint's classifier rows, else timm's default (1000)"
                ),
            },
            "seed": _SEED_SCHEMA,
        },
    }

    def build(self, options: Mapping[str, Any], *, device: str = "cpu") -> ModelBundle:
        import torch

        from . import checkpoints

        timm = _import_timm()
        model_name = str(options.get("name", ""))
        if model_name.startswith(("hf-hub:", "hf_hub:")):
            raise QBenchError(
                f"model.name: {model_name!r} loads from the Hugging Face hub, which QBench "
                "never does at run time; allowed: a timm architecture name with weights: "
                "<local checkpoint path>"
            )
        if not model_name or not timm.is_model(model_name):
            similar = close_names(timm, model_name) if model_name else []
            hint = f"; close names: {', '.join(similar)}" if similar else ""
            raise QBenchError(
                f"model.name: {model_name!r} is not a timm model (timm {timm.__version__}, "
                f"{len(timm.list_models())} architectures; see timm.list_models()){hint}"
            )
        weights_value = _weights_value(options, default="none")
        if weights_value.lower() in _DOWNLOAD_WORDS:
            raise QBenchError(
                f"model.weights: {weights_value!r} would download timm's pretrained weights, "
                "which QBench never does at run time; allowed: none or a local checkpoint path "
                "(e.g. the model.safetensors of the timm model's repository)"
            )
        path = None if weights_value.lower() == "none" else Path(weights_value)
        state = checkpoints.load_state_dict(path) if path is not None else None
        requested = options.get("num_classes")
        seed = int(options.get("seed", 0))

        def create(num_classes: int | None) -> nn.Module:
            kwargs = {} if num_classes is None else {"num_classes": int(num_classes)}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return timm.create_model(model_name, pretrained=False, **kwargs)

        model = create(requested)
        if state is not None and requested is None:
            # A fine-tuned checkpoint's head says its class count: build to fit it.
            rows = _classifier_rows(model, state)
            if rows is not None and rows != getattr(model, "num_classes", rows):
                model = create(rows)
        if state is not None:
            checkpoints.load_into(model, state, str(path))
            described = str(path)
        else:
            described = f"none (random init, seed {seed})"

        data_config = timm.data.resolve_data_config({}, model=model)
        transform = timm.data.create_transform(**data_config)
        classes = getattr(model, "num_classes", None)
        info = {
            "adapter": self.name,
            "architecture": model_name,
            "weights": described,
            "input_size": tuple(data_config["input_size"]),
            "data_config": {k: _plain(v) for k, v in data_config.items()},
        }
        return _finish(
            model,
            name=model_name.replace("/", "_"),
            transform=transform,
            device=device,
            num_classes=int(classes) if classes else None,
            info=info,
        )


def _plain(value: Any) -> Any:
    """A data-config value as JSON-friendly data (tuples become lists)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
