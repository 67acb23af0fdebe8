"""``QuantMultiheadAttention``: attention with every operand of its matmuls quantized.

``nn.MultiheadAttention`` calls a fused function (``F.multi_head_attention_forward`` or the
native fast path) that hides the projections, the scores and the softmax, so this op computes
attention itself, in the same order of operations as torch's reference path, quantizing:

=====================  ======  ===========================================================
layer name             role    tensor
=====================  ======  ===========================================================
``<name>.in_proj``     weight  ``in_proj_weight`` (or ``q/k/v_proj_weight``), per row
``<name>.in_proj``     input   query, key and value inputs (one quantization if the same)
``<name>.q``           input   projected queries, per head (left operand of Q·Kᵀ)
``<name>.k``           input   projected keys, per head (right operand of Q·Kᵀ)
``<name>.softmax``     act     attention probabilities (left operand of P·V)
``<name>.v``           input   projected values, per head (right operand of P·V)
``<name>.out_proj``    weight  ``out_proj.weight``
``<name>.out_proj``    input   the heads' concatenated output
=====================  ======  ===========================================================

Chunks run along each matmul's reduction axis: the head dimension for Q and K, the key
positions for P and V (so V is chunked along its sequence axis, ``default_axis=-2``).
Biases stay FP32. ``bias_k``/``bias_v``/``add_zero_attn`` are not supported (the module then
stays FP32 and is listed as not quantized).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import QuantModule


class QuantMultiheadAttention(QuantModule, nn.MultiheadAttention):
    name = "multiheadattention"
    module_types = (nn.MultiheadAttention,)
    roles = ("weight", "input", "act")

    @classmethod
    def unsupported_reason(cls, module: nn.Module) -> str | None:
        if getattr(module, "bias_k", None) is not None or getattr(module, "add_zero_attn", False):
            return "bias_k/bias_v/add_zero_attn are not supported"
        return None

    def _qbench_setup(self) -> None:
        name = self.qbench_layer
        in_proj, out_proj = f"{name}.in_proj", f"{name}.out_proj"
        self._q_in = self._point("input", layer=in_proj)
        if self._qkv_same_embed_dim:
            self._q_w = {
                "in": self._cached("weight", "in_proj_weight", layer=in_proj, flatten_weight=True)
            }
        else:
            self._q_w = {
                p: self._cached("weight", f"{p}_proj_weight", layer=in_proj, flatten_weight=True)
                for p in "qkv"
            }
        self._q_q = self._point("input", layer=f"{name}.q", default_axis=-1)
        self._q_k = self._point("input", layer=f"{name}.k", default_axis=-1)
        self._q_v = self._point("input", layer=f"{name}.v", default_axis=-2)
        self._q_p = self._point("act", layer=f"{name}.softmax", default_axis=-1)
        self._q_out_in = self._point("input", layer=out_proj)
        self._q_out_w = self._cached(
            "weight", "out_proj.weight", layer=out_proj, flatten_weight=True
        )
        self._qbench_active = self.qbench_specs.enabled

    def _qin(self, quantizer, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return x if quantizer is None else quantizer(x)

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self._qbench_active:  # nothing to quantize: torch's own (fused) path, bit for bit
            return super().forward(
                query,
                key,
                value,
                key_padding_mask,
                need_weights,
                attn_mask,
                average_attn_weights,
                is_causal,
            )
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            same_kv = key is value
            same_qk = query is key
            query = query.transpose(0, 1)
            key = query if same_qk else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)

        # Inputs of the Q/K/V projections: one quantization when the same tensor is passed three
        # times (self-attention).
        q_in = self._qin(self._q_in, query)
        k_in = q_in if key is query else self._qin(self._q_in, key)
        v_in = k_in if value is key else self._qin(self._q_in, value)
        w_q, w_k, w_v = self._projection_weights()
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(q_in, w_q, b_q)
        k = F.linear(k_in, w_k, b_k)
        v = F.linear(v_in, w_v, b_v)

        batch, target_len, _ = q.shape
        source_len = k.shape[1]
        heads, head_dim = self.num_heads, self.head_dim
        q = q.view(batch, target_len, heads, head_dim).transpose(1, 2)  # (N, H, L, d)
        k = k.view(batch, source_len, heads, head_dim).transpose(1, 2)  # (N, H, S, d)
        v = v.view(batch, source_len, heads, head_dim).transpose(1, 2)  # (N, H, S, d)
        q = self._qin(self._q_q, q)
        k = self._qin(self._q_k, k)
        v = self._qin(self._q_v, v)

        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(head_dim))
        mask = self._merged_mask(
            attn_mask,
            key_padding_mask,
            is_causal,
            batch,
            target_len,
            source_len,
            scores.dtype,
            scores.device,
        )
        if mask is not None:
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        if self.dropout > 0.0 and self.training:
            probs = F.dropout(probs, p=self.dropout)
        probs = self._qin(self._q_p, probs)
        context = torch.matmul(probs, v)  # (N, H, L, d)
        context = context.transpose(1, 2).reshape(batch, target_len, self.embed_dim)
        context = self._qin(self._q_out_in, context)
        out_weight = self._use(self._q_out_w, self.out_proj.weight)
        output = F.linear(context, out_weight, self.out_proj.bias)

        weights = None
        if need_weights:
            weights = probs.mean(dim=1) if average_attn_weights else probs
            if unbatched:
                weights = weights.squeeze(0)
        if unbatched:
            output = output.squeeze(0)
        elif not self.batch_first:
            output = output.transpose(0, 1)
        return output, weights

    def _projection_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._qkv_same_embed_dim:
            weight = self._use(self._q_w["in"], self.in_proj_weight)
            w_q, w_k, w_v = weight.chunk(3)
            return w_q, w_k, w_v
        return (
            self._use(self._q_w["q"], self.q_proj_weight),
            self._use(self._q_w["k"], self.k_proj_weight),
            self._use(self._q_w["v"], self.v_proj_weight),
        )

    def _merged_mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        is_causal: bool,
        batch: int,
        target_len: int,
        source_len: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> torch.Tensor | None:
        """One additive float mask broadcastable to (N, H, L, S), or None."""
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(target_len, source_len, dtype=torch.bool, device=device).triu(1)
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:  # (N * H, L, S)
                mask = mask.view(batch, self.num_heads, target_len, source_len)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).view(batch, 1, 1, source_len)
            mask = padding if mask is None else mask + padding
        return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """torch's mask convention: boolean True = not allowed (-inf), float masks are added."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)
