"""QBench's own tiny models: a demo that needs no download and runs in seconds on a CPU.

All three take one-channel 8x8 images in [0, 1] (scikit-learn's digits, see
:mod:`qbench_adapters.digits`) and predict 10 classes. They are built from the same torchvision
classes the ``resnet`` and ``vit`` adapters load, so quantizing them exercises the same
module types (Conv2d, BatchNorm2d, ReLU, residual BasicBlocks, MultiheadAttention, LayerNorm,
GELU, Linear) that a researcher's ImageNet models contain.

Why a *narrow* ResNet: torchvision's ``ResNet.__init__`` fixes the stage widths at 64, 128, 256
and 512, so even one BasicBlock per stage is ~4.9 M parameters (~20 MB in float32), ten times
the 2 MB budget for all shipped weights. :class:`NarrowResNet` is a subclass of torchvision's
``ResNet`` that builds its stages with ResNet's own ``_make_layer`` and ``BasicBlock`` and
inherits its ``forward``, changing only the widths and the stem (a 3x3 stride-1 convolution
and no max-pool, because an 8x8 input would shrink to 2x2 after the ImageNet stem).
``isinstance(model, torchvision.models.ResNet)`` holds, its module names match a torchvision
ResNet's (``conv1``, ``layer1.0.conv1`` ... ``fc``), and the ``resnet`` adapter's rules apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock
from torchvision.models.vision_transformer import VisionTransformer

#: Input geometry of every zoo model: sklearn's digits are 8x8 grey images.
IMAGE_SIZE = 8
IN_CHANNELS = 1
NUM_CLASSES = 10


class TinyCNN(nn.Sequential):
    """Three conv-BN-ReLU stages, global average pooling and a linear classifier (~24 k params)."""

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = IN_CHANNELS):
        super().__init__(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, num_classes),
        )


class NarrowResNet(ResNet):
    """torchvision's ``ResNet`` with configurable stage widths and a small-image stem.

    ``ResNet.__init__`` is bypassed (it hard-codes widths 64..512); every attribute it sets is
    set here, the stages come from the inherited ``_make_layer`` and ``forward`` is ResNet's.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 48, 64),
        layers: Sequence[int] = (1, 1, 1, 1),
        num_classes: int = NUM_CLASSES,
        in_channels: int = IN_CHANNELS,
    ):
        nn.Module.__init__(self)
        if len(widths) != 4 or len(layers) != 4:
            raise ValueError("NarrowResNet needs four stage widths and four block counts")
        # The attributes ResNet._make_layer reads; BasicBlock only supports groups=1 and
        # base_width=64 (torchvision raises otherwise).
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(
            in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
        self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        # Same initialisation as torchvision's ResNet (He et al. 2015, fan_out for convs).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)


def tiny_cnn(num_classes: int = NUM_CLASSES) -> nn.Module:
    return TinyCNN(num_classes)


def tiny_resnet(num_classes: int = NUM_CLASSES) -> nn.Module:
    return NarrowResNet(num_classes=num_classes)


def tiny_vit(num_classes: int = NUM_CLASSES) -> nn.Module:
    """torchvision's ``VisionTransformer`` on 2x2 patches of an 8x8 image (16 tokens + class).

    torchvision's patch embedding expects three input channels; it is replaced by a one-channel
    convolution of the same shape otherwise, initialised the way torchvision initialises it.
    """
    model = VisionTransformer(
        image_size=IMAGE_SIZE,
        patch_size=2,
        num_layers=3,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=num_classes,
    )
    conv = nn.Conv2d(
        IN_CHANNELS, model.hidden_dim, kernel_size=model.patch_size, stride=model.patch_size
    )
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / fan_in))
    nn.init.zeros_(conv.bias)
    model.conv_proj = conv
    return model


#: Zoo name -> factory. The factories are importable as ``qbench_adapters.zoo:<name>``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "tiny_cnn": tiny_cnn,
    "tiny_resnet": tiny_resnet,
    "tiny_vit": tiny_vit,
}

WEIGHTS_PACKAGE = "qbench_adapters.zoo_weights"


def weights_path(name: str) -> Path:
    """Where the shipped weights of zoo model ``name`` live inside the installed package."""
    return Path(str(resources.files(WEIGHTS_PACKAGE).joinpath(f"{name}.safetensors")))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def build(name: str, *, seed: int = 0) -> nn.Module:
    """A freshly initialised zoo model (random init from ``seed``; global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name]()
