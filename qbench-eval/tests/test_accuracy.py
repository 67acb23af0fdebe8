"""The accuracy metric against a direct numpy computation over all images at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qbench.errors import QBenchError
from qbench.types import BatchOutputs
from qbench_eval.accuracy import AccuracyMetric


def _numpy_reference(targets: np.ndarray, logits: np.ndarray, k: int) -> dict[str, float]:
    order = np.argsort(-logits, axis=1, kind="stable")
    top1 = float(np.mean(order[:, 0] == targets))
    topk = float(np.mean([t in row[:k] for t, row in zip(targets, order)]))
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return {"top1": top1, "topk": topk, "certainty": float(probabilities.max(axis=1).mean())}


def test_accuracy_matches_numpy_over_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    classes, images = 10, 203
    targets = torch.randint(0, classes, (images,), generator=generator)
    reference = torch.randn(images, classes, generator=generator) * 3
    quantized = reference + torch.randn(images, classes, generator=generator) * 1.5
    metric = AccuracyMetric(None)
    metric.attach(None, None, {})
    for index, start in enumerate(range(0, images, 32)):  # uneven last batch on purpose
        end = start + 32
        metric.update(
            BatchOutputs(targets[start:end], reference[start:end], quantized[start:end], index)
        )
    result = metric.result()

    t = targets.numpy()
    expected_ref = _numpy_reference(t, reference.numpy(), 5)
    expected_q = _numpy_reference(t, quantized.numpy(), 5)
    assert result["images"] == images
    for key in ("top1", "topk", "certainty"):
        assert result["reference"][key] == pytest.approx(expected_ref[key], abs=1e-6)
        assert result["quantized"][key] == pytest.approx(expected_q[key], abs=1e-6)
        assert result["delta"][key] == pytest.approx(expected_q[key] - expected_ref[key], abs=1e-6)
    agreement = np.mean(reference.numpy().argmax(1) == quantized.numpy().argmax(1))
    assert result["agreement"] == pytest.approx(agreement)
    # output fidelity per image: KL(softmax ref || softmax q) and the logit cosine
    r64, q64 = reference.double().numpy(), quantized.double().numpy()
    log_p = r64 - r64.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    log_q = q64 - q64.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(1).mean()
    cosine = ((r64 * q64).sum(1) / np.linalg.norm(r64, axis=1) / np.linalg.norm(q64, axis=1)).mean()
    assert result["output"]["kl_divergence"] == pytest.approx(kl, rel=1e-9)
    assert result["output"]["logit_cosine"] == pytest.approx(cosine, rel=1e-9)
    assert kl > 0.05 and cosine < 0.99
    # The data are noisy enough that the two models really differ.
    assert result["agreement"] < 1.0
    assert result["reference"]["top1"] != result["quantized"]["top1"]


def test_top_k_is_capped_by_class_count_and_nan_rows_are_counted() -> None:
    metric = AccuracyMetric({"top_k": 5})
    targets = torch.tensor([0, 1, 2])
    reference = torch.eye(3)
    quantized = torch.tensor([[1.0, 0, 0], [float("nan"), 0, 0], [0, 0, 1.0]])
    metric.update(BatchOutputs(targets, reference, quantized))
    result = metric.result()
    assert result["top_k"] == 3
    assert result["reference"]["topk"] == 1.0
    assert result["quantized"]["nonfinite_images"] == 1
    assert result["reference"]["nonfinite_images"] == 0


@pytest.mark.parametrize("options", [{"top_k": 0}, {"top_k": "five"}, {"topk": 5}])
def test_bad_options_are_user_errors(options: dict) -> None:
    with pytest.raises(QBenchError, match="evaluation.accuracy"):
        AccuracyMetric(options)


def test_nonfinite_logits_are_never_correct_and_never_agree() -> None:
    """``topk`` ranks NaN (and +inf) first: without the rule, each row below would be a hit
    on its target, and the two NaN sides would agree on it."""
    nan, inf = float("nan"), float("inf")
    targets = torch.tensor([0, 1, 2, 3, 0])
    reference = torch.tensor(
        [
            [9.0, 0, 0, 0],  # finite and right
            [0, 9.0, 0, 0],  # finite and right
            [0, 0, 9.0, 0],  # finite and right
            [nan, 1.0, 2.0, 3.0],  # NaN on both sides
            [0, 0, 0, 9.0],  # finite and wrong
        ]
    )
    quantized = torch.tensor(
        [
            [nan, 0, 0, 0],  # NaN at the target: topk ranks it first
            [0, inf, 0, 0],  # +inf at the target
            [0, 1.0, 2.0, -inf],  # -inf elsewhere: the argmax would be right
            [nan, 1.0, 2.0, 3.0],  # NaN on both sides: both topk say class 0
            [nan, 0, 0, 9.0],  # NaN at the target
        ]
    )
    metric = AccuracyMetric({"top_k": 2})
    metric.update(BatchOutputs(targets, reference, quantized))
    result = metric.result()
    assert result["reference"]["top1"] == pytest.approx(3 / 5)
    assert result["reference"]["topk"] == pytest.approx(3 / 5)  # not row 3: NaN, then 3
    assert result["quantized"]["top1"] == 0.0
    assert result["quantized"]["topk"] == 0.0
    assert result["reference"]["nonfinite_images"] == 1
    assert result["quantized"]["nonfinite_images"] == 5
    assert result["agreement"] == 0.0  # row 3 "agrees" only through NaN
    assert result["quantized"]["certainty"] == 0.0  # no finite row to be sure of
    assert result["warnings"] == [
        "FP32 reference model: 1 of 5 images had NaN/inf logits; they count as wrong and "
        "never as agreement",
        "quantized model: 5 of 5 images had NaN/inf logits; they count as wrong and never "
        "as agreement",
    ]


def test_agreement_needs_both_sides_finite_and_warnings_only_when_needed() -> None:
    nan = float("nan")
    targets = torch.tensor([0, 1, 2])
    logits = torch.eye(3)
    quantized = logits.clone()
    quantized[1, 1] = nan  # NaN at the target, on the quantized side only
    reference = logits.clone()
    reference[2, 2] = nan  # NaN at the target, on the reference side only
    metric = AccuracyMetric(None)
    metric.update(BatchOutputs(targets, reference, quantized))
    result = metric.result()
    assert result["agreement"] == pytest.approx(1 / 3)
    assert result["reference"]["top1"] == pytest.approx(2 / 3)
    assert result["quantized"]["top1"] == pytest.approx(2 / 3)
    assert len(result["warnings"]) == 2

    clean = AccuracyMetric(None)
    clean.update(BatchOutputs(targets, logits, logits))
    assert "warnings" not in clean.result() and clean.result()["agreement"] == 1.0
