"""Static input/activation scales from calibration batches (qbench_ops.calibration): what is
recorded, what freezes, bit-exactness against the format's own quantization of a tensor whose
amax is the calibrated one, saturation, the audit's reconstruction, the report, sharing
between quantizers, copies."""

from __future__ import annotations

import copy
import pickle

import pytest
import qbench
import torch
from qbench import QBenchError
from qbench.preparation import observe
from qbench_ops.calibration import calibrating, freeze, quantizers, release
from torch import nn


class ConvLinear(nn.Module):
    """conv -> ReLU -> linear, a softmax written as a call (a call site the interceptor finds
    only while it runs), and a layer only used on demand (never calibrated)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 5 * 5, 6)
        self.spare = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, spare: bool = False) -> torch.Tensor:
        y = self.fc(self.relu(self.conv(x)).flatten(1))
        if spare:
            y = self.spare(y)
        return torch.softmax(y, dim=-1)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return ConvLinear().eval()


def _batch(seed: int, scale: float = 1.0, shape: tuple[int, ...] = (2, 3, 5, 5)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


class Recorder:
    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], qbench.QuantResult] = {}

    def on_tensor(self, layer, role, result):  # type: ignore[no-untyped-def]
        self.seen[(layer, role)] = result


def _inputs_of(twin: nn.Module, names: list[str]) -> tuple[dict[str, list[torch.Tensor]], list]:
    """Forward pre-hooks that keep what each named module receives (what its input quantizer
    is called with)."""
    got: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = [
        twin.get_submodule(name).register_forward_pre_hook(
            lambda m, args, name=name: got[name].append(args[0].detach().clone())
        )
        for name in names
    ]
    return got, handles


def _amax(tensors: list[torch.Tensor], mode: str, axis: int) -> torch.Tensor:
    """Calibrated amax computed independently: max |x| over the finite values of all batches,
    per channel along ``axis`` in mode channel."""
    values = []
    for t in tensors:
        m = torch.where(torch.isfinite(t), t.abs(), torch.zeros_like(t))
        if mode == "tensor":
            values.append(m.max())
        else:
            values.append(m.movedim(axis, 0).flatten(1).max(dim=1).values)
    return torch.stack(values).max(dim=0).values


def _with_amax(x: torch.Tensor, amax: torch.Tensor, mode: str, axis: int, last: bool):
    """x clamped to ±amax with one element per group (the first or the last) set to amax: a
    tensor whose absmax per group is exactly ``amax``, and the mask of the other elements."""
    view = [1] * x.dim()
    if mode == "channel":
        view[axis] = -1
    a = amax.reshape(view)
    z = torch.minimum(x.abs(), a).copysign(x)  # saturated at ±A, signs (of zeros too) kept
    mask = torch.ones_like(x, dtype=torch.bool)
    corner = [s - 1 if last else 0 for s in x.shape]
    for c in range(x.shape[axis] if mode == "channel" else 1):
        if mode == "channel":
            corner[axis] = c
        z[tuple(corner)] = amax.reshape(-1)[c]
        mask[tuple(corner)] = False
    return z, mask


def _decode(result: qbench.QuantResult) -> torch.Tensor:
    fmt = qbench.get_format(result.spec.format)
    element = qbench.get_format(getattr(fmt, "element", result.spec.format))
    return element.decode(result.codes) * result.expand_scales()


CASES = [
    pytest.param({"format": "fp8_e4m3", "mode": "tensor"}, id="fp8-tensor"),
    pytest.param({"format": "fp8_e4m3", "mode": "channel"}, id="fp8-channel"),
    pytest.param({"format": "int8", "mode": "tensor"}, id="int8-tensor"),
    pytest.param({"format": "int8", "mode": "channel"}, id="int8-channel"),
    pytest.param({"format": "mxfp8_e4m3", "mode": "tensor"}, id="mxfp8-e8m0-tensor"),
    pytest.param(
        {"format": "fp8_e4m3", "mode": "channel", "scale_format": "e8m0"}, id="fp8-e8m0-channel"
    ),
    pytest.param({"format": "nvfp4", "mode": "channel"}, id="nvfp4-fp8scales-channel"),
]


@pytest.mark.parametrize("config", CASES)
def test_frozen_scales_are_the_formats_own_for_the_calibrated_amax(config):
    """After calibrate + freeze, a batch whose amax differs from the calibration's gets the
    scale of the calibrated amax A, exactly as the format quantizes a tensor whose amax is A;
    values beyond A saturate; decode(codes) * scales is the tensor the layer used."""
    # the ReLU stays dynamic (chunks), so fc's input, too, goes beyond its calibrated amax
    relu_chunks = {"match": "relu", "act_mode": "chunk", "act_chunk_size": 4}
    twin = qbench.prepare(_model(), {**config, "weight_mode": "tensor", "layers": [relu_chunks]})
    got, handles = _inputs_of(twin, ["conv", "fc"])
    calibration = [_batch(1), _batch(2, 0.5)]
    calibration[1][0, 0, 0, 0] = float("nan")  # NaN and inf are not recorded
    calibration[1][1, 2, 1, 1] = float("inf")
    with torch.no_grad(), calibrating(twin):
        for batch in calibration:
            twin(batch)
    report = freeze(twin)
    calibrated = {name: list(inputs) for name, inputs in got.items()}
    mode = config["mode"]
    assert {(e["name"], e["role"]) for e in report["static"]} >= {
        ("conv", "input"),
        ("fc", "input"),
        ("model:softmax#1", "act"),
    }
    assert [(e["name"], e["role"]) for e in report["dynamic"]] == [
        ("relu", "act"),
        ("spare", "input"),
    ]
    # three times the calibration's spread (beyond A in places), then a twentieth (below A
    # everywhere): both get A's scales
    for scale in (3.0, 0.05):
        for name in got:
            got[name].clear()
        x = _batch(3, scale)
        recorder = Recorder()
        with torch.no_grad():
            fast = twin(x)
            with observe(twin, recorder):
                observed = twin(x)
        assert torch.equal(fast, observed)  # the audited path computes what the fast path does
        for name in ("conv", "fc"):
            result = recorder.seen[(name, "input")]
            spec = result.spec
            x_in = got[name][0]
            axis = spec.scaling.axis % x_in.dim() if mode == "channel" else 0
            amax = _amax(calibrated[name], mode, axis)
            entry = next(e for e in report["static"] if (e["name"], e["role"]) == (name, "input"))
            assert entry["groups"] == amax.numel()
            covered = torch.zeros_like(x_in, dtype=torch.bool)
            for last in (False, True):
                z, mask = _with_amax(x_in, amax, mode, axis, last)
                expected = qbench.quantize(z, spec, return_codes=True)
                assert torch.equal(result.dequantized[mask], expected.dequantized[mask]), name
                assert torch.equal(result.codes[mask], expected.codes[mask]), name
                assert torch.equal(result.scales, expected.scales), name
                covered |= mask
            assert bool(covered.all())
            # the scale is not this batch's own
            dynamic = qbench.quantize(x_in, spec, return_codes=True)
            assert not torch.equal(dynamic.scales, result.scales), name
            # values beyond A saturate
            view = [1] * x_in.dim()
            if mode == "channel":
                view[axis] = -1
            a = amax.reshape(view).expand_as(x_in)
            beyond = x_in.abs() > a
            assert bool(beyond.any()) or scale < 1, name
            at_a = qbench.quantize(a.clone(), spec)  # A itself, per group
            expected_beyond = at_a.copysign(x_in)[beyond]
            assert torch.equal(result.dequantized[beyond], expected_beyond), name
            # the audit's reconstruction
            assert result.codes.shape == x_in.shape
            assert torch.equal(_decode(result), result.dequantized), name
    for handle in handles:
        handle.remove()


def test_recording_ignores_nan_and_inf_and_follows_the_channel_axis():
    twin = qbench.prepare(_model(), {"format": "fp8_e4m3", "mode": "channel"})
    x = _batch(1)
    x[0, 1, 0, 0] = float("nan")
    x[1, 2, 3, 3] = -float("inf")
    with torch.no_grad(), calibrating(twin):
        twin(x)
        twin(_batch(2, 0.25))
    conv = twin.conv._q_input
    expected = torch.where(torch.isfinite(x), x.abs(), 0.0).amax(dim=(0, 2, 3))
    assert torch.equal(conv.recorder.amax, expected)
    assert conv.static is None  # dynamic until frozen
    freeze(twin)
    assert conv.recorder is None and torch.equal(conv.static.amax, expected)


def test_report_lists_dynamic_roles_with_reasons_and_chunk_roles_stay_dynamic():
    config = {
        "format": "fp8_e4m3",
        "mode": "tensor",
        "layers": [
            {"match": "relu", "act_mode": "chunk", "act_chunk_size": 4},
            {"match": "fc", "input_scale_method": "percentile"},
        ],
    }
    twin = qbench.prepare(_model(), config)
    with torch.no_grad(), calibrating(twin):
        twin(_batch(1))
    report = freeze(twin)
    static = {(e["name"], e["role"]): e["groups"] for e in report["static"]}
    dynamic = {(e["name"], e["role"]): e["reason"] for e in report["dynamic"]}
    assert static == {("conv", "input"): 1, ("model:softmax#1", "act"): 1}
    assert dynamic[("relu", "act")] == "mode chunk: block scales stay dynamic"
    assert dynamic[("fc", "input")].startswith("scale_method percentile")
    assert dynamic[("spare", "input")] == "never called during calibration"
    assert set(static) | set(dynamic) == {
        (q.layer, q.role) for q in quantizers(twin) if q.role in ("input", "act")
    }
    # weights are untouched; dynamic roles keep per-batch scales
    assert all(q.static is None for q in quantizers(twin) if q.role == "weight")
    x = _batch(4, 3.0)
    recorder = Recorder()
    with torch.no_grad(), observe(twin, recorder):
        twin(x)
    relu = recorder.seen[("relu", "act")]
    dynamic_relu = qbench.quantize(torch.relu(twin.conv(x)), relu.spec)
    assert torch.equal(relu.dequantized, dynamic_relu)


def test_overflow_format_stays_dynamic():
    twin = qbench.prepare(_model(), {"format": "fp8_e4m3", "mode": "tensor", "overflow": "format"})
    with torch.no_grad(), calibrating(twin):
        twin(_batch(1))
    report = freeze(twin)
    assert report["static"] == []
    assert all(e["reason"].startswith("overflow is not saturate") for e in report["dynamic"])


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(x)  # act quantizer, then a's input quantizer (equal specs)
        return self.a(y) + self.b(y)  # two consumers of one tensor (equal specs)


def _chain_twin() -> nn.Module:
    torch.manual_seed(0)
    return qbench.prepare(Chain().eval(), {"format": "fp8_e4m3", "mode": "tensor"})


def test_dynamic_quantizers_still_share_quantizations():
    twin = _chain_twin()
    with torch.no_grad(), calibrating(twin):  # calibrated, never frozen: still dynamic
        twin(_batch(1, shape=(3, 8)))
    recorder = Recorder()
    with torch.no_grad(), observe(twin, recorder):
        twin(_batch(2, shape=(3, 8)))
    act = recorder.seen[("act", "act")].dequantized
    assert recorder.seen[("a", "input")].dequantized is act
    assert recorder.seen[("b", "input")].dequantized is act


def test_no_sharing_between_static_quantizers_with_different_amax():
    twin = _chain_twin()
    with torch.no_grad(), calibrating(twin):  # each layer sees its own spread
        twin.act(_batch(1, 1.0, (3, 8)))
        twin.a(_batch(2, 4.0, (3, 8)).relu())
        twin.b(_batch(3, 0.25, (3, 8)).relu())
    freeze(twin)
    act_q = twin.act._q_act
    a_q, b_q = twin.a._q_input, twin.b._q_input
    assert len({float(q.static.amax) for q in (act_q, a_q, b_q)}) == 3
    x = _batch(4, 2.0, (3, 8))
    seen: dict[str, qbench.QuantResult] = {}

    class All:
        def on_tensor(self, layer, role, result):  # type: ignore[no-untyped-def]
            if role != "weight":
                seen[layer] = result

    with torch.no_grad(), observe(twin, All()):
        twin(x)
    y = seen["act"].dequantized
    assert seen["a"].dequantized is not y and seen["b"].dequantized is not y
    assert seen["a"].dequantized is not seen["b"].dequantized
    assert not torch.equal(seen["a"].scales, seen["b"].scales)
    # each consumer quantized act's output with its own static scales
    with torch.no_grad():
        assert torch.equal(a_q.quantize_fast(y), seen["a"].dequantized)
        assert torch.equal(b_q.quantize_fast(y), seen["b"].dequantized)
        # a static quantizer still shares with itself
        first = a_q(x)
        assert a_q(x) is first and a_q(first) is first
        # and a dynamic quantizer with an equal spec does not take a static one's output
        assert twin.a._q_input.spec == twin.b._q_input.spec
        b_q.static = None
        assert b_q(first) is not first
        assert torch.equal(b_q(first.clone()), qbench.quantize(first, b_q.spec))


def test_deepcopy_and_pickle_keep_static_scales():
    twin = qbench.prepare(_model(), {"format": "fp8_e4m3", "mode": "channel"})
    with torch.no_grad(), calibrating(twin):
        twin(_batch(1))
    freeze(twin)
    x = _batch(5, 3.0)
    with torch.no_grad():
        expected = twin(x)
        for other in (copy.deepcopy(twin), pickle.loads(pickle.dumps(twin))):
            q = other.conv._q_input
            assert q.static is not twin.conv._q_input.static
            assert torch.equal(q.static.amax, twin.conv._q_input.static.amax)
            assert torch.equal(other(x), expected)
    release(twin)
    with torch.no_grad():
        assert not torch.equal(twin(x), expected)  # dynamic again
        assert torch.equal(
            twin(x), qbench.prepare(_model(), {"format": "fp8_e4m3", "mode": "channel"})(x)
        )


def test_calibrating_again_after_freeze_starts_afresh_and_blocks_add_up():
    twin = qbench.prepare(_model(), {"format": "int8", "mode": "tensor"})
    conv = twin.conv._q_input
    with torch.no_grad():
        with calibrating(twin):
            twin(_batch(1, 1.0))
        with calibrating(twin):
            twin(_batch(2, 0.1))
        twin(_batch(3, 100.0))  # outside a block: not recorded
        freeze(twin)
        first = conv.static.amax.clone()
        assert torch.equal(first, torch.maximum(_batch(1).abs().max(), _batch(2, 0.1).abs().max()))
        with calibrating(twin):
            assert conv.static is None  # dynamic while calibrating
            twin(_batch(2, 0.1))
        freeze(twin)
    assert torch.equal(conv.static.amax, _batch(2, 0.1).abs().max())


def test_channel_layout_other_than_calibrated_is_refused():
    twin = qbench.prepare(_model(), {"format": "fp8_e4m3", "mode": "channel"})
    with torch.no_grad(), calibrating(twin):
        twin.fc(_batch(1, shape=(2, 100)))
    freeze(twin)
    with pytest.raises(QBenchError, match=r"fc \(input\).*100 channels along axis 1"):
        twin.fc._q_input(_batch(1, shape=(2, 50)))


def test_channels_last_and_bfloat16_inputs_are_exact():
    twin = qbench.prepare(_model(), {"format": "fp8_e4m3", "mode": "channel"})
    with torch.no_grad(), calibrating(twin):
        twin(_batch(1))
    freeze(twin)
    q = twin.conv._q_input
    x = _batch(6, 3.0)
    with torch.no_grad():
        plain = q.quantize_fast(x)
        last = q.quantize_fast(x.to(memory_format=torch.channels_last))
        assert last.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(last, plain)
        half = q.quantize_fast(x.to(torch.bfloat16))
        # the format computes in float32 and casts back: the same for a tensor with amax A
        z, mask = _with_amax(x.to(torch.bfloat16).float(), q.static.amax, "channel", 1, False)
        expected = qbench.quantize(z, q.spec_for(x)).to(torch.bfloat16)
        assert half.dtype == torch.bfloat16
        assert torch.equal(half[mask], expected[mask])
