"""QBench's models and data: adapters, datasets, downloads and the built-in demo zoo.

Everything here reaches QBench through the plugin hooks in :mod:`qbench_adapters.plugin`
(adapters ``generic``, ``resnet``, ``vit``, ``zoo``, ``timm``, ``hf``; datasets ``imagenet``, ``imagenette``,
``tiny-imagenet``, ``imagefolder``, ``digits``). The names below are for plugin authors and
scripts that want the same pieces directly.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> defining module. Imported on first use so that plugin discovery (which
#: imports this package for its entry point) does not pull in torch and torchvision.
_EXPORTS = {
    "Batches": "batches",
    "DigitsDataset": "digits",
    "GenericAdapter": "adapters",
    "HFAdapter": "hf_models",
    "ImageFolderDataset": "folders",
    "ImageNetDataset": "folders",
    "ImagenetteDataset": "folders",
    "ResNetAdapter": "adapters",
    "TimmAdapter": "timm_models",
    "TinyImageNetDataset": "folders",
    "ViTAdapter": "adapters",
    "ZooAdapter": "adapters",
    "ZooTransform": "adapters",
    "download_file": "download",
    "extract_archive": "download",
    "fetch_dataset": "download",
    "imagenet1k_class_index": "imagenet",
    "imagenet1k_wnids": "imagenet",
    "load_state_dict": "checkpoints",
    "save_with_factory": "checkpoints",
    "trust_factory": "checkpoints",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qbench_adapters' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "Batches",
    "DigitsDataset",
    "GenericAdapter",
    "HFAdapter",
    "ImageFolderDataset",
    "ImageNetDataset",
    "ImagenetteDataset",
    "ResNetAdapter",
    "TimmAdapter",
    "TinyImageNetDataset",
    "ViTAdapter",
    "ZooAdapter",
    "ZooTransform",
    "download_file",
    "extract_archive",
    "fetch_dataset",
    "imagenet1k_class_index",
    "imagenet1k_wnids",
    "load_state_dict",
    "save_with_factory",
    "trust_factory",
]
