"""The layerwise metric against outputs captured independently and compared with numpy."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from qbench.types import BatchOutputs
from qbench_eval.layerwise import LayerwiseMetric
from torch import nn


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(12, 16), nn.ReLU(inplace=True), nn.Linear(16, 5)).eval()
    quantized = copy.deepcopy(reference)
    with torch.no_grad():  # a crude "quantization": weights rounded to multiples of 1/8
        for p in quantized.parameters():
            p.copy_(torch.round(p * 8) / 8)
    return reference, quantized


PREPARATION = {
    "quantized": [
        {"name": "0", "type": "Linear", "op": "linear", "roles": {"weight": "x", "input": "x"}},
        {"name": "1", "type": "ReLU", "op": "relu", "roles": {"act": "x"}},
        {"name": "2", "type": "Linear", "op": "linear", "roles": {"weight": "x", "input": "x"}},
    ],
    "not_quantized": [],
}


@pytest.mark.parametrize("grad_mode", ["inference_mode", "no_grad"])
def test_layerwise_matches_independent_computation(kernel_path: str, grad_mode: str) -> None:
    reference, quantized = _models()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(7, 12, generator=generator) for _ in range(4)]
    batches[2][0] = 0.0  # zeros in an input: the dynamic range must use the smallest non-zero

    metric = LayerwiseMetric(None)
    metric.attach(reference, quantized, {"preparation": PREPARATION})
    # no_grad (as in qbench run): outputs are held by reference with their version counter,
    # and the in-place ReLU after layer "0" is detected; inference tensors are copied.
    with getattr(torch, grad_mode)():
        for i, x in enumerate(batches):
            ref_logits, q_logits = reference(x), quantized(x)
            metric.update(BatchOutputs(torch.zeros(7, dtype=torch.long), ref_logits, q_logits, i))
    metric.close()
    result = metric.result()

    # Independent: run the models step by step (no hooks) and compare with numpy.
    def outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            h0 = model[0](x)
            h1 = torch.relu(h0)
            h2 = model[2](h1)
        return [
            h0.numpy().astype(np.float64),
            h1.numpy().astype(np.float64),
            h2.numpy().astype(np.float64),
        ]

    ref_all = [np.concatenate(parts) for parts in zip(*[outputs(reference, x) for x in batches])]
    q_all = [np.concatenate(parts) for parts in zip(*[outputs(quantized, x) for x in batches])]
    with torch.no_grad():
        q_inputs = [
            np.concatenate([x.numpy() for x in batches]),
            np.concatenate([quantized[0](x).numpy() for x in batches]),
            np.concatenate([torch.relu(quantized[0](x)).numpy() for x in batches]),
        ]
    assert [layer["name"] for layer in result["layers"]] == ["0", "1", "2"]
    assert result["batches"] == 4 and result["unpaired_calls"] == 0
    for layer, r, q, inp in zip(result["layers"], ref_all, q_all, q_inputs):
        assert layer["calls"] == 4
        assert layer["elements"] == r.size
        assert layer["mse"] == pytest.approx(np.mean((r - q) ** 2), rel=1e-9)
        cosine = np.dot(r.ravel(), q.ravel()) / (np.linalg.norm(r) * np.linalg.norm(q))
        assert layer["cosine"] == pytest.approx(cosine, rel=1e-9)
        assert layer["sqnr_db"] == pytest.approx(
            10 * math.log10(np.sum(r**2) / np.sum((r - q) ** 2)), rel=1e-9
        )
        magnitude = np.abs(inp.astype(np.float64))
        nonzero = magnitude[magnitude > 0]
        assert layer["input"]["max_abs"] == pytest.approx(magnitude.max())
        assert layer["input"]["min_abs"] == pytest.approx(magnitude.min())
        assert layer["input"]["min_nonzero_abs"] == pytest.approx(nonzero.min())
        assert layer["input"]["log2_range"] == pytest.approx(
            math.log2(magnitude.max() / nonzero.min()), rel=1e-6
        )
        assert layer["input"]["zero_fraction"] == pytest.approx(np.mean(magnitude == 0))
        assert layer["mse"] > 0  # the rounding really changed something
    # The ReLU's input has zeros (negative pre-activations), so min |x| is 0 there.
    assert result["layers"][2]["input"]["min_abs"] == 0.0
    # Compiled, the inputs of layers "1" and "2" (the quantized outputs of "0" and "1") take
    # their statistics from the loop that measured those outputs, not from a pass of their
    # own (inference tensors have no version counter, so nothing is shared there).
    shared = kernel_path == "compiled" and grad_mode == "no_grad"
    assert metric._inputs.hits == (2 * len(batches) if shared else 0)


@pytest.mark.parametrize("fold", [1, 3, 1 << 30])
def test_sums_and_statistics_folded_every_few_calls_are_those_of_every_call(
    fold: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer adds its calls into its totals every ``_FOLD_CALLS`` calls (and when read):
    every call counted once, a NaN call among them, inputs of two dtypes, whatever the
    fold's size (1: as each call used to be added; 2^30: only when read)."""
    from qbench_eval import layerwise
    from qbench_eval._identity import Seen

    monkeypatch.setattr(layerwise, "_FOLD_CALLS", fold)
    generator = torch.Generator().manual_seed(4)
    stats = layerwise._LayerStats("layer", {})
    pairs, inputs = [], []
    for i in range(10):
        r = torch.randn(6, 5, generator=generator)
        q = torch.round(r * 4) / 4
        x = torch.relu(torch.randn(6, 5, generator=generator)) * (i + 1)
        if i == 5:
            q[1, 2] = math.nan
        if i == 7:
            x = x.to(torch.float16)
        stats.add_pair(r, q)
        stats.add_input(x, Seen())
        pairs.append((r.double().numpy(), q.double().numpy()))
        inputs.append(np.abs(x.double().numpy()))
    result = stats.result()
    assert repr(result) == repr(stats.result())  # reading folds what is pending only
    assert result["calls"] == 10 and result["elements"] == 300
    assert result["nonfinite_calls"] == 1 and math.isnan(result["mse"])
    magnitude = np.concatenate(inputs)
    assert result["input"]["max_abs"] == magnitude.max()
    assert result["input"]["min_nonzero_abs"] == magnitude[magnitude > 0].min()
    assert result["input"]["zero_fraction"] == np.mean(magnitude == 0)
    finite = layerwise._LayerStats("finite", {})
    for rr, qq in pairs[:5]:
        finite.add_pair(torch.from_numpy(rr).float(), torch.from_numpy(qq).float())
    r, q = np.concatenate([p[0] for p in pairs[:5]]), np.concatenate([p[1] for p in pairs[:5]])
    assert finite.result()["mse"] == pytest.approx(np.mean((r - q) ** 2), rel=1e-12)


def test_identical_models_give_zero_error_and_infinite_sqnr() -> None:
    reference, _ = _models()
    quantized = copy.deepcopy(reference)
    metric = LayerwiseMetric({"include": ["0", "2"], "exclude": ["2"]})
    metric.attach(reference, quantized, {"preparation": PREPARATION})
    x = torch.randn(3, 12)
    with torch.inference_mode():
        metric.update(BatchOutputs(torch.zeros(3), reference(x), quantized(x)))
    result = metric.result()
    assert [layer["name"] for layer in result["layers"]] == ["0"]
    layer = result["layers"][0]
    assert (
        layer["mse"] == 0.0
        and layer["cosine"] == pytest.approx(1.0)
        and layer["sqnr_db"] == math.inf
    )


def test_hooks_are_removed_on_close() -> None:
    reference, quantized = _models()
    metric = LayerwiseMetric(None)
    metric.attach(reference, quantized, {"preparation": PREPARATION})
    metric.close()
    with torch.inference_mode():
        quantized(torch.randn(2, 12))
        reference(torch.randn(2, 12))
    assert all(layer["calls"] == 0 for layer in metric.result()["layers"])


def test_pair_sums_and_input_stats_on_both_paths(kernel_path: str) -> None:
    from qbench_eval.layerwise import input_stats, pair_sums

    generator = torch.Generator().manual_seed(5)
    r = torch.randn(3, 50, 7, generator=generator) * 1e3
    q = r + torch.randn(3, 50, 7, generator=generator) * 1e-4  # SQNR ~ 140 dB
    sums = pair_sums(r, q).tolist()
    r64, q64 = r.double().numpy().ravel(), q.double().numpy().ravel()
    expected = [np.sum((q64 - r64) ** 2), r64 @ r64, q64 @ q64, r64 @ q64]
    assert sums == pytest.approx(expected, rel=1e-12)

    q_bad = q.clone()
    q_bad[1, 2, 3] = math.nan
    assert math.isnan(pair_sums(r, q_bad)[2])

    x = torch.tensor([[0.0, -0.0, 3.0e-30], [-7.5, 0.25, 2.0]])
    zeros, largest, smallest = input_stats(x)
    assert (int(zeros), float(largest), float(smallest)) == (2, 7.5, float(x[0, 2]))
    zeros, largest, smallest = input_stats(torch.zeros(4, 3))
    assert (int(zeros), float(largest), float(smallest)) == (12, 0.0, math.inf)
    zeros, largest, _ = input_stats(torch.tensor([1.0, math.nan, -2.0]))
    assert int(zeros) == 0 and math.isnan(float(largest))


def test_channels_last_outputs_are_read_in_memory_order(
    kernel_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channels-last pair (what a run on CPU compares) gives the sums and statistics of
    the same values laid out contiguously, and reaches the kernels as contiguous tensors
    (one linear sweep, not a gather C elements apart)."""
    from qbench.kernels import fused
    from qbench_eval import layerwise

    generator = torch.Generator().manual_seed(7)
    r = torch.randn(2, 24, 5, 3, generator=generator)
    q = torch.where(torch.rand(r.shape, generator=generator) < 0.2, 0.0, r + 1e-3 * r.sign())
    nhwc = [t.contiguous(memory_format=torch.channels_last) for t in (r, q)]
    assert not nhwc[0].is_contiguous()
    seen: list[bool] = []

    def recording(fn, tensors, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.extend(t.is_contiguous() for t in tensors)
        return fused(fn, tensors, *args, **kwargs)

    monkeypatch.setattr(layerwise, "fused", recording)
    plain_sums = layerwise.pair_sums(r, q).tolist()
    assert layerwise.pair_sums(*nhwc).tolist() == pytest.approx(plain_sums, rel=1e-12)
    r64, q64 = r.double().numpy().ravel(), q.double().numpy().ravel()
    assert plain_sums == pytest.approx(
        [np.sum((q64 - r64) ** 2), r64 @ r64, q64 @ q64, r64 @ q64], rel=1e-12
    )
    expected = [int((q == 0).sum()), float(q.abs().max()), float(q.abs()[q != 0].min())]
    assert expected[0] > 0
    for stats in (layerwise.input_stats(nhwc[1]), layerwise.pair_sums_and_stats(*nhwc)[1]):
        assert [int(stats[0]), float(stats[1]), float(stats[2])] == expected
    assert seen and all(seen)
    # A kept copy of a channels-last output is one too: the pair stays in one layout.
    kept = layerwise._LayerStats("conv", {}).keep(nhwc[0])
    assert kept.copy is not None and kept.copy.stride() == nhwc[0].stride()


def test_zeros_are_counted_alike_in_int32_and_int64(
    kernel_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrow (int32) zero count that tensors below 2^31 elements get gives the wide
    count, as int64, eager and compiled, alone and fused with the pair sums."""
    from qbench.kernels import ONE_LOOP, fused
    from qbench_eval import layerwise

    generator = torch.Generator().manual_seed(5)
    r = torch.randn(3, 40, 50, generator=generator)
    q = torch.where(torch.rand(r.shape, generator=generator) < 0.3, 0.0, r)
    q[0, 0, :4] = torch.tensor([-0.0, math.inf, -math.inf, 0.0])
    expected = int((q == 0).sum())
    assert layerwise._narrow_count(q) and expected > 1000
    for narrow in (True, False):
        zeros, *_ = fused(layerwise._input_stats, (q,), (narrow,), options=ONE_LOOP)
        fused_zeros = fused(layerwise._pair_sums_and_stats, (r, q), (narrow,), options=ONE_LOOP)[1]
        assert zeros.dtype == fused_zeros.dtype == torch.int64
        assert int(zeros) == int(fused_zeros) == expected
    monkeypatch.setattr(layerwise, "_NARROW_COUNT_BELOW", q.numel())
    assert not layerwise._narrow_count(q)  # at the bound: the wide count


class _SharedInPlace(nn.Module):
    """One module called twice per forward (torchvision's ReLU in a residual block), each
    output then changed in place before the twin model runs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.act(self.lin(x))
        first.mul_(3.0)
        second = self.act(first)
        second.add_(1.0)
        return second


def test_copies_of_outputs_changed_in_place_reuse_their_buffers() -> None:
    torch.manual_seed(0)
    reference = _SharedInPlace().eval()
    quantized = copy.deepcopy(reference)
    with torch.no_grad():
        quantized.lin.weight.copy_(torch.round(quantized.lin.weight * 8) / 8)
    preparation = {"quantized": [{"name": "act", "type": "Tanh", "roles": {"act": "x"}}]}
    metric = LayerwiseMetric(None)
    metric.attach(reference, quantized, {"preparation": preparation})
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randn(5, 6, generator=generator) for _ in range(3)]
    stats = metric.layers["act"]
    buffers: list[set[int]] = []
    with torch.no_grad():
        for i, x in enumerate(batches):
            metric.update(BatchOutputs(torch.zeros(5), reference(x), quantized(x), i))
            buffers.append({b.data_ptr() for b in stats._free})
    [layer] = metric.result()["layers"]
    assert metric.result()["unpaired_calls"] == 0 and layer["calls"] == 6

    def act_outputs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            first = torch.tanh(model.lin(x))
            second = torch.tanh(first * 3.0)
        return np.concatenate([first.numpy().ravel(), second.numpy().ravel()])

    r = np.concatenate([act_outputs(reference, x) for x in batches]).astype(np.float64)
    q = np.concatenate([act_outputs(quantized, x) for x in batches]).astype(np.float64)
    assert layer["mse"] == pytest.approx(np.mean((r - q) ** 2), rel=1e-9) and layer["mse"] > 0
    # two copies per batch (one per call), the same two buffers in every batch
    assert len(buffers[0]) == 2 and buffers[0] == buffers[1] == buffers[2]
    metric.close()
    assert not stats._free

    # A buffer made in inference mode is not written outside it (torch forbids that).
    metric = LayerwiseMetric(None)
    metric.attach(reference, quantized, {"preparation": preparation})
    for index, mode in enumerate([torch.inference_mode, torch.no_grad, torch.inference_mode]):
        with mode():
            x = batches[index]
            metric.update(BatchOutputs(torch.zeros(5), reference(x), quantized(x), index))
    [layer] = metric.result()["layers"]
    assert layer["calls"] == 6 and layer["mse"] == pytest.approx(np.mean((r - q) ** 2), rel=1e-9)


class _SometimesInPlace(nn.Module):
    """Changes its first layer's output in place from the third call on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        self.calls += 1
        if self.calls >= 3:
            h.mul_(2.0)
        return h


def test_an_output_changed_in_place_later_is_counted_unpaired_not_mismeasured() -> None:
    torch.manual_seed(0)
    reference = _SometimesInPlace().eval()
    quantized = copy.deepcopy(reference)
    preparation = {"quantized": [{"name": "lin", "type": "Linear", "roles": {"weight": "x"}}]}
    metric = LayerwiseMetric(None)
    metric.attach(reference, quantized, {"preparation": preparation})
    with torch.no_grad():
        for i in range(4):
            x = torch.randn(3, 4)
            metric.update(BatchOutputs(torch.zeros(3), reference(x), quantized(x), i))
    result = metric.result()
    [layer] = result["layers"]
    # Call 1 is copied and teaches "not changed in place"; call 2 is held by reference; call
    # 3's reference output is doubled before its twin comes: lost and counted; call 4 copied.
    assert result["unpaired_calls"] == 1 and layer["calls"] == 3
    assert layer["mse"] == 0.0  # the twins are identical: nothing mismeasured


class _TwoBranches(nn.Module):
    """One input into two layers (a residual block's first convolution and downsample),
    optionally scaled in place between them."""

    def __init__(self, change_between: bool) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.change_between = change_between

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        out = self.a(x)
        if self.change_between:
            x.mul_(4.0)
        return out + self.b(x)


@pytest.mark.parametrize("change_between", [False, True])
def test_an_input_shared_by_two_layers_is_read_once_unless_changed(
    change_between: bool, kernel_path: str
) -> None:
    torch.manual_seed(0)
    reference = _TwoBranches(change_between).eval()
    quantized = copy.deepcopy(reference)
    preparation = {
        "quantized": [
            {"name": n, "type": "Linear", "roles": {"weight": "x", "input": "x"}} for n in "ab"
        ]
    }
    metric = LayerwiseMetric(None)
    metric.attach(reference, quantized, {"preparation": preparation})
    xs = [torch.randn(5, 6) for _ in range(3)]
    with torch.no_grad():
        for i, x in enumerate(xs):
            metric.update(BatchOutputs(torch.zeros(5), reference(x), quantized(x), i))
    layers = {layer["name"]: layer["input"] for layer in metric.result()["layers"]}
    seen = torch.cat(xs).abs()
    factor = 4.0 if change_between else 1.0
    assert layers["a"]["max_abs"] == float(seen.max())
    assert layers["b"]["max_abs"] == float(seen.max()) * factor
    assert layers["b"]["min_nonzero_abs"] == float(seen.min()) * factor
    assert metric._inputs.hits == (0 if change_between else len(xs))


class _Attention(nn.Module):
    """Attention math written as functions (qbench_ops.calls quantizes it in the twin)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def test_functional_call_sites_are_layers_measured_against_the_fp32_models_calls() -> None:
    """Each call site the twin quantized is a row, paired with the same call of the FP32
    model (recorded unquantized); the metric's own math is never taken for the model's."""
    import qbench
    from qbench.preparation import preparation_report
    from qbench_ops.calls import interceptor_of

    torch.manual_seed(0)
    reference = nn.Sequential(_Attention(), nn.Linear(8, 3)).eval()
    quantized = qbench.prepare(reference, {"format": "fp8_e4m3", "mode": "tensor"})
    metric = LayerwiseMetric({})
    metric.attach(reference, quantized, {"preparation": preparation_report(quantized)})
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, q = reference(x), quantized(x)
    metric.update(BatchOutputs(torch.zeros(2), ref, q, 0))
    metric.close()
    rows = {row["name"]: row for row in metric.result()["layers"]}
    sites = ["0:matmul#1", "0:softmax#1", "0:matmul#2"]
    assert list(interceptor_of(quantized).sites) == sites
    assert [name for name in rows if ":" in name] == sites
    assert all(rows[s]["calls"] == 1 and rows[s]["op"] == s[2:-2] for s in sites)
    with torch.no_grad():  # the last site's output is the attention output itself
        expected = quantized[0](x)
        fp32 = reference[0](x)
    cosine = float((expected * fp32).sum() / (expected.norm() * fp32.norm()))
    assert rows["0:matmul#2"]["cosine"] == pytest.approx(cosine, rel=1e-6)
    assert metric.result()["unpaired_calls"] == 0
    assert interceptor_of(reference) is None  # the recorder is gone with close()


class _ResidualInPlace(nn.Module):
    """conv -> ReLU(inplace) -> conv, then ``out += x`` into the second conv's output: only
    the first conv's output and the second's are changed in place after their hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.c = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b(self.relu(self.a(x)))
        out += x
        return self.c(out)


def test_the_first_batch_copies_only_outputs_changed_in_place_later() -> None:
    """Memory: the first call of a layer holds its FP32 output by reference, and copies it
    only when an op is about to write into it (``_CopyOnWrite``); copying every output of the
    first batch, to learn which are changed in place, doubled what that batch holds (issue 22:
    tf_efficientnet_b0 at batch 32 held 4.3 GB instead of 1.9 GB). The results are those of
    copying everything."""
    from qbench_eval import layerwise

    torch.manual_seed(0)
    reference = _ResidualInPlace().eval()
    quantized = copy.deepcopy(reference)
    with torch.no_grad():
        for p in quantized.parameters():
            p.copy_(torch.round(p * 16) / 16)
    names = ["a", "relu", "b", "c"]
    preparation = {"quantized": [{"name": n, "type": "x", "roles": {"input": ""}} for n in names]}
    generator = torch.Generator().manual_seed(4)
    batches = [torch.randn(2, 3, 8, 8, generator=generator) for _ in range(3)]

    def run(copy_first_calls: bool) -> tuple[LayerwiseMetric, list[int]]:
        metric = LayerwiseMetric(None)
        metric.attach(reference, quantized, {"preparation": preparation})
        if copy_first_calls:  # as before: no watch, every first call copied
            metric._learning = lambda: False  # type: ignore[method-assign]
        copies = []
        with torch.no_grad():
            for i, x in enumerate(batches):
                reference_logits = reference(x)
                held = [k for s in metric.layers.values() for k in s.pending["reference"]]
                copies.append(sum(k.copy is not None for k in held))
                metric.update(BatchOutputs(torch.zeros(2), reference_logits, quantized(x), i))
        metric.close()
        assert torch._C._len_torch_dispatch_stack() == 0
        return metric, copies

    watched, copies = run(False)
    everything, all_copies = run(True)
    result = watched.result()
    assert result == everything.result() and result["unpaired_calls"] == 0
    assert all(layer["calls"] == 3 and layer["mse"] > 0 for layer in result["layers"])
    # a's output (then the ReLU's, the same tensor, held after the write) and b's (out += x)
    # are written into: copied on the first batch too, the others only then
    assert copies == [2, 2, 2] and all_copies == [4, 2, 2]
    learned = {name: stats.changed_in_place for name, stats in watched.layers.items()}
    assert learned == {"a": True, "relu": False, "b": True, "c": False}
    assert layerwise._COPY_ON_WRITE is not None and not layerwise._COPY_ON_WRITE.held


def test_metrics_of_a_sweep_share_the_watch_of_one_fp32_model() -> None:
    """Two twins' metrics on one FP32 model (a sweep): each learns as alone, and the watch
    ends with the FP32 forward, whichever metric's hook runs last."""
    torch.manual_seed(0)
    reference = _ResidualInPlace().eval()
    twins = [copy.deepcopy(reference) for _ in range(2)]
    with torch.no_grad():
        for scale, twin in zip((8, 32), twins, strict=True):
            for p in twin.parameters():
                p.copy_(torch.round(p * scale) / scale)
    preparation = {"quantized": [{"name": n, "type": "x", "roles": {"input": ""}} for n in "abc"]}
    x = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def results(models: list[nn.Module]) -> list[dict]:
        metrics = [LayerwiseMetric(None) for _ in models]
        for metric, twin in zip(metrics, models, strict=True):
            metric.attach(reference, twin, {"preparation": preparation})
        with torch.no_grad():
            for i, batch in enumerate(x):
                logits = reference(batch)
                assert torch._C._len_torch_dispatch_stack() == 0
                for metric, twin in zip(metrics, models, strict=True):
                    metric.update(BatchOutputs(torch.zeros(2), logits, twin(batch), i))
        for metric in metrics:
            metric.close()
        return [metric.result() for metric in metrics]

    shared = results(twins)
    assert shared == results(twins[:1]) + results(twins[1:])
    assert all(r["unpaired_calls"] == 0 for r in shared)


def test_eager_sums_and_statistics_read_large_outputs_in_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sliced (bounded memory), the eager pair sums match numpy's float64 sums and the eager
    input statistics are exactly those of the whole tensor: zeros, NaN, infinities and
    subnormals in different slices, a last slice shorter than the others."""
    from qbench_eval import layerwise

    monkeypatch.setattr(layerwise, "_EAGER_SLICE", 1000)
    monkeypatch.setattr(layerwise, "_EAGER_STATS_SLICE", 1000)
    generator = torch.Generator().manual_seed(7)
    r = torch.randn(7, 613, generator=generator)
    q = torch.where(torch.rand(r.shape, generator=generator) < 0.2, 0.0, r * 1.01)
    q[0, 5], q[3, 7], q[6, 600] = 1e-41, -math.inf, 2.5e-40
    sums = layerwise._pair_sums_eager(r, q)
    rd, qd = r.double().numpy().ravel(), q.double().numpy().ravel()
    finite = np.where(np.isfinite(qd), qd, 0.0)  # inf - r: compare the finite part apart
    q_finite = torch.tensor(finite).reshape(q.shape).float()
    got = layerwise._pair_sums_eager(r, q_finite).numpy()
    d = finite - rd
    expected = [d @ d, rd @ rd, finite @ finite, rd @ finite]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert math.isinf(float(sums[0])) and math.isinf(float(sums[2]))
    whole = layerwise._input_stats(q)
    for x in (
        q,
        q.clone().index_put_((torch.tensor([4]), torch.tensor([100])), torch.tensor(math.nan)),
    ):
        sliced = layerwise._input_stats_eager(x)
        reference = layerwise._input_stats(x)
        assert int(sliced[0]) == int(reference[0]) and sliced[0].dtype == torch.int64
        for got_value, want in zip(sliced[1:], reference[1:]):
            assert torch.equal(got_value, want) or (got_value.isnan() and want.isnan())
    assert float(whole[2]) == pytest.approx(1e-41, rel=1e-3)
    assert math.isnan(float(layerwise._input_stats_eager(x)[1]))


def test_eager_statistics_per_slice_equal_the_full_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The eager statistics read float32 slices on the CPU without the general masks (the
    range alone where a slice has no zero and no NaN, else the magnitudes' bits): equal to
    the general statistics whichever slices hold the zeros, the NaN, an infinity or the
    smallest (subnormal) magnitude, and for slices of zeros only, of NaN and zeros, of
    infinities and zeros; other dtypes take the general statistics."""
    from qbench_eval import layerwise

    monkeypatch.setattr(layerwise, "_EAGER_STATS_SLICE", 1000)
    general = layerwise._input_stats
    general_calls = []
    monkeypatch.setattr(
        layerwise, "_input_stats", lambda x, n=False: general_calls.append(x.dtype) or general(x, n)
    )
    generator = torch.Generator().manual_seed(11)
    base = torch.randn(6000, generator=generator) + 0.01
    base[base == 0] = 1.0
    cases = []
    for zero_at, nan_at, inf_at, tiny_at in [
        (None, None, None, 4321),
        (2500, None, 5999, 10),
        (None, 3000, 0, 5500),
        (10, 1500, None, 1999),
        (range(1000, 2000), None, None, 10),  # a slice of zeros only
        (range(0, 999), 999, None, 4000),  # a slice of zeros and one NaN
        (range(2000, 2999), None, 2999, 10),  # a slice of zeros and one inf
    ]:
        x = base.clone()
        x[tiny_at] = -3e-42
        for at, value in ((zero_at, 0.0), (nan_at, math.nan), (inf_at, -math.inf)):
            if at is not None:
                x[list(at) if isinstance(at, range) else at] = value
        cases.append(x)
    cases.append(torch.zeros(3000))
    cases.append(torch.full((3000,), math.nan))
    for x in cases:
        want = general(x)
        general_calls.clear()
        got = layerwise._input_stats_eager(x.reshape(-1, 100))
        assert general_calls == []
        assert int(got[0]) == int(want[0]) and got[0].dtype == torch.int64
        for got_value, want_value in zip(got[1:], want[1:]):
            same = torch.equal(got_value, want_value)
            assert same or (got_value.isnan() and want_value.isnan()), (got, want)
    half = cases[1].to(torch.float16)
    got = layerwise._input_stats_eager(half.reshape(-1, 100))
    assert general_calls and set(general_calls) == {torch.float16}
    want = general(half)
    assert int(got[0]) == int(want[0]) and torch.equal(got[1], want[1])


def test_the_copy_on_write_watch_in_one_thread_lets_another_compile() -> None:
    """Dynamo skips every frame it has not compiled yet while a dispatch mode that does not
    ignore compile internals is entered, in any thread (one process-wide flag). The watch,
    on in the FP32 worker of a lockstep run, must not make the twin's kernels in the main
    thread run their eager bodies."""
    import threading

    import torch
    from qbench_eval import layerwise

    bodies: list[str] = []

    def kernel(x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            bodies.append("eager body")
        return x * 2 + 1

    compiled = torch.compile(kernel, backend="eager", dynamic=True)
    entered, release = threading.Event(), threading.Event()

    def worker() -> None:
        with layerwise._CopyOnWrite():
            entered.set()
            release.wait(30)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert entered.wait(30)
        assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 3.0))
    finally:
        release.set()
        thread.join()
    assert bodies == []
