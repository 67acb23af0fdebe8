"""qbench.lockstep: the FP32 forward runs one layer ahead of the twin's, never more; outputs
and random numbers are those of the two forwards run one after the other; a failure on
either side stops both."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from qbench.lockstep import Lockstep
from torch import nn


def _workers() -> list:
    """Lockstep's FP32 worker threads still alive."""

    return [t for t in threading.enumerate() if t.name == "qbench-fp32"]


class _Noisy(nn.Module):
    """Draws random numbers in its forward, like stochastic rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


class _Fails(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise ValueError("layer failed")
        return x


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(8, 8), nn.ReLU()]
    layers.insert(3, _Noisy())
    layers.append(_Fails())
    reference = nn.Sequential(nn.Sequential(*layers[:5]), *layers[5:]).eval()
    twin = copy.deepcopy(reference)
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.mul_(1.01)
    return reference, twin


def _rng() -> tuple:
    return (torch.get_rng_state, torch.set_rng_state)


def _leaves(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and next(m.children(), None) is None]


def test_the_fp32_side_is_exactly_one_layer_ahead():
    reference, twin = _models()
    lockstep = Lockstep(reference, twin, _rng(), ahead_bytes=0)
    assert lockstep.layers == _leaves(reference)
    finished: list[str] = []
    for name, module in reference.named_modules():
        if name in lockstep.layers:
            module.register_forward_hook(
                lambda m, i, o, name=name: finished.append(name), prepend=True
            )
    ahead: list[list[str]] = []
    for name, module in twin.named_modules():
        if name in lockstep.layers:  # runs after the lockstep's own pre-hook
            module.register_forward_pre_hook(lambda m, i: ahead.append(list(finished)))
    with torch.no_grad():
        lockstep.forward(torch.randn(4, 8), torch.get_rng_state())
    layers = lockstep.layers
    # when the twin begins its i-th layer, the FP32 side has finished layers 0..i, no more
    assert ahead == [layers[: i + 1] for i in range(len(layers))]
    assert finished == layers
    assert len(_workers()) == 1  # one worker serves every batch, until closed
    lockstep.close()
    assert not _workers()


def test_outputs_and_random_numbers_are_those_of_the_forwards_one_after_the_other():
    reference, twin = _models()
    x = torch.randn(4, 8)
    torch.manual_seed(1)
    start = torch.get_rng_state()
    twin_start = torch.Generator().manual_seed(2).get_state()
    with torch.no_grad():
        expected_reference = reference(x)
        reference_after = torch.get_rng_state()
        torch.set_rng_state(twin_start)
        expected_twin = twin(x)
        twin_after = torch.get_rng_state()

        lockstep = Lockstep(reference, twin, _rng(), ahead_bytes=0)
        torch.set_rng_state(start)
        got_reference, got_twin, got_twin_rng = lockstep.forward(x, twin_start)
    assert torch.equal(got_reference, expected_reference)
    assert torch.equal(got_twin, expected_twin)
    assert torch.equal(got_twin_rng, twin_after)
    assert torch.equal(torch.get_rng_state(), reference_after)  # the FP32 side's, after it
    lockstep.close()


def test_the_worker_runs_under_the_callers_grad_mode():
    reference, twin = _models()
    lockstep = Lockstep(reference, twin, _rng(), ahead_bytes=0)
    seen: list[bool] = []
    reference[0][0].register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    with torch.no_grad():
        lockstep.forward(torch.randn(2, 8), torch.get_rng_state())
    lockstep.forward(torch.randn(2, 8), torch.get_rng_state())
    lockstep.close()
    assert seen == [False, True]


@pytest.mark.parametrize("side", ["twin", "reference"])
def test_a_failure_on_either_side_stops_both_and_is_raised(side):
    reference, twin = _models()
    lockstep = Lockstep(reference, twin, _rng(), ahead_bytes=0)
    failing = (twin if side == "twin" else reference)[-1]
    failing.armed = True
    later: list[str] = []
    twin[-2].register_forward_hook(lambda m, i, o: later.append("twin"))
    with torch.no_grad(), pytest.raises(ValueError, match="layer failed"):
        lockstep.forward(torch.randn(2, 8), torch.get_rng_state())
    assert lockstep._finished  # the FP32 forward ended; its worker waits for the next batch
    failing.armed = False
    with torch.no_grad():
        out = lockstep.forward(torch.randn(2, 8), torch.get_rng_state())
    assert out[0].shape == out[1].shape == (2, 8)
    lockstep.close()
    assert not _workers()


def test_a_layer_one_side_skips_is_not_waited_for_again():
    reference, twin = _models()
    twin[1] = nn.Identity()  # a Sequential no longer calls... the same name, another leaf
    skipped = nn.Linear(8, 8)
    reference.add_module("unused", skipped)
    twin.add_module("unused", copy.deepcopy(skipped))

    class _Calls(nn.Module):  # the twin calls ``unused`` inside a layer; the FP32 model not
        def __init__(self, inner: nn.Module, extra: list[nn.Module] | None) -> None:
            super().__init__()
            self.inner, self.extra = inner, extra

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.inner(x)
            return self.extra[0](x) if self.extra is not None else x

    twin[2] = _Calls(twin[2], [twin.unused])  # a list: not a second name for it
    reference[2] = _Calls(reference[2], None)
    lockstep = Lockstep(reference, twin, _rng(), ahead_bytes=0)
    assert "unused" in lockstep.layers
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.manual_seed(0)
        expected_reference = reference(x)
        torch.manual_seed(0)
        expected = (expected_reference, twin(x))
        torch.manual_seed(0)
        first = lockstep.forward(x, torch.get_rng_state())
        torch.manual_seed(0)
        second = lockstep.forward(x, torch.get_rng_state())
    lockstep.close()
    assert lockstep._skipped == {"unused"}
    for got in (first, second):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_outside_a_lockstep_forward_the_models_run_alone_and_close_removes_the_hooks():
    reference, twin = _models()
    lockstep = Lockstep(reference, twin, _rng(), ahead_bytes=0)
    x = torch.randn(2, 8)
    with torch.no_grad():
        alone = twin(x)  # no worker: the twin's pre-hooks do not wait
        assert reference(x).shape == (2, 8)
    lockstep.close()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in reference.modules())
    assert not any(m._forward_pre_hooks for m in twin.modules())
    assert alone.shape == (2, 8)


def test_with_a_byte_budget_the_fp32_side_runs_ahead_by_that_much_and_no_more():
    """``ahead_bytes``: the turn comes back once the wanted layer is done and the outputs
    since the turn began reach the budget (fewer hand-overs); outputs are unchanged."""
    reference, twin = _models()
    x = torch.randn(4, 8)
    outputs = {}
    for budget in (0, 3 * 4 * 8 * 4, 1 << 30):  # every layer, every ~3 layers, never
        lockstep = Lockstep(reference, twin, _rng(), ahead_bytes=budget)
        passes = [0]
        original = lockstep._pass

        def counting(to, original=original, passes=passes):
            passes[0] += 1
            original(to)

        lockstep._pass = counting
        with torch.no_grad():
            torch.manual_seed(0)
            got = lockstep.forward(x, torch.get_rng_state())
        lockstep.close()
        outputs[budget] = (got[:2], passes[0])
    layers = len(_leaves(reference))
    counts = [outputs[b][1] for b in sorted(outputs)]
    assert counts[0] == 2 * layers  # a hand-over each way per layer
    assert 2 * layers // 3 - 2 <= counts[1] <= 2 * layers // 3 + 2
    assert counts[2] == 1  # the twin asks once; the FP32 side runs to its end
    first = outputs[0][0]
    for budget, (got, _) in outputs.items():
        assert torch.equal(got[0], first[0]) and torch.equal(got[1], first[1]), budget


@pytest.mark.parametrize("threads", [1, None])
def test_the_fp32_side_can_run_its_ops_on_fewer_openmp_threads(threads) -> None:
    """``reference_threads`` sets the worker thread's own OpenMP thread count (what torch's
    parallel CPU ops read in that thread); the caller's stays as it was, and the outputs are
    those of a plain forward."""
    from qbench.lockstep import set_thread_omp_threads, thread_omp_threads

    def parallel_op_then_count() -> int | None:
        torch.ones(4).softmax(0)  # a thread's first parallel op sets its count (torch's own)
        return thread_omp_threads()

    torch.set_num_threads(torch.get_num_threads())  # torch's count then set explicitly
    mine = parallel_op_then_count()
    if mine is None:
        pytest.skip("torch's OpenMP runtime is not found here")
    plain: list[int | None] = []
    plain_thread = threading.Thread(target=lambda: plain.append(parallel_op_then_count()))
    plain_thread.start()
    plain_thread.join()
    seen: list[int | None] = []
    reference, twin = _models()
    reference[0][0].register_forward_hook(lambda *_: seen.append(parallel_op_then_count()))
    lockstep = Lockstep(reference, twin, _rng(), ahead_bytes=0, reference_threads=threads)
    x = torch.randn(4, 8)
    try:
        with torch.no_grad():
            state = torch.get_rng_state()  # the FP32 side draws from the state at the call
            expected = reference(x)
            torch.set_rng_state(state)
            seen.clear()
            fp32, _, _ = lockstep.forward(x, torch.get_rng_state())
    finally:
        lockstep.close()
    assert torch.equal(fp32, expected)
    assert seen == [1 if threads == 1 else plain[0]]
    assert thread_omp_threads() == mine
    assert set_thread_omp_threads(mine) and thread_omp_threads() == mine


def test_a_cpu_run_of_two_threads_gives_the_fp32_side_one(monkeypatch) -> None:
    from qbench import runner

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert runner._on_small_cpu("cpu") and not runner._on_small_cpu("cuda")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert not runner._on_small_cpu("cpu")
