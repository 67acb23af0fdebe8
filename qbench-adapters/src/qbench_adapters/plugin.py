"""Registers this package's adapters and datasets with QBench (entry point in pyproject.toml)."""

from __future__ import annotations

from qbench import hookimpl


@hookimpl
def qbench_register_adapters(register):
    from .adapters import GenericAdapter, ResNetAdapter, ViTAdapter, ZooAdapter

    for adapter in (GenericAdapter(), ResNetAdapter(), ViTAdapter(), ZooAdapter()):
        register(adapter)


@hookimpl
def qbench_register_datasets(register):
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
