"""QBench's quantized operators: drop-in twins of torch modules that fake-quantize their
weights, inputs, activations and statistics through the registered formats.

Models are prepared with ``qbench.prepare(model, spec)`` (core), which swaps modules through
the op registry this package fills (see :mod:`qbench_ops.plugin`).
"""

from .attention import QuantMultiheadAttention
from .base import QuantModule
from .calls import CallInterceptor, QuantCalls, interceptor_of, uninstall
from .folding import FoldBatchNorm, fold_batchnorm
from .layers import LAYER_OPS
from .quantizer import CachedTensor, TensorQuantizer

__all__ = [
    "LAYER_OPS",
    "CachedTensor",
    "CallInterceptor",
    "FoldBatchNorm",
    "QuantCalls",
    "QuantModule",
    "QuantMultiheadAttention",
    "TensorQuantizer",
    "fold_batchnorm",
    "interceptor_of",
    "uninstall",
]
