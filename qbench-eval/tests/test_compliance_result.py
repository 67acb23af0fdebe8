"""``ComplianceMetric.result`` is a pure summary of what was observed: it changes nothing
(counts still pending stay pending), calling it twice gives the same dict, and what it returns
shares nothing the metric keeps."""

from __future__ import annotations

import copy
import dataclasses
import math

import qbench
import torch
from eval_helpers import kernels_on
from qbench.types import BatchOutputs
from qbench_eval.compliance import ComplianceMetric

BATCH = BatchOutputs(torch.zeros(1), torch.zeros(1, 1), torch.zeros(1, 1))


def _tampered(seed: int):
    torch.manual_seed(seed)
    result = qbench.quantize(torch.randn(4, 64), "fp8_e4m3", return_codes=True)
    dequantized = result.dequantized.clone()
    dequantized[1, 5] = torch.nextafter(dequantized[1, 5], torch.tensor(math.inf))
    return dataclasses.replace(result, dequantized=dequantized)


def test_result_is_pure_and_idempotent_with_counts_pending() -> None:
    with kernels_on("compiled"):  # the fused counting pass is the deferred one
        metric = ComplianceMetric({"max_examples": 3})
        metric.defer_bytes["cpu"] = 1 << 40  # counts wait, as on CUDA
        metric.attach(None, None, {"preparation": {"quantized": []}})
        metric.on_tensor("relu", "act", _tampered(0))
        clean = qbench.quantize(torch.randn(4, 64), "fp8_e4m3", return_codes=True)
        metric.on_tensor("fc", "input", clean)
        assert len(metric._pending) == 2
        before = copy.deepcopy({key: audit.as_dict() for key, audit in metric.audits.items()})

        first = metric.result()
        assert len(metric._pending) == 2  # nothing was settled by reading the result
        assert {key: audit.as_dict() for key, audit in metric.audits.items()} == before
        second = metric.result()
        assert second == first
        [failure] = first["failures"]
        assert failure["failures"] == {"reconstruction": 1}
        assert [e["index"] for e in failure["examples"]] == [[1, 5]]

        first["failures"][0]["examples"][0]["index"][0] = 99  # the caller's copy only
        first["tensors"].clear()
        assert metric.result() == second

        metric.update(BATCH)  # now the counts are recorded for good: the same verdict
        assert not metric._pending
        settled = metric.result()
        assert settled == {**second, "batches": 1}
        settled["failures"][0]["examples"].clear()
        assert metric.result()["failures"][0]["examples"] == second["failures"][0]["examples"]
