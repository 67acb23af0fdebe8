"""Quantized twins of torch's layer modules (the op table of qbench-ops/README.md).

What each quantizes (biases stay FP32 everywhere: accelerators add them in the FP32/FP16
accumulator, as in OCP MX v1.0 §6 and NVIDIA's FP8 recipes):

=====================  =====================================================================
op                     tensors
=====================  =====================================================================
QuantConv1d/2d/3d      weight (chunks along in_channels x kernel of each output channel),
                       input (chunks along channels, the reduction axis)
QuantLinear            weight (chunks along in_features), input (last axis = in_features)
QuantEmbedding         weight (chunks along the embedding dimension of each row)

Other inputs and activations chunk along the channels (axis 1) when they have 4+ dims, else
along the last axis (see ``TensorQuantizer.spec_for``); ``*_axis`` in the config overrides it.
QuantBatchNorm1d/2d/3d weight, input, and in eval mode the running mean and variance
                       (role ``stats``, which follows the weight settings)
QuantLayerNorm         weight, input
QuantMaxPool*/AvgPool* input
QuantAdaptiveAvgPool*  input
activations            output (role ``act``): ReLU, ReLU6, GELU, SiLU, Sigmoid, Tanh,
                       Hardswish, Softmax
=====================  =====================================================================
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import QuantModule
from .subclass import KeepsSubclassForward

# --------------------------------------------------------------------------------------
# Weighted layers
# --------------------------------------------------------------------------------------


class _QuantConvNd(KeepsSubclassForward, QuantModule):
    roles: ClassVar[tuple[str, ...]] = ("weight", "input")

    def _qbench_setup(self) -> None:
        self._q_input = self._point("input", default_axis=1)  # channels: the conv's reduction
        self._q_weight = self._cached("weight", "weight", flatten_weight=True)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._q_input is not None:
            input = self._q_input(input)
        weight = self._use(self._q_weight, self.weight)
        return self._conv_forward(input, weight, self.bias)  # type: ignore[attr-defined]


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    name = "conv1d"
    module_types = (nn.Conv1d,)


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    name = "conv2d"
    module_types = (nn.Conv2d,)


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    name = "conv3d"
    module_types = (nn.Conv3d,)


class QuantLinear(KeepsSubclassForward, QuantModule, nn.Linear):
    name = "linear"
    module_types = (nn.Linear,)
    roles = ("weight", "input")

    def _qbench_setup(self) -> None:
        self._q_input = self._point("input")
        self._q_weight = self._cached("weight", "weight", flatten_weight=True)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._q_input is not None:
            input = self._q_input(input)
        return F.linear(input, self._use(self._q_weight, self.weight), self.bias)


class QuantEmbedding(QuantModule, nn.Embedding):
    """An embedding table quantized once (role ``weight``; chunks along the embedding
    dimension of each row, as weight-only LLM quantization stores it). The lookup reads the
    quantized rows; there is no input to quantize (token ids)."""

    name = "embedding"
    module_types = (nn.Embedding,)
    roles = ("weight",)

    @classmethod
    def unsupported_reason(cls, module: nn.Module) -> str | None:
        if getattr(module, "max_norm", None) is not None:
            return "max_norm renormalizes the table in place during the lookup"
        return None

    def _qbench_setup(self) -> None:
        self._q_weight = self._cached("weight", "weight", flatten_weight=True)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self._use(self._q_weight, self.weight)
        return F.embedding(
            input,
            weight,
            self.padding_idx,
            None,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )


# --------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------


class _QuantBatchNorm(KeepsSubclassForward, QuantModule):
    roles: ClassVar[tuple[str, ...]] = ("weight", "input", "stats")

    def _qbench_setup(self) -> None:
        self._q_input = self._point("input")
        self._q_weight = self._cached("weight", "weight")
        self._q_mean = self._cached("stats", "running_mean")
        self._q_var = self._cached("stats", "running_var")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)  # type: ignore[attr-defined]
        if self._q_input is not None:
            input = self._q_input(input)
        weight = self._use(self._q_weight, self.weight)
        if self.training:
            # Batch statistics are used and the running buffers must be updated in place:
            # let torch's own forward do exactly that, with the quantized input and weight.
            return _batch_norm_train(self, input, weight)
        if self.running_mean is None or self.running_var is None:
            mean = var = None
        else:
            mean = self._use(self._q_mean, self.running_mean)
            var = self._use(self._q_var, self.running_var)
        return F.batch_norm(input, mean, var, weight, self.bias, mean is None, 0.0, self.eps)


def _batch_norm_train(
    module: Any, input: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """Training-mode batch norm (batch statistics, running-buffer update) with ``weight``."""
    momentum = 0.0 if module.momentum is None else module.momentum
    tracking = module.track_running_stats
    if tracking and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        if module.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(module.num_batches_tracked)
    return F.batch_norm(
        input,
        module.running_mean if tracking else None,
        module.running_var if tracking else None,
        weight,
        module.bias,
        True,
        momentum,
        module.eps,
    )


class QuantBatchNorm1d(_QuantBatchNorm, nn.BatchNorm1d):
    name = "batchnorm1d"
    module_types = (nn.BatchNorm1d,)


class QuantBatchNorm2d(_QuantBatchNorm, nn.BatchNorm2d):
    name = "batchnorm2d"
    module_types = (nn.BatchNorm2d,)


class QuantBatchNorm3d(_QuantBatchNorm, nn.BatchNorm3d):
    name = "batchnorm3d"
    module_types = (nn.BatchNorm3d,)


class QuantLayerNorm(KeepsSubclassForward, QuantModule, nn.LayerNorm):
    name = "layernorm"
    module_types = (nn.LayerNorm,)
    roles = ("weight", "input")

    def _qbench_setup(self) -> None:
        self._q_input = self._point("input")
        self._q_weight = self._cached("weight", "weight")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._q_input is not None:
            input = self._q_input(input)
        weight = self._use(self._q_weight, self.weight)
        return F.layer_norm(input, self.normalized_shape, weight, self.bias, self.eps)


# --------------------------------------------------------------------------------------
# Pooling: the input is quantized, the module's own forward does the rest
# --------------------------------------------------------------------------------------


class _InputQuantized(QuantModule):
    roles: ClassVar[tuple[str, ...]] = ("input",)

    def _qbench_setup(self) -> None:
        self._q_input = self._point("input")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._q_input is not None:
            input = self._q_input(input)
        return super().forward(input)  # type: ignore[misc]


class QuantMaxPool1d(_InputQuantized, nn.MaxPool1d):
    name = "maxpool1d"
    module_types = (nn.MaxPool1d,)


class QuantMaxPool2d(_InputQuantized, nn.MaxPool2d):
    name = "maxpool2d"
    module_types = (nn.MaxPool2d,)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._q_input is not None:
            input = self._q_input(input)
        if not _pools_faster_channels_last(input, self.return_indices):
            return nn.MaxPool2d.forward(self, input)
        # The same max, bit for bit: both CPU kernels walk each window in the same order
        # and keep the first maximum or NaN; the channels-last one vectorizes across
        # channels, the NCHW one runs element by element (slower even with the two layout
        # copies included; measured: see benchmarks/README.md). The result comes back in the input's layout.
        pooled = F.max_pool2d(
            input.contiguous(memory_format=torch.channels_last),
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
        )
        return pooled.contiguous()


#: The float dtypes whose channels-last CPU max pool compares in the dtype itself (the
#: reduced-precision ones may go through float32; exact too, but not checked here).
_EXACT_POOL_DTYPES = (torch.float32, torch.float64)


def _pools_faster_channels_last(input: torch.Tensor, return_indices: bool) -> bool:
    """Whether :class:`QuantMaxPool2d` takes the channels-last route: an NCHW-contiguous
    4-D float32/float64 CPU batch with more than one channel, values only (no indices)."""
    return (
        not return_indices
        and input.device.type == "cpu"
        and input.dim() == 4
        and input.dtype in _EXACT_POOL_DTYPES
        and input.shape[1] > 1
        and input.is_contiguous()
    )


class QuantMaxPool3d(_InputQuantized, nn.MaxPool3d):
    name = "maxpool3d"
    module_types = (nn.MaxPool3d,)


class QuantAvgPool1d(_InputQuantized, nn.AvgPool1d):
    name = "avgpool1d"
    module_types = (nn.AvgPool1d,)


class QuantAvgPool2d(_InputQuantized, nn.AvgPool2d):
    name = "avgpool2d"
    module_types = (nn.AvgPool2d,)


class QuantAvgPool3d(_InputQuantized, nn.AvgPool3d):
    name = "avgpool3d"
    module_types = (nn.AvgPool3d,)


class QuantAdaptiveAvgPool1d(_InputQuantized, nn.AdaptiveAvgPool1d):
    name = "adaptiveavgpool1d"
    module_types = (nn.AdaptiveAvgPool1d,)


class QuantAdaptiveAvgPool2d(_InputQuantized, nn.AdaptiveAvgPool2d):
    name = "adaptiveavgpool2d"
    module_types = (nn.AdaptiveAvgPool2d,)


class QuantAdaptiveAvgPool3d(_InputQuantized, nn.AdaptiveAvgPool3d):
    name = "adaptiveavgpool3d"
    module_types = (nn.AdaptiveAvgPool3d,)


# --------------------------------------------------------------------------------------
# Activations: the output is quantized (role ``act``)
# --------------------------------------------------------------------------------------


class _OutputQuantized(QuantModule):
    roles: ClassVar[tuple[str, ...]] = ("act",)

    def _qbench_setup(self) -> None:
        self._q_act = self._point("act")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output = super().forward(input)  # type: ignore[misc]
        return output if self._q_act is None else self._q_act(output)


class QuantReLU(_OutputQuantized, nn.ReLU):
    name = "relu"
    module_types = (nn.ReLU,)


class QuantReLU6(_OutputQuantized, nn.ReLU6):
    name = "relu6"
    module_types = (nn.ReLU6,)


class QuantGELU(_OutputQuantized, nn.GELU):
    name = "gelu"
    module_types = (nn.GELU,)


class QuantSiLU(_OutputQuantized, nn.SiLU):
    name = "silu"
    module_types = (nn.SiLU,)


class QuantSigmoid(_OutputQuantized, nn.Sigmoid):
    name = "sigmoid"
    module_types = (nn.Sigmoid,)


class QuantTanh(_OutputQuantized, nn.Tanh):
    name = "tanh"
    module_types = (nn.Tanh,)


class QuantHardswish(_OutputQuantized, nn.Hardswish):
    name = "hardswish"
    module_types = (nn.Hardswish,)


class QuantSoftmax(_OutputQuantized, nn.Softmax):
    name = "softmax"
    module_types = (nn.Softmax,)


LAYER_OPS: tuple[type[QuantModule], ...] = (
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantLinear,
    QuantEmbedding,
    QuantBatchNorm1d,
    QuantBatchNorm2d,
    QuantBatchNorm3d,
    QuantLayerNorm,
    QuantMaxPool1d,
    QuantMaxPool2d,
    QuantMaxPool3d,
    QuantAvgPool1d,
    QuantAvgPool2d,
    QuantAvgPool3d,
    QuantAdaptiveAvgPool1d,
    QuantAdaptiveAvgPool2d,
    QuantAdaptiveAvgPool3d,
    QuantReLU,
    QuantReLU6,
    QuantGELU,
    QuantSiLU,
    QuantSigmoid,
    QuantTanh,
    QuantHardswish,
    QuantSoftmax,
)
