"""`qbench.run` on CUDA reports what it reports on CPU: the demo config, both devices."""

from __future__ import annotations

from pathlib import Path

import pytest
import qbench

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

LIMIT = 256


def test_quickstart_on_cuda_reports_what_it_reports_on_cpu(repo: Path, tmp_path: Path) -> None:
    config = repo / "configs" / "quickstart.yaml"
    reports = {
        device: qbench.run(config, device=device, limit=LIMIT, output=tmp_path / device).report
        for device in ("cpu", "cuda")
    }
    cpu, cuda = reports["cpu"], reports["cuda"]
    assert cuda["device"] == "cuda" and cpu["device"] == "cpu"
    one_image = 1.0 / LIMIT + 1e-12  # IEEE FP32 on both, but not the same summation order
    for side in ("reference", "quantized"):
        for key in ("top1", "topk"):
            got, want = (
                cuda["metrics"]["accuracy"][side][key],
                cpu["metrics"]["accuracy"][side][key],
            )
            assert abs(got - want) <= one_image, (side, key, got, want)
    compliance = cuda["metrics"]["compliance"]
    assert compliance["status"] == "PASS", compliance["failures"]
    for role, summary in cpu["metrics"]["compliance"]["roles"].items():
        assert compliance["roles"][role]["elements"] == summary["elements"], role
    layers = {layer["name"]: layer for layer in cuda["metrics"]["layerwise"]["layers"]}
    for layer in cpu["metrics"]["layerwise"]["layers"]:
        twin = layers[layer["name"]]
        assert twin["cosine"] == pytest.approx(layer["cosine"], abs=2e-3), layer["name"]
        assert twin["input"]["max_abs"] == pytest.approx(layer["input"]["max_abs"], rel=1e-2)
