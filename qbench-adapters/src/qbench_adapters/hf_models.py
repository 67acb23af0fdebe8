"""The ``hf`` adapter: a Hugging Face transformers model from a local folder.

``model: {adapter: hf, path: <folder with config.json + model.safetensors>, task:
feature-extraction | sequence-classification}`` builds
``AutoModel / AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True,
use_safetensors=True, trust_remote_code=False)``: nothing is downloaded, no pickle is read and
no code the folder names is run (the README's Reliability section). ``weights: none`` builds the architecture from
``config.json`` alone, randomly initialised from ``seed``.

The bundle's model takes token ids (``model(input_ids, attention_mask=None)``) and returns one
tensor, as QBench's runner and metrics expect: the classifier's ``logits``, or the encoder's
``last_hidden_state`` for feature extraction (:class:`qbench_adapters.hf_output.TensorOutput`).
``transformers`` is an optional dependency: ``pip install 'qbench-adapters[hf]'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qbench.errors import QBenchError
from qbench.types import ModelBundle

from .adapters import _SEED_SCHEMA, _finish, _weights_value

#: ``task`` -> (transformers Auto class, the output field the bundle's model returns).
TASKS = {
    "feature-extraction": ("AutoModel", "last_hidden_state"),
    "sequence-classification": ("AutoModelForSequenceClassification", "logits"),
}


def import_transformers() -> Any:
    """``transformers``, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise QBenchError(
            "model.adapter: hf needs the transformers package, which is not installed; "
            "pip install 'qbench-adapters[hf]'"
        ) from None
    return transformers


class HFAdapter:
    """Hugging Face encoders and classifiers (BERT, MiniLM, RoBERTa, Llama...) from a folder."""

    name = "hf"
    options_schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "description": (
                    "local folder holding config.json and model.safetensors (or its "
                    "sharded index), as save_pretrained writes it; never downloaded"
                ),
            },
            "task": {
                "enum": list(TASKS),
                "default": "feature-extraction",
                "description": (
                    "feature-extraction: AutoModel, returns last_hidden_state; "
                    "sequence-classification: AutoModelForSequenceClassification, returns logits"
                ),
            },
            "weights": {
                "enum": ["pretrained", "none"],
                "default": "pretrained",
                "description": (
                    "pretrained: the folder's model.safetensors; none: config.json only, "
                    "random init from seed"
                ),
            },
            "name": {"type": "string", "description": "model name used in report paths"},
            "seed": _SEED_SCHEMA,
        },
    }

    def build(self, options: Mapping[str, Any], *, device: str = "cpu") -> ModelBundle:
        import torch

        from .hf_output import TensorOutput

        transformers = import_transformers()
        folder = Path(str(options.get("path", "")))
        if not (folder / "config.json").is_file():
            raise QBenchError(
                f"model.path: {folder} holds no config.json (cwd {Path.cwd()}); allowed: a "
                "folder written by save_pretrained (config.json + model.safetensors)"
            )
        task = str(options.get("task", "feature-extraction"))
        if task not in TASKS:
            raise QBenchError(f"model.task: {task!r}; allowed: {', '.join(TASKS)}")
        auto_name, output = TASKS[task]
        auto = getattr(transformers, auto_name)
        weights = _weights_value(options, default="pretrained").lower()
        seed = int(options.get("seed", 0))
        # trust_remote_code=False: a config naming its own modelling code is refused, not run.
        try:
            if weights == "none":
                config = transformers.AutoConfig.from_pretrained(
                    str(folder), local_files_only=True, trust_remote_code=False
                )
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    model = auto.from_config(config)
                described = f"none (random init from config.json, seed {seed})"
            else:
                if not any(
                    (folder / f).is_file()
                    for f in ("model.safetensors", "model.safetensors.index.json")
                ):
                    raise QBenchError(
                        f"model.path: {folder} holds no model.safetensors; QBench loads "
                        "safetensors only (never pickled weights); allowed: a folder with "
                        "model.safetensors, or weights: none"
                    )
                model = auto.from_pretrained(
                    str(folder),
                    local_files_only=True,
                    use_safetensors=True,
                    trust_remote_code=False,
                )
                described = str(folder / "model.safetensors")
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QBenchError(f"model.path: transformers cannot load {folder}: {first}") from None
        config = model.config
        classes = int(config.num_labels) if task == "sequence-classification" else None
        info = {
            "adapter": self.name,
            "architecture": type(model).__name__,
            "model_type": getattr(config, "model_type", None),
            "weights": described,
            "task": task,
            "input": "token ids (input_ids, attention_mask)",
            "vocab_size": getattr(config, "vocab_size", None),
            "image_mode": None,  # token ids, not images
        }
        return _finish(
            TensorOutput(model, output),
            name=str(options.get("name") or folder.resolve().name),
            transform=None,
            device=device,
            num_classes=classes,
            info=info,
        )
