"""qbench.kernels: one fused function, compiled for large tensors and eager for small ones."""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings

import pytest
import torch
from qbench import kernels


def _stats(x: torch.Tensor, shift: float) -> torch.Tensor:
    y = (x - shift).abs()
    return torch.stack([y.sum(), y.amax(), (y > 1).sum().to(y.dtype)])


def _stats_twin(x: torch.Tensor, shift: float) -> torch.Tensor:
    return _stats(x, shift) + 1000.0  # a deliberately different twin, to see which one ran


def inductor_options(options: dict[str, object] | None) -> dict[str, object] | None:
    """``options`` of a torch.compile call less ``guard_filter_fn`` (dynamo's, not inductor's)."""
    kept = {k: v for k, v in (options or {}).items() if k != "guard_filter_fn"}
    return kept or None


@pytest.fixture
def compiled_options(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The inductor options of every torch.compile call made while the test runs (without
    dynamo's ``guard_filter_fn``, which torch.compile takes among them)."""
    seen: list[object] = []
    compile_ = torch.compile

    def recording(fn, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(inductor_options(kwargs.get("options")))
        return compile_(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", recording)
    return seen


def test_small_tensors_run_the_eager_twin_and_large_ones_the_compiled_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kernels, "COMPILE_MIN_NUMEL", 100)
    small, large = torch.arange(10.0), torch.arange(300.0).reshape(3, 100)
    assert torch.equal(
        kernels.fused(_stats, (small,), (2.0,), eager=_stats_twin), _stats_twin(small, 2.0)
    )
    assert torch.equal(
        kernels.fused(_stats, (large,), (2.0,), eager=_stats_twin), _stats(large, 2.0)
    )
    assert not kernels.use_compiled(99) and kernels.use_compiled(100)
    assert kernels.use_compiled(1, "compiled") and not kernels.use_compiled(10**9, "eager")
    with pytest.raises(ValueError, match="path 'fast' is not one of auto, compiled, eager"):
        kernels.use_compiled(1, "fast")


def test_one_kernel_per_function_and_constants_serves_every_shape() -> None:
    before = len(kernels._COMPILED)
    for shape in [(7,), (5, 9), (2, 3, 11)]:
        x = torch.randn(shape)
        out = kernels.fused(_stats, (x,), (0.5,), path="compiled")
        torch.testing.assert_close(out, _stats(x, 0.5), rtol=1e-6, atol=0)
    kernels.fused(_stats, (torch.randn(4),), (1.5,), path="compiled")
    assert len(kernels._COMPILED) == before + 2  # (fn, 0.5) and (fn, 1.5)
    assert not kernels._FAILED


def _affine(x: torch.Tensor, clamp: bool, *, numbers: tuple) -> torch.Tensor:
    """x * scale + shift (optionally clamped at ``limit``) with the shift's bits ORed in, on
    ints and floats that come at run time."""
    scale, shift, bits, limit = numbers
    y = x * scale + shift
    if clamp:
        y = torch.where(y > limit, limit, y)
    return (y.view(torch.int32) | (bits << 1)).view(torch.float32)


def test_numbers_come_at_run_time_one_kernel_serves_every_value() -> None:
    """``numbers`` reach the kernel as values, not as constants baked into it: one compile
    per (function, constants, kinds of numbers) serves every value, with the eager bits."""
    x = torch.randn(4, 300)
    before = len(kernels._COMPILED)
    values = [
        (0.5, 0.0, 1, 0.0),  # first: a 0 and a 1 (dynamo would make them constants), equal words
        (448.0, 0.25, 3, 1e6),
        (-0.0, 6.0, 7, -1.5),
        (1.0, 0.0, 1, math.nan),
    ]
    for numbers in values:
        got = kernels.fused(_affine, (x,), (True,), numbers=numbers, path="compiled")
        want = _affine(x, True, numbers=numbers)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), numbers
    assert len(kernels._COMPILED) == before + 1
    # one graph: dynamo neither specialized the first call's 0 and 1 nor tied its equal words
    kernel = list(kernels._COMPILED.values())[before]
    code = kernel._torchdynamo_orig_callable.__code__  # type: ignore[attr-defined]
    assert len(torch._dynamo.eval_frame._debug_get_cache_entry_list(code)) == 1
    # other kinds of numbers (an int where a float was) are another kernel, as are constants
    kernels.fused(_affine, (x,), (True,), numbers=(1, 2.0, 0, 3.0), path="compiled")
    kernels.fused(_affine, (x,), (False,), numbers=(1.0, 2.0, 0, 3.0), path="compiled")
    assert len(kernels._COMPILED) == before + 3
    # eager (a small tensor on the auto path): the numbers themselves
    small = torch.randn(3)
    assert torch.equal(
        kernels.fused(_affine, (small,), (False,), numbers=(2.0, 1.0, 0, 0.0)), small * 2.0 + 1.0
    )
    assert not kernels._FAILED


def test_numbers_baked_in_compile_a_kernel_per_value(
    monkeypatch: pytest.MonkeyPatch, compiled_options: list[object]
) -> None:
    """QBENCH_RUNTIME_NUMBERS=0 (the benchmarks' baseline): the numbers are constants of the
    kernel, one compile per distinct value (by its bits: -0.0 is not 0.0), with the same
    results."""
    monkeypatch.setattr(kernels, "RUNTIME_NUMBERS", False)
    x = torch.randn(4, 300)
    values = [(0.5, -2.0, 0, 3.0), (0.5, -0.0, 0, 3.0), (0.5, 0.0, 0, 3.0), (0.5, -2.0, 0, 3.0)]
    for numbers in values:
        got = kernels.fused(_affine, (x,), (True,), numbers=numbers, path="compiled")
        want = _affine(x, True, numbers=numbers)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), numbers
    assert len(compiled_options) == 3
    assert not kernels._FAILED


def test_the_words_of_a_numbers_tuple_are_kept_for_that_very_tuple() -> None:
    """Equal tuples are not the same numbers (0.0 == -0.0): the words are reused only for
    the same tuple object, which the cache holds so that its id is not reused."""
    kernels._WORDS.clear()
    zero, negative = (1.5, 0.0), (1.5, -0.0)
    assert zero == negative
    assert kernels._kinds_and_words(zero) == ("ff", (0x3FC00000, 0))
    assert kernels._kinds_and_words(negative) == ("ff", (0x3FC00000, -(1 << 31)))
    assert kernels._WORDS[id(zero)][0] is zero
    assert kernels._kinds_and_words(zero)[1] is kernels._WORDS[id(zero)][2]


def test_numbers_are_passed_exactly_or_refused() -> None:
    """-0.0 and 0.0 are different numbers (their own words); a float float32 does
    not hold, or an int beyond int32, is refused rather than rounded."""
    assert kernels._words((0.0, -0.0), "ff") == (0, -(1 << 31))
    nan = torch.tensor(kernels._words((math.nan,), "f"), dtype=torch.int32)
    assert nan.view(torch.float32).isnan().all()
    assert kernels._words((7, 448.0), "if") == (7, 0x43E00000)
    with pytest.raises(ValueError, match="not exact in float32"):
        kernels.fused(
            _affine, (torch.ones(3),), (False,), numbers=(0.1, 0.0, 0, 0.0), path="compiled"
        )
    with pytest.raises(ValueError, match="not exact in float32"):
        kernels._words((1e39,), "f")  # beyond float32's range
    with pytest.raises(ValueError, match="beyond int32"):
        kernels.fused(
            _affine, (torch.ones(3),), (False,), numbers=(1.0, 0.0, 1 << 31, 0.0), path="compiled"
        )
    with pytest.raises(TypeError, match="ints and floats"):
        kernels.fused(
            _affine, (torch.ones(3),), (False,), numbers=("1", 0.0, 0, 0.0), path="compiled"
        )


def test_inductor_options_compile_a_kernel_of_their_own(compiled_options: list[object]) -> None:
    seen = compiled_options
    x = torch.randn(6, 5)
    plain = kernels.fused(_stats, (x,), (0.25,), path="compiled")
    one_loop = kernels.fused(_stats, (x,), (0.25,), path="compiled", options=kernels.ONE_LOOP)
    again = kernels.fused(_stats, (x,), (0.25,), path="compiled", options=dict(kernels.ONE_LOOP))
    cpu = kernels.cpu_options()
    assert cpu["cpp.threads"] == torch.get_num_threads()
    # one compile per distinct options
    assert seen == [cpu, {**cpu, **kernels.ONE_LOOP}]
    assert torch.equal(plain, one_loop) and torch.equal(one_loop, again)


def test_a_kernel_is_compiled_for_the_thread_count_it_runs_with(
    compiled_options: list[object],
) -> None:
    """Inductor bakes the thread count into a CPU kernel but not into its disk cache's key:
    QBench names it in the options, so a process (or a part of one) allowed fewer threads
    never runs a kernel compiled for more."""
    seen = compiled_options
    x = torch.randn(6, 5)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            out = kernels.fused(_stats, (x,), (0.75,), path="compiled")
            torch.testing.assert_close(out, _stats(x, 0.75), rtol=1e-6, atol=0)
    finally:
        torch.set_num_threads(before)
    # the third call reused the first
    assert seen == [kernels.cpu_options(1), kernels.cpu_options(2)]
    assert [options["cpp.threads"] for options in seen] == [1, 2]


def _scaled_rows(x: torch.Tensor, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    return (x - shift) * 0.5, x.abs().amax(dim=-1)


def test_a_kernel_first_compiled_on_a_small_tensor_still_runs_on_the_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inductor decides from the sizes of the call that compiles a CPU kernel whether its loops
    run on the threads, and the kernel (``dynamic=True``, on disk keyed by its graph) then
    serves every later shape: a first call on a small tensor must not leave large ones on
    one core (PARALLEL_FROM_FIRST_CALL)."""
    from torch._inductor import config as inductor_config
    from torch._inductor.graph import GraphLowering

    codes: list[str] = []
    monkeypatch.setattr(GraphLowering, "save_output_code", staticmethod(codes.append))
    small = torch.randn(6, 5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with inductor_config.patch(fx_graph_cache=False):  # compiled here, not loaded
            out, amax = kernels.fused(_scaled_rows, (small,), (0.25,), path="compiled")
        large = torch.randn(300, 257)
        torch.testing.assert_close(
            kernels.fused(_scaled_rows, (large,), (0.25,), path="compiled"),
            _scaled_rows(large, 0.25),
            rtol=0,
            atol=0,
        )
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out, (small - 0.25) * 0.5) and torch.equal(amax, small.abs().amax(-1))
    if any(key[0] is _scaled_rows for key in kernels._FAILED):
        pytest.skip("torch.compile is unavailable here (no C++ compiler): nothing compiled")
    kernel_code = [code for code in codes if 'extern "C"' in code]
    assert kernel_code, codes
    assert all("#pragma omp parallel num_threads(2)" in code for code in kernel_code)


@dataclasses.dataclass(frozen=True)
class _Scaled:
    """A kernel's constant of the kind quantize kernels take: a frozen dataclass."""

    scale: float


def _plus_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1


def _plus_three(x: torch.Tensor) -> torch.Tensor:
    return x + 3


#: A module global a kernel reads (replaced by the test below).
_finish = _plus_one


def _offset_rows(x: torch.Tensor, plan: _Scaled) -> torch.Tensor:
    return _finish(dataclasses.replace(plan, scale=plan.scale * 2).scale * x)


def test_a_compiled_kernel_rechecks_tensors_and_module_globals_not_its_own_constants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dynamo re-checks on every call what its trace read through a frame's globals: for a
    quantize kernel, hundreds of guards on its frozen plan and on ``dataclasses``. The
    kernel's key already pins its function and constants, so those guards go; those on the
    tensors and on other modules' globals stay."""
    decisions: list[list[tuple[str, bool, bool]]] = []
    keep_guards = kernels._kernel_guards

    def recording(own, entries):  # type: ignore[no-untyped-def]
        keep = keep_guards(own, entries)
        decisions.append([(e.name, e.guard_type, k) for e, k in zip(entries, keep, strict=True)])
        return keep

    monkeypatch.setattr(kernels, "_kernel_guards", recording)
    x, plan = torch.randn(4, 5), _Scaled(0.25)
    assert torch.equal(kernels.fused(_offset_rows, (x,), (plan,), path="compiled"), x * 0.5 + 1)
    if any(key[0] is _offset_rows for key in kernels._FAILED):
        pytest.skip("torch.compile is unavailable here (no C++ compiler): nothing compiled")
    if not decisions:
        pytest.skip("this torch has no guard_filter_fn: every guard is kept")
    (first,) = decisions
    dropped = [name for name, _, keep in first if not keep]
    kept = [(name, kind) for name, kind, keep in first if keep]
    assert any("G['CONSTANTS']" in name for name in dropped), first
    assert any("dataclasses" in name for name in dropped), first
    assert not any("G['CONSTANTS']" in name or "G['FN']" in name for name, _ in kept), kept
    assert any(kind == "TENSOR_MATCH" for _, kind in kept), kept
    # a module global the kernel reads is still checked: replaced, the kernel traces anew
    monkeypatch.setattr(sys.modules[__name__], "_finish", _plus_three)
    assert torch.equal(kernels.fused(_offset_rows, (x,), (plan,), path="compiled"), x * 0.5 + 3)
    # and so is the tensor: another dtype gets a kernel of its own
    x64 = x.double()
    assert torch.equal(kernels.fused(_offset_rows, (x64,), (plan,), path="compiled"), x64 * 0.5 + 3)
    assert len(decisions) == 3


def test_compile_off_or_failing_falls_back_to_eager_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = torch.randn(50)
    monkeypatch.setattr(kernels, "COMPILE_ENABLED", False)
    assert not kernels.use_compiled(10**9, "compiled")
    monkeypatch.setattr(kernels, "COMPILE_ENABLED", True)

    def broken(*args):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(kernels, "_compiled", broken)
    monkeypatch.setattr(kernels, "_FAILED", set())
    with pytest.warns(
        RuntimeWarning, match=r"_stats failed \(RuntimeError: no C\+\+ compiler second line\)"
    ):
        first = kernels.fused(_stats, (x,), (0.0,), path="compiled")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call goes straight to eager
        second = kernels.fused(_stats, (x,), (0.0,), path="compiled")
    assert torch.equal(first, _stats(x, 0.0)) and torch.equal(second, first)
    # a kernel with run-time numbers falls back with the numbers themselves, not their tensor
    with pytest.warns(RuntimeWarning, match="_affine failed"):
        fallback = kernels.fused(
            _affine, (x,), (True,), numbers=(2.0, 1.0, 1, 0.5), path="compiled"
        )
    assert torch.equal(fallback, _affine(x, True, numbers=(2.0, 1.0, 1, 0.5)))


@pytest.mark.parametrize(
    ("make", "order"),
    [
        (lambda: torch.randn(2, 3, 4, 5), None),  # contiguous already
        (
            lambda: torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last),
            (0, 2, 3, 1),
        ),
        (
            lambda: torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d),
            (0, 2, 3, 4, 1),
        ),
        (lambda: torch.randn(5, 7).t(), (1, 0)),
        (lambda: torch.randn(4, 6)[:, ::2], None),  # gaps: no order is contiguous
        (lambda: torch.randn(3, 1).expand(3, 4), None),  # a broadcast overlaps
        (lambda: torch.randn(2, 1, 4, 5).contiguous(memory_format=torch.channels_last), None),
        (lambda: torch.randn(7), None),
    ],
)
def test_memory_order_is_the_permutation_under_which_a_tensor_is_contiguous(make, order) -> None:  # type: ignore[no-untyped-def]
    tensor = make()
    assert kernels.memory_order(tensor) == order
    if order is not None:
        permuted = tensor.permute(order)
        assert permuted.is_contiguous() and permuted.data_ptr() == tensor.data_ptr()


def test_in_memory_order_permutes_every_tensor_by_the_first_ones_order() -> None:
    first = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    second = torch.randn(2, 3, 4, 5)
    a, b = kernels.in_memory_order(first, second)
    assert (
        a.is_contiguous() and a.shape == (2, 4, 5, 3) and torch.equal(b, second.permute(0, 2, 3, 1))
    )
    plain = torch.randn(3, 4)
    assert kernels.in_memory_order(plain, second)[0] is plain


def test_in_memory_order_expands_a_lower_rank_tensor_that_broadcasts() -> None:
    """A tensor-mode scale (0-dim) beside a channels-last activation: the audit's case that
    crashed with "permute ... input.dim() = 0 is not equal to len(dims) = 4"."""
    first = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    scale, row = torch.tensor(0.5), torch.arange(5.0)
    a, b, c = kernels.in_memory_order(first, scale, row)
    assert a.is_contiguous() and b.shape == c.shape == a.shape
    assert torch.equal(b, torch.full_like(a, 0.5))
    assert torch.equal(c, row.expand(2, 3, 4, 5).permute(0, 2, 3, 1))


def test_kernels_run_without_the_torch_function_modes_of_a_forward(monkeypatch) -> None:
    """A call interceptor keeps a TorchFunctionMode active during a twin's forward: a kernel
    called then sees none of it (its math is not the model's), compiled or eager, and the
    mode is back afterwards."""
    from torch.overrides import TorchFunctionMode

    seen: list[object] = []

    class Recording(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    x = torch.arange(8.0)
    with Recording():
        results = [kernels.fused(double, (x,), path=path) for path in ("eager", "compiled")]
        assert not seen
        with kernels.without_function_modes():
            torch.add(x, 1)
        assert not seen
        torch.add(x, 1)
    assert seen == [torch.add]
    assert all(torch.equal(result, x * 2) for result in results)


def _shifted(x: torch.Tensor, shift: float) -> torch.Tensor:
    return x - shift


def test_a_short_run_keeps_kernels_eager_unless_this_process_compiled_them(
    monkeypatch: pytest.MonkeyPatch, compiled_options: list[object]
) -> None:
    """Fewer batches than COMPILE_MIN_BATCHES expected: a kernel not compiled yet runs eagerly
    (compiling costs more than such a run saves); one compiled already is used; a long run,
    or no run at all, compiles as before."""
    monkeypatch.setattr(kernels, "COMPILE_MIN_NUMEL", 100)
    monkeypatch.setattr(kernels, "COMPILE_MIN_BATCHES", 10)
    large = torch.arange(300.0)
    with kernels.expecting(3):
        assert torch.equal(
            kernels.fused(_shifted, (large,), (2.0,), eager=_stats_twin), _stats_twin(large, 2.0)
        )
        assert not compiled_options
    with kernels.expecting(10):
        assert torch.equal(kernels.fused(_shifted, (large,), (2.0,)), large - 2.0)
    assert len(compiled_options) == 1
    with kernels.expecting(3):  # compiled above: a short run uses it
        assert torch.equal(
            kernels.fused(_shifted, (large,), (2.0,), eager=_stats_twin), large - 2.0
        )
        assert kernels.use_compiled(300) is False
    assert kernels.EXPECTED_BATCHES is None and kernels.use_compiled(300)


@pytest.mark.slow
def test_a_second_process_loads_the_kernels_a_first_one_compiled(tmp_path) -> None:
    """Compiled kernels are kept under QBench's cache folder: the second process finds the
    first one's in inductor's FX graph cache (a hit, no miss) instead of compiling again, and
    runs none of inductor's ISA build checks (the first one's answers are remembered)."""
    import json
    import os
    import platform
    import subprocess
    import sys

    script = (
        "import json, torch\n"
        "from qbench import kernels\n"
        "from torch._dynamo.utils import counters\n"
        "x = torch.arange(1 << 12, dtype=torch.float32)\n"
        "kernels.fused(lambda t, s: (t * s).round() / s, (x,), (3.0,), path='compiled')\n"
        "found = dict(counters['inductor'], isa_checks=kernels.ISA_CHECKS_RUN)\n"
        "print(json.dumps(found))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env[kernels.CACHE_ENV] = str(tmp_path / "cache")
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(2)
    ]
    assert runs[0].get("fxgraph_cache_miss", 0) >= 1
    assert runs[1].get("fxgraph_cache_hit", 0) >= 1 and runs[1].get("fxgraph_cache_miss", 0) == 0
    assert list((tmp_path / "cache" / "inductor").iterdir())  # one folder per torch version
    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert runs[0]["isa_checks"]  # at least AVX2's check, in a fresh cache folder
    assert runs[1]["isa_checks"] == []


def _check_isas_like_inductor(isas: list[str]) -> str:
    """What inductor's ``pick_vec_isa`` does the first time, with stand-in ISAs: a build
    check of every ISA the CPU claims, a second one (an extension) of the widest."""
    from torch._inductor import cpu_vec_isa

    found = [name for name in isas if cpu_vec_isa.VecISA.check_build(_Isa.named(name), "probe")]
    cpu_vec_isa.VecISA.check_build(_Isa.named(isas[0]), "extension")
    return found[0]


def test_isa_build_checks_that_passed_are_remembered_for_the_next_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from torch._inductor import cpu_vec_isa

    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    built: list[str] = []

    def check_build(isa: _Isa, code: str) -> bool:  # inductor's: compiles, loads in a process
        built.append(f"{isa} {code}")
        return str(isa) != "broken"

    isas = ["wide", "broken", "narrow"]
    monkeypatch.setattr(cpu_vec_isa.VecISA, "check_build", check_build)
    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", lambda: _check_isas_like_inductor(isas))
    monkeypatch.setattr(kernels, "ISA_CHECKS_RUN", [])
    monkeypatch.setattr(kernels, "_isa_machine_key", lambda: "this-machine")  # no compiler needed
    every = ["wide probe", "broken probe", "narrow probe", "wide extension"]
    kernels.probe_vec_isas()
    assert built == every and kernels.ISA_CHECKS_RUN == ["wide", "broken", "narrow", "wide"]
    assert cpu_vec_isa.VecISA.check_build is check_build  # inductor's own, back in place
    assert len(list((tmp_path / "isa").iterdir())) == 1
    built.clear()
    kernels.probe_vec_isas()  # as a later process would: only the failed check runs again
    assert built == ["broken probe"]
    built.clear()
    with monkeypatch.context() as other:  # another machine, compiler or torch: all again
        other.setattr(kernels, "_isa_machine_key", lambda: "another-machine")
        kernels.probe_vec_isas()
    assert built == every
    built.clear()
    for memo in (tmp_path / "isa").iterdir():
        memo.write_text("{not json", encoding="utf-8")  # damaged: checked again, rewritten
    kernels.probe_vec_isas()
    assert built == every
    built.clear()
    kernels.probe_vec_isas()
    assert built == ["broken probe"]


class _Isa:
    def __init__(self, width: int, name: str = "") -> None:
        self.width = width
        self.name = name
        self._arch_flags = f"-m{name}"

    @classmethod
    def named(cls, name: str) -> _Isa:
        return cls(0, name)

    def __str__(self) -> str:
        return self.name

    def bit_width(self) -> int:
        return self.width


def wide_compiler_for_test(monkeypatch: pytest.MonkeyPatch, width: int = 512) -> str | None:
    """What :func:`kernels._write_wide_compiler` writes on a machine whose vectors are
    ``width`` bits wide (inductor's ISA choice faked only while it decides)."""
    from torch._inductor import cpu_vec_isa

    with monkeypatch.context() as patch:
        patch.setattr(cpu_vec_isa, "pick_vec_isa", lambda: _Isa(width))
        return kernels._write_wide_compiler()


def test_the_wide_vector_compiler_is_inductors_own_with_one_flag(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    import shutil
    import subprocess

    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    assert wide_compiler_for_test(monkeypatch, 256) is None  # AVX2: nothing to correct
    assert wide_compiler_for_test(monkeypatch, 128) is None  # NEON
    script = wide_compiler_for_test(monkeypatch, 512)
    if shutil.which("g++") is None and shutil.which("clang++") is None:
        assert script is None
        pytest.skip("no C++ compiler here")
    assert script is not None and script.startswith(str(tmp_path / "cxx"))
    text = open(script, encoding="utf-8").read()
    assert kernels.PREFER_512 in text and text.startswith("#!/bin/sh\n")
    # inductor chooses its flags by the compiler's name: the script keeps g++ / clang++ in it
    assert script.endswith(("g++", "clang++", "gcc", "clang"))
    version = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout
    assert wide_compiler_for_test(monkeypatch, 512) == script  # the same script, rewritten
    # a folder inductor's unquoted command line would split: its own compiler instead
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path / "my cache"))
    assert wide_compiler_for_test(monkeypatch, 512) is None


def test_wide_vectors_off_or_decided_named_in_every_kernels_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kernels, "WIDE_VECTORS", False)
    monkeypatch.setattr(kernels, "_WIDE_COMPILER", [])
    assert kernels.wide_vector_compiler() is None
    parallel = {"cpp.min_chunk_size": kernels.PARALLEL_FROM_FIRST_CALL}
    assert kernels.cpu_options(3) == {"cpp.threads": 3, **parallel}
    monkeypatch.setattr(kernels, "_WIDE_COMPILER", ["/x/qbench-wide-g++"])
    wide = {"cpp.cxx": ("/x/qbench-wide-g++",)}
    assert kernels.cpu_options(3) == {"cpp.threads": 3, **parallel, **wide}


def test_inductor_builds_the_kernel_with_the_compiler_qbench_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """The compiler reaches inductor's C++ build through the kernel's own options (it is not
    set for the process): a script that logs its calls, then runs g++, is called."""
    import shutil
    import uuid

    real = shutil.which("g++")
    if real is None or not kernels.COMPILE_ENABLED:
        pytest.skip("no g++ here, or compiling is off")
    log = tmp_path / "calls.log"
    script = tmp_path / "logging-g++"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n', encoding="utf-8")
    script.chmod(0o755)
    monkeypatch.setattr(kernels, "_WIDE_COMPILER", [str(script)])
    monkeypatch.setattr(kernels, "_COMPILED", {})
    shift = float(uuid.uuid4().int % 1000) + 0.5  # a kernel no cache holds yet
    x = torch.randn(6, 5)
    out = kernels.fused(_stats, (x,), (shift,), path="compiled")
    torch.testing.assert_close(out, _stats(x, shift), rtol=1e-6, atol=0)
    assert not kernels._FAILED
    assert log.is_file() and ".cpp" in log.read_text(encoding="utf-8")
    # the process's own compiler setting is untouched
    assert str(script) not in torch._inductor.config.cpp.cxx


def test_a_run_that_compiles_nothing_never_probes_the_compiler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A short run keeps kernels eager (no compile has happened): deciding the compiler would
    build inductor's ISA probes, seconds in a fresh process, for nothing."""
    monkeypatch.setattr(kernels, "_COMPILED", {})
    monkeypatch.setattr(kernels, "_WIDE_COMPILER", [])
    monkeypatch.setattr(kernels, "COMPILE_MIN_NUMEL", 1)
    x = torch.randn(6, 5)
    with kernels.expecting(1):
        out = kernels.fused(_stats, (x,), (0.5,), eager=_stats_twin)
    assert torch.equal(out, _stats_twin(x, 0.5))
    assert kernels._WIDE_COMPILER == []


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_int_range_is_the_smallest_and_largest_value(dtype: torch.dtype) -> None:
    info = torch.iinfo(dtype)
    x = torch.tensor([3, info.max, 0, info.min, 7], dtype=dtype).repeat(1000)
    x = x.reshape(50, 100).t()  # not contiguous
    assert kernels.int_range(x) == (info.min, info.max)
    assert kernels.int_range(torch.tensor([5], dtype=dtype)) == (5, 5)
