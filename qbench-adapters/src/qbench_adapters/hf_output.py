"""The module the ``hf`` adapter hands to QBench: a transformers model returning one tensor.

Kept apart from :mod:`qbench_adapters.hf_models` because it imports torch, which registering
the adapters must not do.
"""

from __future__ import annotations

import torch
from torch import nn


class TensorOutput(nn.Module):
    """A transformers model whose forward returns one tensor, the ``output`` field of its
    ``ModelOutput`` (``logits``, ``last_hidden_state``), as QBench's runner and metrics expect.

    The wrapped model is the child ``model``, so layer names read ``model.encoder.layer.0...``.
    """

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        self.model = model
        self.output = output

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        result = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return getattr(result, self.output)

    def extra_repr(self) -> str:
        return f"output={self.output!r}"
