"""Registers QBench's built-in quantized ops (entry point ``qbench-ops`` in pyproject.toml),
exactly as a third-party plugin would."""

from __future__ import annotations

from qbench import Register, hookimpl

from .attention import QuantMultiheadAttention
from .calibration import Calibration
from .calls import QuantCalls
from .folding import FoldBatchNorm
from .layers import LAYER_OPS

ALL_OPS = (*LAYER_OPS, QuantMultiheadAttention, QuantCalls, FoldBatchNorm, Calibration)


@hookimpl
def qbench_register_ops(register: Register) -> None:
    for op in ALL_OPS:
        register(op)
