"""What the twin computes: exactness, representability, fidelity, caching and sharing."""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import pytest
import qbench
import torch
import torchvision
from ops_inputs import image_like
from qbench import LayerSpecs, QuantSpec, Scaling
from qbench.preparation import observe, quantized_modules
from qbench_ops.calls import uninstall
from qbench_ops.plugin import ALL_OPS
from torch import nn

FP8_CHUNK = {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 128}


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, qbench.QuantResult]] = []

    def on_tensor(self, layer, role, result):  # type: ignore[no-untyped-def]
        self.seen.append((layer, role, result))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _check_on_grid(result: qbench.QuantResult) -> None:
    """codes decode to grid values, scales are legal, and they rebuild the tensor bit for bit."""
    fmt = qbench.get_format(result.spec.format)
    elements = fmt.decode(result.codes)
    assert bool(fmt.is_representable(elements).all())
    for values, scale_format in result.scale_parts.values():
        scales = values if isinstance(values, torch.Tensor) else torch.as_tensor(values)
        assert bool(torch.isfinite(scales).all()) and bool((scales > 0).all())
        assert bool(qbench.get_format(scale_format).is_representable(scales).all())
    rebuilt = elements * result.expand_scales()
    assert torch.equal(rebuilt.to(result.dequantized.dtype), result.dequantized)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(image_size=32, num_classes=10).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-inits the head
    return model


# -- disabled quantization is the identity --------------------------------------------


def test_disabled_quantization_is_bit_exact(resnet18, vit, every_op):
    for model, x in (
        (resnet18, image_like(2, 64)),
        (vit, image_like(2, 32)),
        (every_op, image_like(2, 16)),
    ):
        for config in (
            {**FP8_CHUNK, "enabled": False},
            {**FP8_CHUNK, "layers": [{"match": "*", "enabled": False}]},
        ):
            model_q = qbench.prepare(model, config)
            assert quantized_modules(model_q) == {}
            with torch.no_grad():
                assert torch.equal(model_q(x), model(x))


def test_ops_with_nothing_to_quantize_are_bit_exact(every_op):
    """Each op's own forward, with every role off, is torch's forward bit for bit."""
    x = image_like(2, 16)
    twin = qbench.prepare(every_op, FP8_CHUNK)
    # the idle modules set below carry none of the call interceptor's hooks: their calls
    # would be taken for the root module's own (and torch's attention leaves its fast path
    # while a torch function mode is active)
    uninstall(twin)
    for name, module in quantized_modules(twin).items():
        original = every_op.get_submodule(name)
        idle = type(module).from_module(original, LayerSpecs(), name=name)
        assert "." not in name  # EveryOp's layers are its direct children
        setattr(twin, name, idle)
    with torch.no_grad():
        assert torch.equal(twin(x), every_op(x))


def test_passthrough_format_reproduces_fp32(passthrough, resnet18, vit, every_op):
    """With an identity 'format' every op runs: the ops' arithmetic equals torch's (bit for bit
    except attention, which the op computes unfused)."""
    config = {"format": passthrough.name, "mode": "chunk", "chunk_size": 16}
    for model, x, exact in (
        (resnet18, image_like(2, 64), True),
        (every_op, image_like(2, 16), False),
        (vit, image_like(2, 32), False),
    ):
        model_q = qbench.prepare(model, config)
        with torch.no_grad():
            expected, got = model(x), model_q(x)
        if exact:
            assert torch.equal(got, expected)
        else:
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert passthrough.calls  # the ops did quantize


# -- fidelity ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64])
def test_resnet18_fp8_chunk128_cosine(resnet18, size):
    model_q = qbench.prepare(resnet18, FP8_CHUNK)
    x = image_like(4, size)
    with torch.no_grad():
        reference, quantized = resnet18(x), model_q(x)
    assert not torch.equal(reference, quantized)
    assert _cosine(reference, quantized) > 0.99


def test_vit_b_16_fp8_chunk128_cosine(vit):
    model_q = qbench.prepare(vit, FP8_CHUNK)
    x = image_like(4, 32)
    with torch.no_grad():
        reference, quantized = vit(x), model_q(x)
    assert not torch.equal(reference, quantized)
    assert _cosine(reference, quantized) > 0.99


def test_int4_weights_are_far_less_faithful_than_fp8(resnet18):
    """The cosine check can fail: a coarse format measurably degrades the same model."""
    x = image_like(4, 64)
    w4 = qbench.prepare(resnet18, {"format": "fp4_e2m1", "mode": "tensor"})
    with torch.no_grad():
        reference, coarse = resnet18(x), w4(x)
    assert _cosine(reference, coarse) < 0.99


# -- every selected tensor is representable -------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        FP8_CHUNK,
        {"format": "mxfp4_e2m1"},
        {
            "format": "int8",
            "weight_mode": "channel",
        },
    ],
    ids=["fp8_chunk128", "mxfp4", "int8"],
)
def test_every_selected_tensor_is_representable(every_op, config):
    model_q = qbench.prepare(every_op, config)
    recorder = Recorder()
    x = image_like(2, 16)
    with torch.no_grad():
        fast = model_q(x)
        with observe(model_q, recorder):
            observed = model_q(x)
        after = model_q(x)
    assert torch.equal(fast, observed) and torch.equal(fast, after)
    seen = {(layer, role) for layer, role, _ in recorder.seen}
    expected = set()
    for name, module in quantized_modules(model_q).items():
        for role in module.qbench_roles():
            if isinstance(module, nn.MultiheadAttention):
                continue
            expected.add((name, role))
    assert expected <= seen
    attention = "attention"
    assert {
        (f"{attention}.{p}", r)
        for p, r in [
            ("in_proj", "weight"),
            ("in_proj", "input"),
            ("q", "input"),
            ("k", "input"),
            ("v", "input"),
            ("softmax", "act"),
            ("out_proj", "weight"),
            ("out_proj", "input"),
        ]
    } <= seen
    assert sum(1 for layer, role, _ in recorder.seen if (layer, role) == ("bn", "stats")) == 2
    for _, _, result in recorder.seen:
        _check_on_grid(result)
    # after leaving observe, nothing more is reported
    count = len(recorder.seen)
    with torch.no_grad():
        model_q(x)
    assert len(recorder.seen) == count


def test_observed_tensors_are_the_ones_used(every_op):
    model_q = qbench.prepare(every_op, FP8_CHUNK)
    recorder = Recorder()
    captured = {}
    pool = model_q.maxpool
    handle = pool.register_forward_pre_hook(lambda m, args: captured.setdefault("raw", args[0]))
    with torch.no_grad(), observe(model_q, recorder):
        model_q(image_like(2, 16))
    handle.remove()
    results = {(layer, role): r for layer, role, r in recorder.seen}
    weight = results[("conv", "weight")]
    assert weight.dequantized is model_q.conv._q_weight.get(
        model_q.conv
    )  # the cached tensor in use
    assert weight.dequantized.shape == every_op.conv.weight.shape
    used_input = results[("maxpool", "input")].dequantized
    # the pool's input is the ReLU's output: quantized once, and the very same tensor
    assert captured["raw"] is used_input
    assert results[("relu", "act")].dequantized is used_input
    # on the grid: NCHW activations are chunked along the channels
    assert torch.equal(
        used_input, qbench.quantize(used_input, "fp8_e4m3", mode="chunk", chunk_size=128, axis=1)
    )


# -- weights: quantized once, re-quantized when they change ----------------------------


def test_weights_quantized_once_and_after_changes(passthrough):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    model_q = qbench.prepare(
        model, {"format": passthrough.name, "input_enabled": False, "act_enabled": False}
    )
    x = torch.randn(3, 8)
    with torch.no_grad():
        model_q(x)
        model_q(x)
        assert len(passthrough.calls) == 1
        model_q.load_state_dict({k: v + 1 for k, v in model.state_dict().items()})
        out = model_q(x)
        assert len(passthrough.calls) == 2
        torch.testing.assert_close(
            out, nn.functional.relu(x @ (model[0].weight + 1).T + model[0].bias + 1)
        )
        model_q[0].weight.mul_(2)  # an optimizer-style in-place update
        model_q(x)
        assert len(passthrough.calls) == 3
        model_q[0].weight = nn.Parameter(torch.zeros(8, 8))
        assert torch.equal(model_q(x), nn.functional.relu(model_q[0].bias).expand(3, 8))
        assert len(passthrough.calls) == 4


def test_conv_weight_chunks_run_along_input_channels_and_kernel():
    conv = nn.Conv2d(4, 3, 3)
    with torch.no_grad():
        conv.weight[1] *= 100  # one output channel much larger: must not share its scale
    spec = {
        "format": "fp8_e4m3",
        "weight_mode": "chunk",
        "weight_chunk_size": 36,
        "input_enabled": False,
    }
    model_q = qbench.prepare(nn.Sequential(conv), spec)
    recorder = Recorder()
    with observe(model_q, recorder):
        pass
    ((_, role, result),) = recorder.seen
    assert role == "weight" and result.codes.shape == conv.weight.shape
    flat = qbench.quantize(
        conv.weight.detach().reshape(3, 36), "fp8_e4m3", mode="chunk", chunk_size=36, axis=-1
    )
    assert torch.equal(result.dequantized, flat.reshape(conv.weight.shape))
    _check_on_grid(result)
    # the axis is configurable: chunks along the last (kernel-width) axis instead
    model_w = qbench.prepare(
        nn.Sequential(conv), {**spec, "weight_chunk_size": 3, "weight_axis": -1}
    )
    along_width = qbench.quantize(
        conv.weight.detach(), "fp8_e4m3", mode="chunk", chunk_size=3, axis=-1
    )
    assert torch.equal(model_w[0]._q_weight.get(model_w[0]), along_width)


@pytest.mark.parametrize("path", ["result", "fast"])
def test_a_channels_last_twin_keeps_the_layout_of_its_fp32_model(path: str):
    """Chunks run along a flattened weight's logical order whatever its layout, and the
    quantized weight is laid out like the weight: a contiguous copy of a one-input-channel
    convolution's channels-last weight made that convolution's output, and every layer after
    it, contiguous while the FP32 model ran channels-last."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3))
    model = model.to(memory_format=torch.channels_last)
    spec = {"format": "fp8_e4m3", "weight_mode": "chunk", "weight_chunk_size": 8}
    twin = qbench.prepare(model, spec)
    x = torch.randn(4, 1, 12, 12).contiguous(memory_format=torch.channels_last)
    recorder = Recorder()
    with torch.no_grad(), observe(twin, recorder) if path == "result" else nullcontext():
        outputs = [(model[0](x), twin[0](x)), (model(x), twin(x))]
    for _, role, result in recorder.seen:  # the audit's codes are laid out like the values
        if role == "weight":
            assert result.codes.stride() == result.dequantized.stride()
    for conv, q in ((model[0], twin[0]), (model[2], twin[2])):
        weight = q._q_weight.get(q)
        assert weight.stride() == conv.weight.stride()
        flat = qbench.quantize(
            conv.weight.detach().reshape(conv.out_channels, -1),
            "fp8_e4m3",
            mode="chunk",
            chunk_size=8,
            axis=-1,
        )
        assert torch.equal(weight, flat.reshape(conv.weight.shape))
    for reference, quantized in outputs:
        assert quantized.stride() == reference.stride()
    assert outputs[-1][1].is_contiguous(memory_format=torch.channels_last)


# -- one quantization per tensor and spec ---------------------------------------------


def test_relu_output_is_not_quantized_again_by_next_conv(passthrough):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)
    )
    config = {"format": passthrough.name, "mode": "chunk", "chunk_size": 8, "weight_enabled": False}
    model_q = qbench.prepare(model, config)
    with torch.no_grad():
        model_q(torch.randn(1, 3, 12, 12))
    # conv0 input, relu1 act, relu3 act: the convs after them reuse those
    assert len(passthrough.calls) == 3
    # a different spec on the consumer forces its own quantization
    passthrough.calls.clear()
    config["layers"] = [{"match": "2", "input_chunk_size": 4}]
    with torch.no_grad():
        qbench.prepare(model, config)(torch.randn(1, 3, 12, 12))
    assert len(passthrough.calls) == 4


def test_in_place_change_after_quantization_is_detected(passthrough):
    class AddsInPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU()
            self.linear = nn.Linear(4, 4)

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.act(x)
            y += 0.123  # invalidates y's quantization
            return self.linear(y)

    config = {"format": passthrough.name, "weight_enabled": False}
    model_q = qbench.prepare(AddsInPlace(), config)
    with torch.no_grad():
        model_q(torch.randn(2, 4))
    assert len(passthrough.calls) == 2  # the ReLU output, then the modified tensor again


class _Fork(nn.Module):
    """Two consumers of one input."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(width, 4), nn.Linear(width, 4)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.a(x) + self.b(x)


def test_two_consumers_of_one_tensor_share_its_quantization(passthrough):
    model_q = qbench.prepare(_Fork(), {"format": passthrough.name, "weight_enabled": False})
    with torch.no_grad():
        model_q(torch.randn(2, 4))
    assert len(passthrough.calls) == 1
    with torch.inference_mode():  # no version counters: no sharing, still correct
        model_q(torch.randn(2, 4))
    assert len(passthrough.calls) == 3


def test_every_registered_op_has_a_distinct_name():
    names = [op.name for op in ALL_OPS]
    assert len(names) == len(set(names))
    assert qbench.plugins.registry("op").names() == sorted(names)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_twin_layers_compute_on_cuda_what_they_compute_on_cpu(resnet18):
    """Each quantized layer of the twin, given the input it saw on CPU, gives the CPU's
    output on CUDA up to float32 summation order (its quantization is bit-identical across
    devices, tested in qbench-formats). Whole-model outputs are only compared loosely: in
    this random-init network a 1e-7 relative change of the input moves enough FP8 rounding
    decisions to shift the logits as much as FP8 itself does (cosine 0.996 to 0.997 either
    way, measured), and the GPU's summation order is such a change (0.997 on an H100)."""
    import copy

    from qbench.runner import full_fp32

    model_q = qbench.prepare(resnet18, FP8_CHUNK)
    x = image_like(2, 64)
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def keep_input(module: nn.Module, args: tuple) -> None:  # a hook's None keeps the call
        inputs.setdefault(module.qbench_layer, args[0].clone())

    def keep_output(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        outputs.setdefault(module.qbench_layer, output.clone())  # before any in-place add

    handles = []
    for module in quantized_modules(model_q).values():
        handles.append(module.register_forward_pre_hook(keep_input))
        handles.append(module.register_forward_hook(keep_output))
    with torch.no_grad(), full_fp32():  # IEEE convolutions on both (no TF32 on the GPU)
        cpu = model_q(x)
        for handle in handles:
            handle.remove()
        model_gpu = copy.deepcopy(model_q).cuda()
        gpu = model_gpu(x.cuda()).cpu()
        layers = quantized_modules(model_gpu)
        assert set(inputs) == set(layers) and len(layers) > 20
        for name, layer in layers.items():
            got, want = layer(inputs[name].cuda()).cpu(), outputs[name]
            torch.testing.assert_close(
                got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()), msg=name
            )
    assert bool(torch.isfinite(gpu).all()) and _cosine(cpu, gpu) > 0.99


def test_spec_axis_default_is_filled_in():
    from qbench_ops.quantizer import TensorQuantizer

    spec = QuantSpec("fp8_e4m3", Scaling(mode="chunk", chunk_size=32))
    activation = TensorQuantizer(spec, "x", "input", [])
    assert activation.spec_for(torch.zeros(2, 8, 4, 4)).scaling.axis == 1  # NCHW: channels
    assert activation.spec_for(torch.zeros(2, 5, 8)).scaling.axis == -1  # tokens: features
    explicit = QuantSpec("fp8_e4m3", Scaling(mode="chunk", chunk_size=32, axis=2))
    assert TensorQuantizer(explicit, "x", "input", []).spec_for(torch.zeros(2, 8, 4, 4)) == explicit
    channel = dataclasses.replace(spec, scaling=Scaling(mode="channel"))
    weight = TensorQuantizer(channel, "x", "weight", [], flatten_weight=True)
    assert weight.spec_for(torch.zeros(4, 9)).scaling.axis == 0


def test_channel_scaled_vector_weights(every_op):
    model_q = qbench.prepare(every_op, {"format": "int8", "weight_mode": "channel"})
    recorder = Recorder()
    with observe(model_q, recorder):
        pass
    bn_weight = next(r for layer, role, r in recorder.seen if (layer, role) == ("bn", "weight"))
    assert bn_weight.scales.numel() == every_op.bn.weight.numel()  # one scale per channel
    _check_on_grid(bn_weight)


def test_short_axis_chunk_is_the_whole_axis_bit_for_bit():
    """A 64-channel activation chunked by 128 is quantized as one 64-element chunk: the
    quantizer's shortcut gives the format's own padded result exactly, and reports the
    configured spec."""
    from qbench_ops.quantizer import TensorQuantizer

    spec = QuantSpec("fp8_e4m3", Scaling(mode="chunk", chunk_size=128))
    quantizer = TensorQuantizer(spec, "x", "input", [])
    x = torch.randn(2, 64, 5, 3) * torch.logspace(-3, 3, 64).view(1, 64, 1, 1)
    padded = qbench.quantize(x, "fp8_e4m3", mode="chunk", chunk_size=128, axis=1, return_codes=True)
    assert torch.equal(quantizer.quantize_fast(x), padded.dequantized)
    result = quantizer.quantize_result(x)
    assert result.spec == quantizer.spec_for(x) and result.spec.scaling.chunk_size == 128
    assert torch.equal(result.dequantized, padded.dequantized)
    assert result.codes.dtype == torch.uint8  # written a byte each (narrow_codes)
    assert torch.equal(result.codes.to(torch.int32), padded.codes)
    assert torch.equal(result.expand_scales(), padded.expand_scales())


@pytest.mark.parametrize("name", ["fp8_e4m3", "int8"])
def test_a_shared_tensor_is_reported_as_the_same_narrow_tensors(name):
    """The second consumer of one tensor is told the first one's QuantResult (shared, not
    quantized again) as the very same tensors, so that an observer can recognize it; the
    codes are narrowed once, before the first notification, to the narrowest integer dtype
    of their range (uint8 for 8-bit codes), and hold the format's own codes."""
    from qbench_ops import quantizer as ops_quantizer

    model_q = qbench.prepare(_Fork(16), {"format": name, "weight_enabled": False})
    recorder = Recorder()
    x = torch.randn(8, 16) * 5
    with torch.no_grad(), observe(model_q, recorder):
        model_q(x)
    inputs = [result for _, role, result in recorder.seen if role == "input"]
    assert len(inputs) == 2
    first, second = inputs
    assert first.codes is second.codes and first.dequantized is second.dequantized
    assert first.scales is second.scales
    assert first.codes.dtype == torch.uint8  # int8's codes are its two's complement bytes
    own = qbench.get_format(name).quantize(x, first.spec, return_codes=True)
    assert own.codes.dtype == torch.int32 and torch.equal(first.codes.to(torch.int32), own.codes)
    assert int(own.codes.max()) > 127 or int(own.codes.min()) < 0  # a narrowing that matters
    stub = getattr(x, ops_quantizer._SOURCE_TAG)[3]
    assert stub.base.codes is first.codes and stub.base.dequantized is None


def test_codes_take_the_narrowest_dtype_of_their_range_and_the_stub_hands_out_the_same():
    from qbench_ops.quantizer import _Stub

    base = qbench.quantize(torch.randn(4, 8), "fp8_e4m3", return_codes=True)
    for low, high, dtype, narrow in [
        (0, 255, torch.int32, torch.uint8),
        (-5, 100, torch.int32, torch.int8),
        (-200, 100, torch.int64, torch.int16),
        (0, 300, torch.int32, torch.int16),
        (0, 70000, torch.int32, torch.int32),  # nothing narrower holds it
        (-3, 3, torch.int16, torch.int8),
        (0, 3, torch.uint8, torch.uint8),
    ]:
        codes = torch.randint(low, high + 1, (4, 8), dtype=dtype)
        codes[0, 0], codes[0, 1] = low, high
        result = dataclasses.replace(base, codes=codes)
        stub = _Stub.of(result)
        assert stub.base.codes.dtype == narrow, (low, high, dtype)
        back = stub.result(result.dequantized)
        assert torch.equal(back.codes.to(dtype), codes) and back.codes.dtype == narrow
        assert back.codes is stub.result(result.dequantized).codes  # the same at every call
        assert back.dequantized is result.dequantized and back.scales is result.scales
    empty = dataclasses.replace(base, codes=torch.zeros(0, dtype=torch.int32))
    assert _Stub.of(empty).result(base.dequantized).codes.dtype == torch.int32


class _OwnQuantize:
    """A plugin format whose own ``quantize`` knows nothing of ``narrow_codes``."""

    def __init__(self) -> None:
        self.inner = qbench.get_format("fp8_e4m3")
        self.asked: list[dict] = []

    def quantize(self, x, spec, *, return_codes=False, generator=None, path="auto"):
        self.asked.append({"return_codes": return_codes})
        return self.inner.quantize(x, spec, return_codes=return_codes, generator=generator)


def test_the_audits_codes_come_a_byte_each_from_formats_that_take_narrow_codes():
    """A quantizer asks a format for codes a byte each (``narrow_codes``) where its
    ``quantize`` takes the keyword (every built-in format), and leaves it out where it does
    not (a plugin's own ``quantize``): that format's int32 codes are narrowed afterwards."""
    from qbench_ops.quantizer import TensorQuantizer, narrow_codes, narrowed

    spec = QuantSpec("fp8_e4m3", Scaling(mode="chunk", chunk_size=16))
    x = torch.randn(4, 32) * 3
    builtin = TensorQuantizer(spec, "x", "input", [])
    assert narrow_codes(builtin.format) == {"narrow_codes": True}
    byte = builtin.quantize_result(x)
    assert byte.codes.dtype == torch.uint8
    plugin = TensorQuantizer(spec, "x", "input", [])
    own = _OwnQuantize()
    plugin._format = own
    assert narrow_codes(own) == {}
    wide = plugin.quantize_result(x)
    assert own.asked == [{"return_codes": True}] and wide.codes.dtype == torch.int32
    assert torch.equal(wide.codes.to(torch.uint8), byte.codes)
    assert narrowed(wide).codes.dtype == torch.uint8
    assert torch.equal(wide.dequantized, byte.dequantized)
