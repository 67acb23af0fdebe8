"""The model adapters: ``generic``, ``resnet``, ``vit`` and ``zoo``.

Each turns a config's ``model:`` mapping into a :class:`qbench.types.ModelBundle`: the FP32
model in eval mode on the requested device, the transform its inputs need, its class count and,
for ImageNet-1k classifiers, the wnid -> class index map that folder datasets label with.

``weights`` is one of ``DEFAULT`` (torchvision: the recommended pretrained weights, from the
local hub cache; zoo: the weights shipped in this package), a torchvision weights name,
``none`` (random initialisation from ``seed``, leaving the global RNG untouched) or a
checkpoint path (see :mod:`qbench_adapters.checkpoints`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qbench.errors import QBenchError
from qbench.types import ModelBundle

from . import imagenet
from .checkpoints import FACTORY_PATTERN

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image
    from torch import nn

# torch, torchvision and PIL are imported inside the functions that use them: registering the
# adapters (which ``qbench validate`` and ``qbench schema`` do) must not cost their import time.

#: The zoo's models (``qbench_adapters.zoo.MODELS`` builds them) and their 8x8 input size.
ZOO_MODELS = ("tiny_cnn", "tiny_resnet", "tiny_vit")
ZOO_IMAGE_SIZE = 8

#: ImageNet channel statistics used by torchvision's pretrained classifiers (torchvision
#: ``ImageClassification`` preset defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESNET_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
)
VIT_NAMES = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")

_WEIGHTS_SCHEMA = {
    "type": "string",
    "default": "DEFAULT",
    "description": "DEFAULT, a torchvision weights name, none (random init) or a checkpoint path",
}
_SEED_SCHEMA = {"type": "integer", "default": 0, "description": "seed of random initialisation"}
_NUM_CLASSES_SCHEMA = {
    "type": "integer",
    "minimum": 1,
    "description": "classifier outputs (only with weights: none or a checkpoint of that size)",
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise QBenchError(
            f"device: {device!r} is not a torch device (cpu, cuda, cuda:1, auto)"
        ) from None


def _weights_value(options: Mapping[str, Any], default: str = "DEFAULT") -> str:
    value = options.get("weights", default)
    return "none" if value is None else str(value)


def _finish(
    model: nn.Module,
    *,
    name: str,
    transform: Any,
    device: str | torch.device | None,
    num_classes: int | None,
    info: dict[str, Any],
) -> ModelBundle:
    from torch import nn

    model = model.to(resolve_device(device)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    class_index = imagenet.imagenet1k_class_index() if num_classes == imagenet.NUM_CLASSES else None
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if attention:
        info.setdefault("attention_modules", attention)
    info.setdefault("image_mode", "RGB")
    return ModelBundle(
        model=model,
        name=name,
        transform=transform,
        num_classes=num_classes,
        class_index=class_index,
        info=info,
    )


def _output_features(model: nn.Module) -> int | None:
    """Output size of the last Linear layer: a model's class count when it ends in one."""
    from torch import nn

    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last.out_features if last is not None else None


# -- torchvision families ---------------------------------------------------------------------


class TorchvisionAdapter:
    """Shared logic of the ``resnet`` and ``vit`` adapters (torchvision classification models)."""

    name = "torchvision"
    family = "torchvision"
    model_names: tuple[str, ...] = ()
    default_model = ""

    @property
    def options_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"enum": list(self.model_names), "default": self.default_model},
                "weights": _WEIGHTS_SCHEMA,
                "num_classes": _NUM_CLASSES_SCHEMA,
                "seed": _SEED_SCHEMA,
            },
        }

    def build(self, options: Mapping[str, Any], *, device: str = "cpu") -> ModelBundle:
        import torch
        from torchvision.models import get_model, get_model_weights

        from . import checkpoints

        model_name = str(options.get("name", self.default_model))
        if model_name not in self.model_names:
            raise QBenchError(
                f"model.name: {model_name!r} is not a {self.name} model; allowed: "
                f"{', '.join(self.model_names)}"
            )
        weights_value = _weights_value(options)
        num_classes = options.get("num_classes")
        enum = get_model_weights(model_name)
        # The model's input transform: its weights' preset, also for random init so that
        # inputs look like the ones the architecture was designed for.
        weights = None
        path = None
        if weights_value.lower() == "none":
            pass
        elif weights_value != "DEFAULT" and checkpoints.looks_like_path(weights_value):
            path = Path(weights_value)
        else:
            weights = checkpoints.torchvision_weights(model_name, weights_value)
            if num_classes is not None and num_classes != len(weights.meta["categories"]):
                raise QBenchError(
                    f"model.num_classes: {num_classes} does not match {weights} "
                    f"({len(weights.meta['categories'])} classes)"
                )
        if num_classes is None:
            if weights is not None:
                num_classes = len(weights.meta["categories"])
            elif path is not None:
                num_classes = _checkpoint_classes(path) or imagenet.NUM_CLASSES
            else:
                num_classes = imagenet.NUM_CLASSES
        seed = int(options.get("seed", 0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_model(model_name, weights=None, num_classes=int(num_classes))
        if weights is not None:
            checkpoints.load_torchvision_weights(model, weights)
            described = str(weights)
        elif path is not None:
            checkpoints.load_into(model, checkpoints.load_state_dict(path), str(path))
            described = str(path)
        else:
            described = f"none (random init, seed {seed})"
        transform = (weights or enum.DEFAULT).transforms()
        info = {"adapter": self.name, "architecture": model_name, "weights": described}
        return _finish(
            model,
            name=model_name,
            transform=transform,
            device=device,
            num_classes=int(num_classes),
            info=info,
        )


def _checkpoint_classes(path: Path) -> int | None:
    """Class count of a classifier checkpoint (its last 2-D weight's rows), before building."""
    from . import checkpoints

    state = checkpoints.load_state_dict(path)
    for key in ("fc.weight", "heads.head.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


class ResNetAdapter(TorchvisionAdapter):
    """torchvision ResNets, wide ResNets and ResNeXts (``model.name: resnet18`` ...)."""

    name = "resnet"
    model_names = RESNET_NAMES
    default_model = "resnet18"


class ViTAdapter(TorchvisionAdapter):
    """torchvision Vision Transformers (``model.name: vit_b_16`` ...).

    Their attention runs through ``nn.MultiheadAttention`` modules (listed in
    ``bundle.info["attention_modules"]``), which qbench-ops' ``QuantMultiheadAttention``
    replaces so that Q/K/V projections, scores and softmax are quantized too.
    """

    name = "vit"
    model_names = VIT_NAMES
    default_model = "vit_b_16"


# -- the zoo ----------------------------------------------------------------------------------


class ZooTransform:
    """PIL image (any mode) -> float tensor ``[1, 8, 8]`` in [0, 1], as the zoo was trained.

    Grey conversion and an 8x8 bilinear resize happen only when the image is not already an
    8x8 grey image, so the digits dataset's images pass through unchanged (pixel / 255).
    """

    size = (ZOO_IMAGE_SIZE, ZOO_IMAGE_SIZE)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        import torch
        from PIL import Image

        if isinstance(image, torch.Tensor):
            return image.float()
        if image.mode != "L":
            image = image.convert("L")
        if image.size != self.size:
            image = image.resize(self.size, Image.Resampling.BILINEAR)
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return data.view(1, *self.size[::-1]).float() / 255.0

    def __repr__(self) -> str:
        return "ZooTransform(grey, 8x8, [0, 1])"


class ZooAdapter:
    """QBench's tiny demo models (``model.name: tiny_cnn | tiny_resnet | tiny_vit``)."""

    name = "zoo"
    options_schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"enum": list(ZOO_MODELS), "default": "tiny_resnet"},
            "weights": {
                "type": "string",
                "default": "DEFAULT",
                "description": "DEFAULT (weights shipped with qbench-adapters), none, or a path",
            },
            "seed": _SEED_SCHEMA,
        },
    }

    def build(self, options: Mapping[str, Any], *, device: str = "cpu") -> ModelBundle:
        from . import checkpoints, zoo

        model_name = str(options.get("name", "tiny_resnet"))
        if model_name not in zoo.MODELS:
            raise QBenchError(
                f"model.name: {model_name!r} is not a zoo model; allowed: {', '.join(zoo.MODELS)}"
            )
        weights_value = _weights_value(options)
        seed = int(options.get("seed", 0))
        model = zoo.build(model_name, seed=seed)
        if weights_value.lower() == "none":
            described = f"none (random init, seed {seed})"
        else:
            if weights_value == "DEFAULT":
                path = zoo.weights_path(model_name)
                if not path.is_file():
                    raise QBenchError(
                        f"model.weights: the zoo weights of {model_name} are missing from the "
                        f"installed qbench-adapters (looked for {path}); reinstall it or run "
                        "qbench-adapters/scripts/train_zoo.py"
                    )
            else:
                path = Path(weights_value)
            checkpoints.load_into(model, checkpoints.load_state_dict(path), str(path))
            described = str(path)
        info = {
            "adapter": self.name,
            "architecture": model_name,
            "weights": described,
            "image_mode": "L",
            "input_size": (zoo.IN_CHANNELS, zoo.IMAGE_SIZE, zoo.IMAGE_SIZE),
        }
        return _finish(
            model,
            name=f"zoo_{model_name}",
            transform=ZooTransform(),
            device=device,
            num_classes=zoo.NUM_CLASSES,
            info=info,
        )


# -- generic ------------------------------------------------------------------------------------


def import_factory(spec: str) -> Callable[..., nn.Module]:
    """``package.module:attribute`` -> the callable (a class or a function)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise QBenchError(
            f"model.factory: {spec!r} is not an import path of the form package.module:factory"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise QBenchError(f"model.factory: cannot import {module_name!r} ({exc})") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise QBenchError(
                f"model.factory: {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise QBenchError(f"model.factory: {spec!r} is not callable")
    return target


def _channel_statistics(
    options: Mapping[str, Any], key: str, default: tuple[float, ...], channels: int
) -> tuple[float, ...]:
    """``transform.mean`` / ``transform.std``: one value, or one per image channel."""
    import math

    value = options.get(key)
    if value is None:
        return default if channels == len(default) else (sum(default) / len(default),)
    allowed = "1" if channels == 1 else f"1 or {channels}"
    if (
        not isinstance(value, (list, tuple))
        or len(value) not in {1, channels}
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise QBenchError(
            f"model.transform.{key}: found {value!r}; allowed: a list of {allowed} number(s) "
            f"(one per channel of the {'L' if channels == 1 else 'RGB'} input)"
        )
    numbers = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in numbers) or (
        key == "std" and not all(v > 0 for v in numbers)
    ):
        what = "positive numbers (Normalize divides by them)" if key == "std" else "finite numbers"
        raise QBenchError(f"model.transform.{key}: found {value!r}; allowed: {what}")
    return numbers


def imagenet_style_transform(options: Mapping[str, Any]) -> Any:
    """Resize -> centre crop -> tensor -> normalise, the usual classifier input pipeline.

    ``mean``/``std`` are checked here too (not only by the schema), because a zero std
    silently turns every input into inf/NaN.
    """
    from torchvision import transforms

    resize = int(options.get("resize", 256))
    crop = int(options.get("crop_size", 224))
    channels = 1 if options.get("image_mode", "RGB") == "L" else 3
    mean = _channel_statistics(options, "mean", IMAGENET_MEAN, channels)
    std = _channel_statistics(options, "std", IMAGENET_STD, channels)
    return transforms.Compose(
        [
            transforms.Resize(resize, antialias=True),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def _accepts_num_classes(factory: Callable[..., Any]) -> bool | None:
    """Whether ``factory`` takes a ``num_classes`` keyword (None: its signature is unknown)."""
    import inspect

    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # some builtins and C extensions have no signature
        return None
    return any(
        (p.name == "num_classes" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in parameters
    )


class GenericAdapter:
    """Any ``nn.Module``: from an import path (``factory``) and/or a checkpoint (``weights``).

    A safetensors checkpoint saved with :func:`qbench_adapters.checkpoints.save_with_factory`
    names its own factory. Importing and calling it runs code the file chose, so it is used
    only when the user confirms it: the config names the factory (``factory``), the factory is
    trusted (:data:`qbench_adapters.checkpoints.TRUSTED_FACTORIES`, e.g. the zoo's), or the
    config sets ``trust_checkpoint_factory: true``.
    """

    name = "generic"
    options_schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "factory": {
                "type": "string",
                "pattern": FACTORY_PATTERN,
                "description": "package.module:callable returning the nn.Module",
            },
            "kwargs": {"type": "object", "default": {}, "description": "arguments of factory"},
            "name": {"type": "string", "description": "model name used in report paths"},
            "weights": {
                "type": "string",
                "default": "none",
                "description": "none (the factory's own init) or a checkpoint path",
            },
            "trust_checkpoint_factory": {
                "type": "boolean",
                "default": False,
                "description": (
                    "import and call the factory named in the checkpoint's safetensors "
                    "metadata (qbench.factory) when factory is not set; this runs code the "
                    "file chose, so set it only for files you trust"
                ),
            },
            "num_classes": {
                "type": "integer",
                "minimum": 1,
                "description": (
                    "classifier outputs: passed to the factory as num_classes when it accepts "
                    "that argument (and kwargs do not set it), otherwise checked against the "
                    "model's last Linear layer"
                ),
            },
            "seed": _SEED_SCHEMA,
            "transform": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "resize": {"type": "integer", "minimum": 1, "default": 256},
                    "crop_size": {"type": "integer", "minimum": 1, "default": 224},
                    "mean": {
                        "type": "array",
                        "items": {"type": "number"},
                        "minItems": 1,
                        "maxItems": 3,
                        "description": "one value, or one per channel (3 for RGB, 1 for L)",
                    },
                    "std": {
                        "type": "array",
                        "items": {"type": "number", "exclusiveMinimum": 0},
                        "minItems": 1,
                        "maxItems": 3,
                        "description": "positive; one value, or one per channel",
                    },
                    "image_mode": {"enum": ["RGB", "L"], "default": "RGB"},
                },
                "description": "input pipeline (default: ImageNet-style 256 -> 224)",
            },
        },
    }

    def _factory_from_checkpoint(
        self, options: Mapping[str, Any], path: Path
    ) -> tuple[str | None, dict[str, Any]]:
        """The factory the checkpoint names, refused unless the user confirmed it."""
        from . import checkpoints

        if not path.is_file():
            return None, {}
        spec, kwargs = checkpoints.checkpoint_factory(path)
        if spec is None:
            return None, {}
        if not (
            checkpoints.is_trusted_factory(spec)
            or options.get("trust_checkpoint_factory", False) is True
        ):
            raise QBenchError(
                f"model.weights: {path} names factory {spec!r} in its metadata "
                f"({checkpoints.FACTORY_KEY}); QBench does not import code a file names "
                f"unless you confirm it: set model.factory: {spec} in the config, set "
                "model.trust_checkpoint_factory: true, or have the plugin providing it call "
                f"qbench_adapters.checkpoints.trust_factory({spec!r})"
            )
        return spec, kwargs

    def build(self, options: Mapping[str, Any], *, device: str = "cpu") -> ModelBundle:
        import torch
        from torch import nn

        from . import checkpoints

        weights_value = _weights_value(options, default="none")
        path = None if weights_value.lower() == "none" else Path(weights_value)
        factory_spec = options.get("factory")
        kwargs = dict(options.get("kwargs") or {})
        if factory_spec is None and path is not None:
            # The config's own factory wins and the file's metadata is not even read.
            factory_spec, file_kwargs = self._factory_from_checkpoint(options, path)
            if factory_spec and not kwargs:
                kwargs = file_kwargs
        if not factory_spec:
            raise QBenchError(
                "model.factory: the generic adapter needs factory: package.module:callable "
                f"(weights {weights_value!r} does not name one in its safetensors metadata)"
            )
        factory = import_factory(str(factory_spec))
        requested = options.get("num_classes")
        requested = int(requested) if requested is not None else None
        if requested is not None and "num_classes" in kwargs:
            if kwargs["num_classes"] != requested:
                raise QBenchError(
                    f"model.num_classes: {requested} disagrees with the factory's kwargs "
                    f"(model.kwargs or the checkpoint's metadata): num_classes "
                    f"{kwargs['num_classes']!r}; give one class count"
                )
        elif requested is not None and _accepts_num_classes(factory):
            kwargs["num_classes"] = requested
        seed = int(options.get("seed", 0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = factory(**kwargs)
            except TypeError as exc:
                raise QBenchError(
                    f"model.kwargs: {factory_spec} rejected {kwargs}: {exc}"
                ) from None
        if not isinstance(model, nn.Module):
            raise QBenchError(
                f"model.factory: {factory_spec} returned {type(model).__name__}, not a torch nn.Module"
            )
        if path is not None:
            checkpoints.load_into(model, checkpoints.load_state_dict(path), str(path))
        outputs = _output_features(model)
        if requested is not None and outputs is not None and outputs != requested:
            passed = "num_classes" in kwargs
            raise QBenchError(
                f"model.num_classes: {requested}, but {factory_spec} built a model with "
                f"{outputs} outputs (its last Linear layer)"
                + ("" if passed else " and takes no num_classes argument")
                + "; pass the class count in model.kwargs under the factory's own name for it"
                " or drop model.num_classes"
            )
        num_classes = requested or outputs
        transform_options = dict(options.get("transform") or {})
        name = options.get("name") or str(factory_spec).rpartition(":")[2].replace(".", "_")
        info = {
            "adapter": self.name,
            "architecture": str(factory_spec),
            "weights": str(path) if path is not None else f"none (factory init, seed {seed})",
            "image_mode": transform_options.get("image_mode", "RGB"),
        }
        return _finish(
            model,
            name=str(name),
            transform=imagenet_style_transform(transform_options),
            device=device,
            num_classes=int(num_classes) if num_classes else None,
            info=info,
        )
