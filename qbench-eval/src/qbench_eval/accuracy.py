"""The ``accuracy`` metric: top-1/top-k, certainty and agreement of FP32 vs quantized logits.

Everything is kept as running sums (counts and float64 totals), so memory does not depend on
the number of images.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from qbench.config import check_options
from qbench.errors import QBenchError
from qbench.types import BatchOutputs

_SIDES = ("reference", "quantized")
_LABELS = {"reference": "FP32 reference model", "quantized": "quantized model"}


class AccuracyMetric:
    """Top-1, top-k (default 5) and average certainty for both models, and their agreement.

    *Certainty* is the mean over images of the largest softmax probability: a format can keep
    top-1 while making the model markedly less sure of itself, which is worth seeing.
    *Agreement* is the share of images on which both models predict the same top-1 class,
    whatever the label: it measures the quantized model's fidelity to the FP32 one.

    An image whose logits on one side are not all finite (NaN/inf) has no prediction there:
    it is never correct on that side (``topk`` would rank a NaN first), its certainty counts
    as 0, it is never an agreement, and it is counted in that side's ``nonfinite_images``
    and named in the result's ``warnings``.
    """

    name = "accuracy"
    options_schema: dict[str, Any] = {
        "description": "Options of the accuracy metric (or null for the defaults).",
        "type": ["object", "null"],
        "properties": {
            "top_k": {
                "description": "k of the top-k accuracy reported beside top-1.",
                "type": "integer",
                "minimum": 1,
                "default": 5,
            }
        },
        "additionalProperties": False,
    }

    def __init__(self, options: Mapping[str, Any] | None = None):
        check_options(self.options_schema, options, "evaluation.accuracy")
        self.top_k: int = (options or {}).get("top_k", 5)
        self.images = 0
        self.agree = 0
        self.nonfinite_images = {side: 0 for side in _SIDES}
        self.top1 = {side: 0 for side in _SIDES}
        self.topk = {side: 0 for side in _SIDES}
        self.certainty = {side: 0.0 for side in _SIDES}
        self.classes: int | None = None
        # output fidelity over the images whose logits are finite on both sides
        self.kl_sum = 0.0
        self.cosine_sum = 0.0
        self.compared = 0

    def attach(self, reference: Any, quantized: Any, context: Mapping[str, Any]) -> None:
        """Nothing to hook: this metric only looks at the logits given to :meth:`update`."""

    @torch.no_grad()
    def update(self, batch: BatchOutputs) -> None:
        targets = batch.targets.reshape(-1).to(torch.long)
        predictions, finite = {}, {}
        for side in _SIDES:
            logits = getattr(batch, side)
            logits = logits.reshape(logits.shape[0], -1).float()
            if logits.shape[0] != targets.shape[0]:
                raise QBenchError(
                    f"accuracy: {side} logits have {logits.shape[0]} rows for {targets.shape[0]} targets"
                )
            self.classes = int(logits.shape[1])
            k = min(self.top_k, self.classes)
            topk = logits.topk(k, dim=1).indices
            targets_on = targets.to(topk.device)
            # A row with NaN/inf logits has no prediction (topk ranks NaN first): it is never
            # a hit, its certainty counts as 0, and it is counted in ``nonfinite_images``.
            finite[side] = torch.isfinite(logits).all(dim=1)
            hits = (topk == targets_on[:, None]) & finite[side][:, None]
            self.top1[side] += int(hits[:, 0].sum())
            self.topk[side] += int(hits.any(dim=1).sum())
            certainty = torch.softmax(logits, dim=1).max(dim=1).values
            certainty = torch.where(finite[side], certainty, 0.0)
            self.certainty[side] += float(certainty.sum(dtype=torch.float64))
            self.nonfinite_images[side] += int((~finite[side]).sum())
            predictions[side] = topk[:, 0]
        device = predictions["reference"].device
        both = finite["reference"] & finite["quantized"].to(device)
        same = predictions["reference"] == predictions["quantized"].to(device)
        self.agree += int((same & both).sum())
        self._add_fidelity(batch, both)
        self.images += int(targets.shape[0])

    def _add_fidelity(self, batch: BatchOutputs, both: torch.Tensor) -> None:
        """KL(FP32 softmax || quantized softmax) and the cosine of the two logit vectors,
        summed (float64) over the images finite on both sides."""
        if not bool(both.any()):
            return
        rows = both.nonzero().reshape(-1)
        reference = batch.reference.reshape(batch.reference.shape[0], -1).double()[rows]
        quantized = batch.quantized.reshape(batch.quantized.shape[0], -1).double()
        quantized = quantized.to(reference.device)[rows]
        log_p = torch.log_softmax(reference, dim=1)
        log_q = torch.log_softmax(quantized, dim=1)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
        cosine = torch.nn.functional.cosine_similarity(reference, quantized, dim=1, eps=1e-30)
        self.kl_sum += float(kl.sum())
        self.cosine_sum += float(cosine.sum())
        self.compared += int(rows.numel())

    def result(self) -> dict[str, Any]:
        n = max(self.images, 1)
        k = self.top_k if self.classes is None else min(self.top_k, self.classes)
        out: dict[str, Any] = {"images": self.images, "top_k": k}
        for side in _SIDES:
            out[side] = {
                "top1": self.top1[side] / n,
                "topk": self.topk[side] / n,
                "certainty": self.certainty[side] / n,
                "nonfinite_images": self.nonfinite_images[side],
            }
        out["delta"] = {
            key: out["quantized"][key] - out["reference"][key]
            for key in ("top1", "topk", "certainty")
        }
        out["agreement"] = self.agree / n
        # how far the quantized model's output moved, per image (mean over the images with
        # finite logits on both sides): KL divergence in nats, cosine of the logit vectors
        out["output"] = {
            "kl_divergence": self.kl_sum / self.compared if self.compared else None,
            "logit_cosine": self.cosine_sum / self.compared if self.compared else None,
        }
        warnings = [
            f"{_LABELS[side]}: {self.nonfinite_images[side]} of {self.images} images had "
            f"NaN/inf logits; they count as wrong and never as agreement"
            for side in _SIDES
            if self.nonfinite_images[side]
        ]
        if warnings:
            out["warnings"] = warnings
        return out

    #: the sweep column a sweep's Pareto front maximises (qbench.sweep.summarize)
    sweep_quality = "top1_delta"
    #: how ``qbench sensitivity`` ranks layers, most damaging first: by top-1 change
    #: (ascending), then output KL divergence (descending, the ``-``), then logit cosine
    sweep_rank = ("top1_delta", "-output_kl", "logit_cosine")

    @staticmethod
    def sweep_columns(result: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
        """A sweep table's columns: the quantized model's top-1 and top-k, their change from
        FP32 (percentage points) and the top-1 agreement (%)."""
        quantized, delta = result.get("quantized") or {}, result.get("delta") or {}
        k = result.get("top_k", 5)

        def pct(value: Any) -> Any:
            return 100.0 * value if isinstance(value, (int, float)) else None

        return [
            ("top1", "top-1 %", pct(quantized.get("top1"))),
            ("top1_delta", "top-1 Δ pp", pct(delta.get("top1"))),
            ("topk_delta", f"top-{k} Δ pp", pct(delta.get("topk"))),
            ("agreement", "agreement %", pct(result.get("agreement"))),
            ("output_kl", "output KL", (result.get("output") or {}).get("kl_divergence")),
            ("logit_cosine", "logit cosine", (result.get("output") or {}).get("logit_cosine")),
        ]

    @staticmethod
    def summary(result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """Rows of ``qbench run``'s summary table: top-1, top-k and certainty of both models,
        and their top-1 agreement (percentages)."""
        rows = []
        reference, quantized = result.get("reference") or {}, result.get("quantized") or {}
        labels = {
            "top1": "top-1 %",
            "topk": f"top-{result.get('top_k', 5)} %",
            "certainty": "certainty %",
        }
        for key, label in labels.items():
            ref, q = reference.get(key), quantized.get(key)
            if isinstance(ref, (int, float)) and isinstance(q, (int, float)):
                rows.append((label, f"{100 * ref:.2f}", f"{100 * q:.2f}"))
        agreement = result.get("agreement")
        if isinstance(agreement, (int, float)):
            rows.append(("top-1 agreement %", "", f"{100 * agreement:.2f}"))
        return rows
