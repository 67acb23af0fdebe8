"""Inputs for the ops' numeric tests."""

from __future__ import annotations

import torch
from torch import nn


def image_like(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth, image-like inputs (low-frequency colour fields plus mild noise), normalized
    with ImageNet statistics, as real preprocessed photos are."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=generator)
    image = nn.functional.interpolate(
        coarse, size=(size, size), mode="bilinear", align_corners=False
    )
    image = (image + 0.05 * torch.randn(image.shape, generator=generator)).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (image - mean) / std
