"""Registers this package's adapters and datasets with QBench (entry point in pyproject.toml)."""

from __future__ import annotations

from qbench import hookimpl
from qbench.hookspecs import Register


@hookimpl
def qbench_register_adapters(register: Register) -> None:
    """The six model adapters: generic, resnet, vit, zoo, timm and hf (hf needs the ``hf``
    extra only when a config uses it)."""
    from .adapters import GenericAdapter, ResNetAdapter, ViTAdapter, ZooAdapter
    from .hf_models import HFAdapter
    from .timm_models import TimmAdapter

    for adapter in (
        GenericAdapter(),
        ResNetAdapter(),
        ViTAdapter(),
        ZooAdapter(),
        TimmAdapter(),
        HFAdapter(),
    ):
        register(adapter)


@hookimpl
def qbench_register_datasets(register: Register) -> None:
    """The five datasets; imagenette and tiny-imagenet also have ``download``."""
    from .digits import DigitsDataset
    from .folders import (
        ImageFolderDataset,
        ImageNetDataset,
        ImagenetteDataset,
        TinyImageNetDataset,
    )

    for dataset in (
        ImageNetDataset(),
        ImagenetteDataset(),
        TinyImageNetDataset(),
        ImageFolderDataset(),
        DigitsDataset(),
    ):
        register(dataset)
