"""QuantMaxPool2d's channels-last CPU route: the same values, bit for bit, as nn.MaxPool2d."""

from __future__ import annotations

import pytest
import qbench
import torch
from qbench.preparation import observe
from qbench_ops import layers
from torch import nn

#: Few distinct values: windows full of ties (+0 against -0 too), NaN and infinities.
_SPECIALS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1.0, -1.0, 2.0]

#: (kernel, stride, padding, dilation, ceil_mode): the ResNet stem, plain halving, and an
#: asymmetric dilated window with a ceil-mode edge.
_POOLS = [
    (3, 2, 1, 1, False),
    (2, 2, 0, 1, False),
    (3, 1, 1, 1, True),
    ((3, 2), (1, 2), (1, 0), (2, 1), True),
]


def _adversarial(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    specials = torch.tensor(_SPECIALS, dtype=dtype)
    picks = torch.randint(0, len(_SPECIALS), shape, generator=generator)
    values = specials[picks]
    # a third of the elements random, so most windows are not decided by the specials
    noise = torch.randn(shape, generator=generator, dtype=dtype)
    keep_noise = torch.rand(shape, generator=generator) < 1 / 3
    return torch.where(keep_noise, noise, values)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _pooling_only(pool: nn.MaxPool2d) -> nn.Module:
    """A prepared QuantMaxPool2d with its input quantization switched off: the pooling
    itself, compared with nn.MaxPool2d on the very same input."""
    quantized = qbench.prepare(nn.Sequential(pool), {"format": "fp8_e4m3", "mode": "tensor"})[0]
    assert type(quantized) is layers.QuantMaxPool2d
    quantized._q_input = None
    return quantized


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", _POOLS)
def test_channels_last_route_matches_max_pool_bit_for_bit(dtype, config):
    kernel, stride, padding, dilation, ceil_mode = config
    reference = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    pool = _pooling_only(reference)
    for seed, shape in enumerate([(2, 5, 9, 11), (3, 16, 8, 8), (1, 64, 13, 7)]):
        x = _adversarial(shape, dtype, seed)
        assert layers._pools_faster_channels_last(x, return_indices=False)
        expected = reference(x)
        got = pool(x)
        assert got.shape == expected.shape and got.dtype == dtype
        assert got.is_contiguous()  # the input's layout, as nn.MaxPool2d returns it
        assert torch.equal(_bits(got), _bits(expected)), (config, shape)


def test_the_route_is_taken_only_where_it_is_exact_and_faster():
    x = torch.zeros(2, 8, 6, 6)
    assert layers._pools_faster_channels_last(x, return_indices=False)
    assert not layers._pools_faster_channels_last(x, return_indices=True)  # indices
    assert not layers._pools_faster_channels_last(x[0], return_indices=False)  # unbatched
    assert not layers._pools_faster_channels_last(x[:, :1], return_indices=False)  # 1 channel
    assert not layers._pools_faster_channels_last(x.half(), return_indices=False)
    cl = x.contiguous(memory_format=torch.channels_last)  # torch already pools it so
    assert not layers._pools_faster_channels_last(cl, return_indices=False)


def test_the_pool_runs_channels_last_and_keeps_other_inputs_as_they_are(monkeypatch):
    seen: list[bool] = []
    original = torch.nn.functional.max_pool2d

    def recording(input, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(input.is_contiguous(memory_format=torch.channels_last))
        return original(input, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "max_pool2d", recording)
    pool = _pooling_only(nn.MaxPool2d(2))
    pool(torch.randn(2, 8, 6, 6))
    assert seen == [True]
    # with indices, unbatched: torch's own forward, layout untouched
    indexed = _pooling_only(nn.MaxPool2d(2, return_indices=True))
    values, indices = indexed(torch.randn(2, 8, 6, 6))
    assert values.shape == indices.shape == (2, 8, 3, 3)
    pool(torch.randn(8, 6, 6))
    assert seen[1:] == [False, False]


def test_quantized_input_then_pool_equals_pooling_the_used_input():
    """With quantization on: the pool's output is nn.MaxPool2d of the input it quantized."""
    model_q = qbench.prepare(
        nn.Sequential(nn.MaxPool2d(3, 2, 1)),
        {"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 32},
    )
    used: list[torch.Tensor] = []

    class Keep:
        def on_tensor(self, layer, role, result):  # type: ignore[no-untyped-def]
            used.append(result.dequantized)

    with torch.no_grad(), observe(model_q, Keep()):
        got = model_q(torch.randn(2, 16, 12, 12))
    assert len(used) == 1
    assert torch.equal(_bits(got), _bits(nn.functional.max_pool2d(used[0], 3, 2, 1)))
