"""The metrics give the same numbers on CUDA as on CPU (device-agnostic code)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import qbench
import qbench.kernels
import torch
from eval_helpers import kernels_on, quantize, spec
from qbench.spec import spec_from_arguments
from qbench.types import BatchOutputs
from qbench_eval.accuracy import AccuracyMetric
from qbench_eval.compliance import ComplianceMetric
from qbench_eval.layerwise import LayerwiseMetric, input_stats, pair_sums, pair_sums_and_stats
from torch import nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _run(device: str) -> tuple[dict, dict, dict]:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    quantized = copy.deepcopy(reference)
    with torch.no_grad():
        for p in quantized.parameters():
            p.copy_(torch.round(p * 16) / 16)
    reference, quantized = reference.to(device), quantized.to(device)
    preparation = {"quantized": [{"name": n, "roles": {"input": ""}} for n in ("0", "1", "2")]}
    accuracy, layerwise, compliance = (
        AccuracyMetric(None),
        LayerwiseMetric(None),
        ComplianceMetric(None),
    )
    for metric in (accuracy, layerwise, compliance):
        metric.attach(reference, quantized, {"preparation": preparation})
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for index in range(3):
            x = torch.randn(8, 16, generator=generator)
            targets = torch.randint(0, 4, (8,), generator=generator)
            for layer in ("0", "1", "2"):
                compliance.on_tensor(
                    layer, "input", quantize(x.to(device), spec("test_int8", "chunk", 4, "e8m0"))
                )
            batch = BatchOutputs(
                targets.to(device), reference(x.to(device)), quantized(x.to(device)), index
            )
            for metric in (accuracy, layerwise, compliance):
                metric.update(batch)
    layerwise.close()
    return accuracy.result(), layerwise.result(), compliance.result()


def test_cuda_matches_cpu() -> None:
    cpu, cuda = _run("cpu"), _run("cuda")
    for side in ("reference", "quantized"):
        for key in ("top1", "topk", "certainty"):
            assert cuda[0][side][key] == pytest.approx(cpu[0][side][key])
    assert cuda[0]["agreement"] == cpu[0]["agreement"]
    for a, b in zip(cpu[1]["layers"], cuda[1]["layers"]):
        assert b["mse"] == pytest.approx(a["mse"], rel=1e-4)
        assert b["cosine"] == pytest.approx(a["cosine"], rel=1e-6)
        assert b["input"]["max_abs"] == pytest.approx(a["input"]["max_abs"])
    assert cuda[2]["status"] == cpu[2]["status"] == "PASS"
    assert cuda[2]["roles"]["input"]["elements"] == cpu[2]["roles"]["input"]["elements"]


# -- the fused kernels on CUDA: compiled (Triton) and eager, against the CPU ---------------


@pytest.mark.parametrize("path", ["eager", "compiled"])
@pytest.mark.parametrize("name", ["fp8_e4m3", "fp4_e2m1", "int8", "mxfp4_e2m1", "nvfp4"])
def test_audit_on_cuda_finds_what_it_finds_on_cpu(name: str, path: str) -> None:
    """A real format's quantization of a conv-sized activation, with one value a ulp off and
    one code outside the code space planted, audited on each device: the same verdict,
    counts and examples (the bit-field decoder for float formats, the table for int8). The
    CPU side runs eager (CPU compiled against eager is tested elsewhere), so only the CUDA
    side compiles."""
    fmt = qbench.get_format(name)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(8, 64, 24, 24, generator=generator)
    x *= torch.logspace(-2, 2, 64).reshape(1, 64, 1, 1)
    x[0, 0] = 0.0  # zero blocks
    preset = fmt.element != name
    quantization = spec_from_arguments(
        name, **({} if preset else {"mode": "chunk", "chunk_size": 32, "axis": 1})
    )
    element = qbench.get_format(fmt.element)
    reports = {}
    for device, device_path in (("cpu", "eager"), ("cuda", path)):
        result = fmt.quantize(x.to(device), quantization, return_codes=True, path=device_path)
        dequantized, codes = result.dequantized.clone(), result.codes.clone()
        dequantized[1, 5, 3, 3] = torch.nextafter(
            dequantized[1, 5, 3, 3], dequantized.new_tensor(9)
        )
        codes[7, 60, 20, 1] = 2**element.bits + 3
        metric = ComplianceMetric(None)
        metric.attach(None, None, {"preparation": {"quantized": []}})
        with kernels_on(device_path):
            metric.on_tensor(
                "conv", "input", dataclasses.replace(result, dequantized=dequantized, codes=codes)
            )
        # CUDA's fused counts wait for one host sync (DEFER_BYTES), read here by result()
        assert bool(metric._pending) is (device == "cuda" and device_path == "compiled")
        reports[device] = metric.result()
    assert not qbench.kernels._FAILED, "a kernel fell back to eager: its compile failed"
    assert reports["cuda"]["failures"] == reports["cpu"]["failures"]
    [failure] = reports["cpu"]["failures"]
    assert failure["failures"] == {"grid": 1, "reconstruction": 2}, failure
    assert {tuple(e["index"]) for e in failure["examples"]} == {(1, 5, 3, 3), (7, 60, 20, 1)}


@pytest.mark.parametrize("path", ["eager", "compiled"])
def test_layerwise_kernels_on_cuda_match_cpu(path: str) -> None:
    """Pair sums (float64) and input statistics of conv-sized outputs, each device alike."""
    generator = torch.Generator().manual_seed(6)
    reference = torch.randn(8, 64, 24, 24, generator=generator)
    quantized = reference + 0.01 * torch.randn(reference.shape, generator=generator)
    quantized[0, :3] = 0.0
    quantized[1, 1, 1, 1] = 2.0**-130  # a float32 subnormal: the smallest non-zero |x|
    with kernels_on("eager"):
        on_cpu = pair_sums_and_stats(reference, quantized)
        plain = input_stats(quantized)
    with kernels_on(path):
        on_cuda = pair_sums_and_stats(reference.cuda(), quantized.cuda())
        sums = pair_sums(reference.cuda(), quantized.cuda()).cpu()
    assert not qbench.kernels._FAILED, "a kernel fell back to eager: its compile failed"
    torch.testing.assert_close(on_cuda[0].cpu(), on_cpu[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(sums, on_cpu[0], rtol=1e-12, atol=0)
    for cuda_stat, cpu_stat, plain_stat in zip(on_cuda[1], on_cpu[1], plain):
        assert cuda_stat.item() == cpu_stat.item() == plain_stat.item()
    assert on_cpu[1][2].item() == 2.0**-130
