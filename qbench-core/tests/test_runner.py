"""The run flow of qbench.runner with toy components: config -> adapter/dataset -> prepared twin
-> lockstep forwards -> streaming metrics -> atomic reports."""

from __future__ import annotations

import json
from typing import Any

import pytest
import qbench
import torch
from core_toys import toy_config
from qbench.cli import main


def test_run_end_to_end_with_toy_components(toy_plugins, tmp_path):
    result = qbench.run(toy_config(name="toyrun"), output=tmp_path)
    assert result.out_dir == tmp_path / "toy_mlp" / "toyrun"
    assert [p.name for p in result.files] == ["report.json"]
    saved = json.loads((result.out_dir / "report.json").read_text())
    assert saved["name"] == "toyrun" and saved["model"] == "toy_mlp"
    assert saved["dataset"] == {"name": "toyset", "split": "test", "images": 20}
    accuracy = saved["metrics"]["accuracy"]
    assert accuracy["images"] == 20
    # the observer saw the cached weights once on entry and inputs on every call
    assert accuracy["roles"] == ["0:input", "0:weight", "2:input", "2:weight"]
    quantized = {entry["name"] for entry in saved["preparation"]["quantized"]}
    assert quantized == {"0", "2"}
    assert {entry["name"] for entry in saved["preparation"]["not_quantized"]} >= {"1"}


def test_agreement_is_computed_from_both_models(toy_plugins, tmp_path):
    """Recompute the toy metric's agreement independently from the same models and data."""
    result = qbench.run(toy_config(name="agree"), output=tmp_path)
    bundle = toy_plugins.registries["adapter"].get("toy").build({"width": 4})
    twin = qbench.prepare(bundle.model, {"format": "toy3"})
    batches = (
        toy_plugins.registries["dataset"].get("toyset").build({"batch_size": 8}, bundle=bundle)
    )
    agree = sum(int((bundle.model(x).argmax(1) == twin(x).argmax(1)).sum()) for x, _ in batches)
    assert result.metrics["accuracy"]["agreement"] == pytest.approx(agree / 20)


def test_limit_and_device_flags(toy_plugins, tmp_path, capsys):
    path = tmp_path / "limited.yaml"
    import yaml

    path.write_text(yaml.safe_dump(toy_config()))
    with pytest.raises(SystemExit) as info:
        main(
            [
                "run",
                str(path),
                "--limit",
                "5",
                "--device",
                "cpu",
                "--output",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
    assert info.value.code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "toy_mlp" / "limited" / "report.json").read_text())
    assert saved["dataset"]["images"] == 5
    assert saved["device"] == "cpu"
    assert saved["memory_format"] == "contiguous"  # auto, and the toy model has no convolution
    out = capsys.readouterr().out
    assert "report:" in out and "limited" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_request_without_cuda_is_a_user_error(toy_plugins, tmp_path, capsys):
    import yaml

    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump(toy_config(device="cuda")))
    with pytest.raises(SystemExit) as info:
        main(["run", str(path)])
    assert info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_quantize_api_uses_preset_scaling(toy_plugins):
    x = torch.tensor([[0.5, -1.5, 3.0, 0.25, 6.0, 1.0, -2.0, 0.0]])
    result = qbench.quantize(x, "toy3", return_codes=True)
    assert torch.equal(result.codes.float() * result.scales, result.dequantized)
    assert torch.equal(qbench.quantize(x, "toy3"), result.dequantized)


def _record_during_batches(monkeypatch, probe):
    """A list that gets ``probe()`` at every batch of later toy runs (the toy metric's update)."""
    import core_toys

    seen = []
    update = core_toys.ToyMetric.update

    def recording(self, batch):
        seen.append(probe())
        update(self, batch)

    monkeypatch.setattr(core_toys.ToyMetric, "update", recording)
    return seen


def test_a_run_freezes_existing_objects_for_its_duration(toy_plugins, tmp_path, monkeypatch):
    """Full collections during a run skip the objects that existed before it (qbench.memory);
    they are handed back to the collector when it ends, also when it fails."""
    import gc

    seen = _record_during_batches(monkeypatch, gc.get_freeze_count)
    qbench.run(toy_config(name="frozen"), output=tmp_path)
    assert len(seen) == 3 and all(count > 0 for count in seen)
    assert gc.get_freeze_count() == 0
    with pytest.raises(qbench.QBenchError):
        qbench.run(toy_config(name="bad"), output=tmp_path, limit=0)
    assert gc.get_freeze_count() == 0


def test_a_run_turns_tf32_off_and_restores_the_users_settings(toy_plugins, tmp_path, monkeypatch):
    """The FP32 reference is IEEE FP32 on CUDA as well: the TF32 switches (torch allows TF32
    for cuDNN convolutions by default) are off during the batches and restored afterwards,
    set through whichever of torch's two APIs the user set them with."""
    seen = _record_during_batches(
        monkeypatch,
        lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32),
    )
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        qbench.run(toy_config(name="fp32"), output=tmp_path)
        assert seen == [(False, False)] * 3
        assert cudnn.allow_tf32 and matmul.allow_tf32
        with pytest.raises(qbench.QBenchError):
            qbench.run(toy_config(name="bad"), output=tmp_path, limit=0)
        assert cudnn.allow_tf32 and matmul.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def test_full_fp32_uses_the_newer_api_where_the_user_did():
    """torch refuses to read the legacy flag once ``fp32_precision`` set that switch."""
    from qbench.runner import full_fp32

    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no fp32_precision API")
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        with full_fp32():
            assert matmul.fp32_precision == "ieee"
            assert not torch.backends.cudnn.allow_tf32
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before
    assert matmul.allow_tf32 is False  # the legacy flag reads again once the setting is reset


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_full_fp32_gives_ieee_convolutions_on_cuda():
    """Inside a run a CUDA convolution is FP32-accurate (TF32's 10-bit mantissa would leave
    relative errors near 1e-3)."""
    import torch.nn.functional as F
    from qbench.runner import full_fp32

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 32, 32, generator=generator)
    w = torch.randn(64, 64, 3, 3, generator=generator)
    exact = F.conv2d(x.double(), w.double())
    with full_fp32():
        got = F.conv2d(x.cuda(), w.cuda()).cpu().double()
    default = F.conv2d(x.cuda(), w.cuda()).cpu().double()
    scale = exact.abs().max()
    error = float((got - exact).abs().max() / scale)
    print(
        f"max relative error: {error:.2e} IEEE, {float((default - exact).abs().max() / scale):.2e} torch's default"
    )
    assert error < 1e-5


def test_memory_format_auto_picks_channels_last_for_convolutions_on_cpu_only():
    from qbench.runner import resolve_memory_format

    convolutional = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    dense = torch.nn.Sequential(torch.nn.Linear(3, 4))
    assert resolve_memory_format("auto", "cpu", convolutional) == "channels_last"
    assert resolve_memory_format(None, "cpu", convolutional) == "channels_last"
    assert resolve_memory_format("auto", "cpu", dense) == "contiguous"
    assert resolve_memory_format("auto", "cuda", convolutional) == "contiguous"
    for chosen in ("contiguous", "channels_last"):
        assert resolve_memory_format(chosen, "cpu", dense) == chosen
    with pytest.raises(qbench.QBenchError, match="memory_format 'nhwc'; allowed: auto, "):
        resolve_memory_format("nhwc", "cpu", dense)


class _ConvNet(torch.nn.Module):
    """A 2x2 convolution and a linear head for (N, 2, 3, 3) images. ``record`` is told whether
    its input and convolution weight are channels-last on each call (a function: the twin,
    a deep copy, shares it); with ``view`` it flattens with ``view``, which a channels-last
    activation cannot take."""

    def __init__(self, view: bool = False, record: Any = None) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 2)
        self.head = torch.nn.Linear(16, 3)
        self.view, self.record = view, record

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.record is not None:
            self.record(("input", x.is_contiguous(memory_format=torch.channels_last)))
            weight = self.conv.weight
            self.record(("weight", weight.is_contiguous(memory_format=torch.channels_last)))
        h = self.conv(x)
        return self.head(h.view(h.shape[0], -1) if self.view else h.flatten(1))


def _serve(monkeypatch, make_model, data):  # type: ignore[no-untyped-def]
    """The toy adapter builds ``make_model()`` (seeded) and the toy dataset yields ``data``;
    returns the adapter's build."""
    import core_toys
    from qbench.types import ModelBundle

    def build(self, options, *, device="cpu"):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        return ModelBundle(model=make_model().eval(), name="toy_image", num_classes=3)

    monkeypatch.setattr(core_toys.ToyAdapter, "build", build)
    monkeypatch.setattr(core_toys.ToyDataset, "build", lambda self, options, *, bundle: data)
    return build


def test_a_channels_last_run_feeds_both_models_channels_last(toy_plugins, tmp_path, monkeypatch):
    """memory_format: channels_last converts the model before the twin is made (its weights
    and the twin's) and every 4-D batch; the report records the layout."""
    layouts: list[tuple[str, bool]] = []
    generator = torch.Generator().manual_seed(1)
    data = [(torch.randn(5, 2, 3, 3, generator=generator), torch.arange(5) % 3)]
    _serve(monkeypatch, lambda: _ConvNet(record=lambda item: layouts.append(item)), data)
    for chosen, expected in (("channels_last", True), ("contiguous", False)):
        layouts.clear()
        result = qbench.run({**toy_config(name=chosen), "memory_format": chosen}, output=tmp_path)
        assert result.report["memory_format"] == chosen
        # one batch, both models; channels-last first runs the reference on one image
        assert len(layouts) == (6 if expected else 4)
        assert all(is_channels_last == expected for _, is_channels_last in layouts), layouts


def test_a_model_that_cannot_run_channels_last_runs_contiguous_under_auto(
    toy_plugins, tmp_path, monkeypatch
):
    """``x.view(n, -1)`` after a convolution fails on a channels-last tensor: auto notices on
    one image of the first batch and runs contiguous (no batch lost); asked for by name,
    channels_last is refused with a one-line error."""
    generator = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 2, 3, 3, generator=generator), torch.arange(4) % 3) for _ in range(3)]
    build = _serve(monkeypatch, lambda: _ConvNet(view=True), data)
    with pytest.raises(RuntimeError, match="view"):  # the premise: this model cannot
        _ConvNet(view=True)(data[0][0].contiguous(memory_format=torch.channels_last))

    result = qbench.run(toy_config(name="auto"), device="cpu", output=tmp_path)
    assert result.report["memory_format"] == "contiguous"
    assert result.report["dataset"]["images"] == 12
    model = _ConvNet(view=True).eval()
    model.load_state_dict(build(None, None).model.state_dict())
    twin = qbench.prepare(model, {"format": "toy3"})
    with torch.no_grad():
        agree = sum(int((model(x).argmax(1) == twin(x).argmax(1)).sum()) for x, _ in data)
    assert result.metrics["accuracy"]["agreement"] == pytest.approx(agree / 12)

    with pytest.raises(qbench.QBenchError) as info:
        qbench.run({**toy_config(name="named"), "memory_format": "channels_last"}, output=tmp_path)
    message = str(info.value)
    assert "\n" not in message and message.startswith("memory_format: channels_last: the model")
    assert "view" in message and "allowed: auto" in message


class _SkippingBatches(list):
    """Batches that skipped one unreadable file and say their label space."""

    skipped = [{"path": "bad.png", "reason": "truncated"}]
    info = {"num_classes": 3}
    samples = [("a.png", 0), ("b.png", 1)]


def test_a_channels_last_run_still_reads_the_datasets_own_attributes(
    toy_plugins, tmp_path, monkeypatch
):
    """The channels-last trial hands the loop a chain of batches: skipped files, the label
    space and the data fingerprint still come from the dataset object itself."""
    generator = torch.Generator().manual_seed(1)
    data = _SkippingBatches([(torch.randn(4, 2, 3, 3, generator=generator), torch.arange(4) % 3)])
    _serve(monkeypatch, _ConvNet, data)
    report = qbench.run(
        {**toy_config(name="attrs"), "memory_format": "channels_last"}, output=tmp_path
    ).report
    assert report["memory_format"] == "channels_last"
    assert report["dataset"]["skipped_count"] == 1
    assert report["provenance"]["data_sha256"] is not None
