"""The fused twin (eager and compiled) against the reference twin, stochastic rounding,
shapes, axes and dtypes."""

from __future__ import annotations

import math

import pytest
import qbench
import torch
from formats_probes import same_bits
from qbench import kernels
from qbench.spec import spec_from_arguments
from qbench_formats import quantizer
from qbench_formats.catalog import ALL_FORMATS

QUANTIZABLE = [f.name for f in ALL_FORMATS if f.kind != "scale"]
#: The quantizer's kernel pieces (qbench.kernels compiles and caches them, keyed by function)
PIECES = (
    quantizer.fused_kernel,
    quantizer.amax_scales,
    quantizer.group_amax,
    quantizer.fused_scales,
    quantizer.fused_elements,
)


def quantize_kernels() -> dict[tuple, object]:
    """qbench.kernels' compiled kernels that are pieces of the quantizer."""
    return {key: kernel for key, kernel in kernels._COMPILED.items() if key[0] in PIECES}


def quantize_kernel_failed(test: object) -> bool:
    """Whether a quantizer piece fell back to eager for a plan ``test(plan)`` accepts."""
    return any(key[0] in PIECES and test(key[1][0]) for key in kernels._FAILED)


ROUNDINGS = ["nearest_even", "nearest_away", "toward_zero", "stochastic"]


def awkward_tensor(seed: int = 0) -> torch.Tensor:
    """Normal values over many magnitudes plus specials, zeros and float32 subnormals."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 48, generator=gen) * torch.exp2(
        torch.randint(-30, 30, (12, 1), generator=gen)
    )
    x[0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    x[1] = 0.0
    x[2] = torch.randn(48, generator=gen) * 2.0**-140  # float32 subnormals
    x[3, 7] = 3.0e38
    return x


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("name", QUANTIZABLE)
def test_eager_twin_matches_reference(name: str, rounding: str) -> None:
    x = awkward_tensor()
    fmt = qbench.get_format(name)
    variants = [
        {"mode": "tensor"},
        {"mode": "channel", "axis": 1},
        {"mode": "chunk", "chunk_size": 20},
        {"mode": "chunk", "chunk_size": 32, "scale_format": "e8m0"},
        {"mode": "chunk", "chunk_size": 16, "scale_format": "fp8_e4m3", "second_level": "fp32"},
    ]
    for overflow in ("saturate", "format"):
        for kwargs in variants:
            spec = spec_from_arguments(name, rounding=rounding, overflow=overflow, **kwargs)
            results = [
                fmt.quantize(
                    x,
                    spec,
                    return_codes=True,
                    generator=torch.Generator().manual_seed(7),
                    path=path,
                )
                for path in ("reference", "eager")
            ]
            ref, fast = results
            context = f"{name} {rounding} {overflow} {kwargs}"
            assert bool(same_bits(ref.dequantized, fast.dequantized).all()), context
            assert torch.equal(ref.codes, fast.codes), context
            assert bool(same_bits(ref.scales, fast.scales).all()), context


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp4_e3m0", "int4", "fp6_e2m3", "nf4"])
def test_stochastic_rounding_is_unbiased_and_seeded(name: str) -> None:
    fmt = qbench.get_format(name)
    grid = fmt.values()
    # Points strictly between neighbours, including the subnormal range and a tie.
    lo, hi = grid[len(grid) // 2 + 1], grid[len(grid) // 2 + 2]
    points = torch.tensor(
        [lo + 0.3 * (hi - lo), lo + 0.5 * (hi - lo), grid[-2] + 0.9 * (grid[-1] - grid[-2])]
    )
    samples = points.repeat(40_000, 1)
    out = fmt.round(samples, rounding="stochastic", generator=torch.Generator().manual_seed(1))
    mean = out.double().mean(dim=0)
    spacing = torch.tensor([hi - lo, hi - lo, grid[-1] - grid[-2]], dtype=torch.float64)
    # Each draw is lo or hi: std <= spacing / 2; 6 sigma of the mean of 40k draws.
    tolerance = 6 * spacing / 2 / 40_000**0.5
    assert bool(((mean - points.double()).abs() <= tolerance).all()), (mean, points)
    assert bool(fmt.is_representable(out).all())
    again = fmt.round(samples, rounding="stochastic", generator=torch.Generator().manual_seed(1))
    other = fmt.round(samples, rounding="stochastic", generator=torch.Generator().manual_seed(2))
    assert torch.equal(out, again)
    assert not torch.equal(out, other)
    reference = fmt.round(
        samples, rounding="stochastic", generator=torch.Generator().manual_seed(1), path="reference"
    )
    assert torch.equal(out, reference)


def test_shapes_axes_dtypes() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 5, 7, generator=gen)
    y = qbench.quantize(x, "fp8_e4m3", mode="channel", axis=1, return_codes=True)
    assert y.scales.shape == (6,)
    assert y.expand_scales().shape == (1, 6, 1, 1)
    for c in range(6):
        expected = x[:, c].abs().max() / 448.0
        assert y.scales[c].item() == expected.item()
    chunked = qbench.quantize(x, "int8", mode="chunk", chunk_size=4, axis=1, return_codes=True)
    assert chunked.scales.shape == (2, 2, 5, 7)  # 6 = 4 + 2 along axis 1
    assert chunked.expand_scales().shape == x.shape
    moved = qbench.quantize(x.movedim(1, -1).contiguous(), "int8", mode="chunk", chunk_size=4)
    assert torch.equal(moved.movedim(-1, 1), chunked.dequantized)
    # A chunk longer than the axis is one (short) block: the same as chunk = axis length.
    big_chunk = qbench.quantize(x, "fp8_e5m2", mode="chunk", chunk_size=1000)
    assert torch.equal(big_chunk, qbench.quantize(x, "fp8_e5m2", mode="chunk", chunk_size=7))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        out = qbench.quantize(x.to(dtype), "fp8_e4m3", mode="chunk", chunk_size=8)
        assert out.dtype == dtype and out.shape == x.shape
    scalar = qbench.quantize(torch.tensor(3.3), "fp4_e2m1")
    assert scalar.shape == () and abs(scalar.item() - 3.3) < 1e-6
    empty = qbench.quantize(torch.empty(0, 4), "mxfp4_e2m1", return_codes=True)
    assert empty.dequantized.shape == (0, 4) and empty.codes.shape == (0, 4)


def test_nan_under_fp32_scale_stays_local() -> None:
    x = torch.tensor([[1.0, float("nan"), -2.0, float("inf")]])
    out = qbench.quantize(x, "fp8_e4m3", mode="tensor")
    assert out[0, 0].item() == 1.0 and out[0, 2].item() == -2.0
    assert out[0, 1].isnan() and out[0, 3].item() == 2.0  # inf saturates to max * scale


def test_preset_arguments_override() -> None:
    x = torch.randn(4, 64)
    result = qbench.quantize(x, "mxfp8_e4m3", chunk_size=16, return_codes=True)
    assert result.scales.shape == (4, 4)
    assert result.spec.scaling.scale_format == "e8m0"


@pytest.mark.slow
def test_compiled_twin_matches_reference_without_recompiling_per_shape() -> None:
    # Two plans keep this under a minute on a loaded 2-core box: the no-mantissa tie rule
    # with fp32 chunk scales, and the MX e8m0 path (the benchmark compiles all of them).
    cases = [
        ("fp4_e3m0", {"mode": "chunk", "chunk_size": 64}),
        ("mxfp4_e2m1", {}),
    ]
    shapes = [(48, 384), (3, 40, 256)]
    for name, kwargs in cases:
        fmt = qbench.get_format(name)
        spec = spec_from_arguments(name, **kwargs)
        for i, shape in enumerate(shapes):
            x = awkward_tensor(i).flatten()[: torch.Size(shape).numel()]
            x = torch.cat([x, torch.randn(torch.Size(shape).numel() - x.numel())]).reshape(shape)
            compiled = fmt.quantize(x, spec, return_codes=True, path="compiled")
            if quantize_kernel_failed(lambda p: True):
                pytest.skip("torch.compile is unavailable here; the eager twin was used")
            reference = fmt.quantize(x, spec, return_codes=True, path="reference")
            assert bool(same_bits(compiled.dequantized, reference.dequantized).all()), (name, shape)
            assert torch.equal(compiled.codes, reference.codes)
    assert len(quantize_kernels()) >= len(cases)
    # One kernel per format/scaling, reused across shapes (dynamic=True): at most one
    # recompile per plan (dynamo may specialize on the first shape it sees).
    for kernel in quantize_kernels().values():
        cache = torch._dynamo.eval_frame._debug_get_cache_entry_list(
            kernel._torchdynamo_orig_callable.__code__
        )
        assert len(cache) <= 2


#: Float formats with a mantissa: saturating, their compiled kernels differ only in numbers.
SHARING = ["fp8_e4m3", "fp6_e2m3", "fp8_e5m2", "fp4_e2m1", "fp6_e3m2"]


def test_formats_of_one_kind_share_a_compiled_kernel_that_reads_their_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A format's numbers (max, exponents, bias, codes) reach the compiled kernel at run
    time (quantizer.kernel_plan): fp8_e4m3, fp6_e2m3, fp8_e5m2, fp4_e2m1 and fp6_e3m2 under
    one scaling share one kernel with codes and one without, each format with the reference
    twin's bits and codes whichever compiled it. What changes the kernel's code does not
    share: fp4_e3m0 (no mantissa: its own tie rule), int8, and the special values where
    overflow follows the format (fp8_e4m3 to NaN, fp8_e5m2 to inf)."""
    monkeypatch.setattr(kernels, "_COMPILED", {})
    x = torch.cat([awkward_tensor(5), awkward_tensor(6)]).reshape(12, 96)
    # one scaling (chunks of 32): each compile costs seconds in CI's cold cache
    scaling = {"mode": "chunk", "chunk_size": 32}

    def check(name: str, **extra: object) -> None:
        fmt = qbench.get_format(name)
        spec = spec_from_arguments(name, **scaling, **extra)  # type: ignore[arg-type]
        for codes in (False, True):
            compiled = fmt.quantize(x, spec, return_codes=codes, path="compiled")
            if quantize_kernel_failed(lambda p: True):
                pytest.skip("torch.compile is unavailable here; the eager twin was used")
            reference = fmt.quantize(x, spec, return_codes=codes, path="reference")
            if codes:
                assert torch.equal(compiled.codes, reference.codes), name
                assert bool(same_bits(compiled.scales, reference.scales).all()), name
                compiled, reference = compiled.dequantized, reference.dequantized
            assert bool(same_bits(compiled, reference).all()), (name, codes)

    for name in SHARING:
        check(name)
    assert len(quantize_kernels()) == 2
    for kernel in quantize_kernels().values():  # and no recompile for another format's numbers
        code = kernel._torchdynamo_orig_callable.__code__  # type: ignore[attr-defined]
        assert len(torch._dynamo.eval_frame._debug_get_cache_entry_list(code)) == 1
    for name in ("fp4_e3m0", "int8"):
        check(name)
    assert len(quantize_kernels()) == 6
    for name in ("fp8_e4m3", "fp8_e5m2"):
        check(name, overflow="format")
    assert len(quantize_kernels()) == 10


@pytest.mark.parametrize("path", ["eager", "compiled"])
@pytest.mark.parametrize("channels", [256, 200])  # whole blocks; a padded short last block
def test_a_channels_last_activation_keeps_its_layout_and_its_values(
    path: str, channels: int
) -> None:
    """Chunked along C, a channels-last activation (what a CPU run feeds the twin) gives
    the reference's bits and codes, and comes back channels-last: the next convolution
    reads it without a reorder, and the audit in one linear sweep."""
    fmt = qbench.get_format("fp8_e4m3")
    spec = spec_from_arguments("fp8_e4m3", mode="chunk", chunk_size=128, axis=1)
    x = awkward_tensor(3).flatten()[: 2 * channels * 15]
    x = torch.cat([x, torch.randn(2 * channels * 15 - x.numel())]).reshape(2, channels, 3, 5)
    reference = fmt.quantize(x, spec, return_codes=True, path="reference")
    nhwc = x.contiguous(memory_format=torch.channels_last)
    result = fmt.quantize(nhwc, spec, return_codes=True, path=path)
    assert bool(same_bits(result.dequantized, reference.dequantized).all())
    assert torch.equal(result.codes, reference.codes)
    for tensor in (result.dequantized, result.codes):
        assert tensor.stride() == nhwc.stride()


def _recorded_compiles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """(name, inductor options) of every kernel handed to torch.compile from now on, each
    then run eagerly: which kernels compile with which options is what is checked."""
    if not kernels.COMPILE_ENABLED:
        pytest.skip("QBENCH_COMPILE=0: nothing is compiled")
    seen: list[tuple[str, object]] = []

    def recording(fn, **kwargs):  # type: ignore[no-untyped-def]
        options = dict(kwargs.get("options") or {})
        options.pop("guard_filter_fn", None)  # dynamo's, not inductor's
        seen.append((fn.__name__, options or None))
        return fn

    monkeypatch.setattr(kernels, "_COMPILED", {})
    monkeypatch.setattr(kernels, "_FAILED", set())
    monkeypatch.setattr(torch, "compile", recording)
    return seen


def test_kernels_are_compiled_for_the_thread_count_they_run_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each piece is compiled with torch's thread count when it runs (inductor would bake in
    whatever count compiled it first and its disk cache ignores the count), the scales piece
    of a split plan on one thread: a second count compiles anew (the one-thread scales piece
    excepted: it is the same kernel), a count seen before reuses its kernels."""
    seen = _recorded_compiles(monkeypatch)
    x = torch.randn(4, 64)
    cases = [
        ("fp8_e4m3", spec_from_arguments("fp8_e4m3", mode="chunk", chunk_size=32)),
        ("nvfp4", spec_from_arguments("nvfp4")),  # split: amax, scales, elements
    ]
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            for name, spec in cases:
                fmt = qbench.get_format(name)
                got = fmt.quantize(x, spec, path="compiled")
                assert bool(same_bits(got, fmt.quantize(x, spec, path="eager")).all())
    finally:
        torch.set_num_threads(before)
    expected = []
    for threads in (1, 2):
        expected += [
            ("quantize_kernel", kernels.cpu_options(threads)),
            ("abs_amax_kernel", kernels.cpu_options(threads)),
            *([("scales_kernel", kernels.cpu_options(1))] if threads == 1 else []),
            ("elements_kernel", kernels.cpu_options(threads)),
        ]
    assert seen == expected


@pytest.mark.slow
def test_compiled_kernel_encodes_codes_in_its_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """With codes asked for, the compiled kernel returns the int32 codes itself (no second
    pass through encode_codes), equal to the reference twin's: fp8_e5m2 with overflow to
    infinity, -0, NaN, float32 subnormals and a short last block."""
    fmt = qbench.get_format("fp8_e5m2")
    spec = spec_from_arguments("fp8_e5m2", mode="chunk", chunk_size=20, overflow="format")
    x = torch.cat([awkward_tensor(3), awkward_tensor(4)])
    x[5, :4] = torch.tensor([1e30, -1e30, 5e-45, -5e-45])
    reference = fmt.quantize(x, spec, return_codes=True, path="reference")
    encoded: list[int] = []
    real_encode = quantizer.encode_codes

    def counting_encode(*args: object, **kwargs: object) -> torch.Tensor:
        encoded.append(1)
        return real_encode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(quantizer, "encode_codes", counting_encode)
    compiled = fmt.quantize(x, spec, return_codes=True, path="compiled")
    if quantize_kernel_failed(lambda p: True):
        pytest.skip("torch.compile is unavailable here; the eager twin was used")
    assert not encoded
    assert compiled.codes.dtype == reference.codes.dtype == torch.int32
    assert torch.equal(compiled.codes, reference.codes)
    assert bool(same_bits(compiled.dequantized, reference.dequantized).all())
    eager = fmt.quantize(x, spec, return_codes=True, path="eager")
    assert encoded and torch.equal(eager.codes, reference.codes)


def nvfp4_edge_tensors() -> list[torch.Tensor]:
    """Random blocks next to blocks of zeros, of NaN/inf, of float32 subnormals, and whole
    tensors whose tensor scale falls back (all zeros: 1; amax / 2688 underflows: 2^-149)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 100, generator=gen) * torch.exp2(
        torch.randint(-24, 24, (6, 7), generator=gen).repeat_interleave(16, dim=1)[:, :100]
    )  # a magnitude per 16-block; the last block of each row is 4 long (padded)
    x[0, 0:16] = 0.0
    x[0, 16:32] = -0.0
    x[1, 3] = float("nan")
    x[1, 20] = float("inf")
    x[1, 40] = -float("inf")
    x[1, 48:64] = float("nan")  # a block with no finite value
    x[2, 0:16] = torch.randn(16, generator=gen) * 2.0**-140  # float32 subnormals
    x[2, 16:32] = 2.0**-149
    x[3, 97] = 3.0e38  # sets the tensor amax; most blocks then hit the fp8 min_normal
    x[4, 96:] = torch.tensor([float("inf"), 0.0, -1e-30, 5.0])
    tiny = torch.randn(4, 48, generator=gen) * 2.0**-138  # amax / 2688 underflows
    specials = torch.zeros(3, 32)
    specials[0, 5] = float("nan")
    specials[1, 20] = -float("inf")
    return [x, x[:5, :64] * 1e-3, torch.zeros(5, 48), tiny, specials]


@pytest.mark.slow
@pytest.mark.parametrize("rounding", ["nearest_even", "stochastic"])
def test_split_nvfp4_kernel_matches_reference(rounding: str) -> None:
    # A second-level scale runs as three compiled kernels (amax, scales, elements):
    # bit-identical to the reference and the eager twin, codes and both scale levels too.
    fmt = qbench.get_format("nvfp4")
    spec = spec_from_arguments("nvfp4", rounding=rounding)
    for i, x in enumerate(nvfp4_edge_tensors()):
        results = {
            path: fmt.quantize(
                x,
                spec,
                return_codes=True,
                generator=torch.Generator().manual_seed(i),
                path=path,
            )
            for path in ("compiled", "reference", "eager")
        }
        if quantize_kernel_failed(lambda p: p.second_level):
            pytest.skip("torch.compile is unavailable here; the eager twin was used")
        compiled, reference = results["compiled"], results["reference"]
        for other in (reference, results["eager"]):
            context = (rounding, i)
            assert bool(same_bits(compiled.dequantized, other.dequantized).all()), context
            assert torch.equal(compiled.codes, other.codes), context
            assert bool(same_bits(compiled.scales, other.scales).all()), context
            for level in ("block", "tensor"):
                got, want = compiled.scale_parts[level][0], other.scale_parts[level][0]
                assert bool(same_bits(got, want).all()), (context, level)
        if rounding == "nearest_even":  # the plan without codes stores no scale parts
            plain = fmt.quantize(x, spec, path="compiled")
            assert bool(same_bits(plain, reference.dequantized).all()), i
    split = {key: kernel for key, kernel in quantize_kernels().items() if key[1][0].second_level}
    assert {key[0] for key in split} == {
        quantizer.group_amax,
        quantizer.fused_scales,
        quantizer.fused_elements,
    }
    # Five shapes, one kernel per piece (at most one recompile after the first shape).
    for key, kernel in split.items():
        cache = torch._dynamo.eval_frame._debug_get_cache_entry_list(
            kernel._torchdynamo_orig_callable.__code__
        )
        assert len(cache) <= 2, key


def whole_tensor_edge_tensors() -> list[torch.Tensor]:
    """Every float32 exponent field with its mantissa extremes, both signs (subnormals, +-0,
    inf, NaN among them); the awkward tensor; all zeros (scale 1); float32 subnormals only
    (amax / max underflows: scale 2^-149); and one finite value among infs and NaNs."""
    fields = torch.arange(0, 256, dtype=torch.int32) << 23
    mantissas = torch.tensor([0, 1, 0x400000, 0x7FFFFE, 0x7FFFFF], dtype=torch.int32)
    every_field = (fields[:, None] | mantissas[None, :]).flatten().view(torch.float32)
    every_field = torch.cat([every_field, -every_field]).reshape(40, 64)
    gen = torch.Generator().manual_seed(5)
    subnormals = torch.randn(8, 64, generator=gen) * 2.0**-140
    specials = torch.full((4, 32), float("nan"))
    specials[1] = float("inf")
    specials[2, 3] = -float("inf")
    specials[3, 17] = -2.5
    return [every_field, awkward_tensor(6), torch.zeros(5, 48), subnormals, specials]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kwargs", "codes"),
    [
        ("fp8_e5m2", {"overflow": "format"}, True),
        ("fp4_e3m0", {"rounding": "stochastic"}, False),
        ("int8", {"scale_format": "e8m0"}, False),
    ],
)
def test_split_whole_tensor_kernel_matches_reference(
    monkeypatch: pytest.MonkeyPatch, name: str, kwargs: dict, codes: bool
) -> None:
    """A large tensor under mode tensor runs compiled as two kernels (the amax and its scale,
    then the elements; :func:`quantizer.split_tensor_scale`): the reference's bits and codes
    on every float32 exponent field, ties, subnormals, +-0, inf and NaN, all-zero and
    underflowing tensors."""
    monkeypatch.setattr(quantizer, "SPLIT_TENSOR_MIN_NUMEL", 0)  # every tensor is "large"
    fmt = qbench.get_format(name)
    spec = spec_from_arguments(name, mode="tensor", **kwargs)
    for i, x in enumerate(whole_tensor_edge_tensors()):
        results = {
            path: fmt.quantize(
                x,
                spec,
                return_codes=codes,
                generator=torch.Generator().manual_seed(i),
                path=path,
            )
            for path in ("compiled", "reference")
        }
        if quantize_kernel_failed(lambda p: p.whole_tensor):
            pytest.skip("torch.compile is unavailable here; the eager twin was used")
        compiled, reference = results["compiled"], results["reference"]
        if codes:
            assert bool(same_bits(compiled.dequantized, reference.dequantized).all()), i
            assert torch.equal(compiled.codes, reference.codes), i
            assert bool(same_bits(compiled.scales, reference.scales).all()), i
        else:
            assert bool(same_bits(compiled, reference).all()), i
    pieces = {key[0] for key in quantize_kernels() if key[1][0].whole_tensor}
    assert {quantizer.amax_scales, quantizer.fused_elements} <= pieces


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("fp8_e4m3", {"mode": "chunk", "chunk_size": 16}),
        ("mxfp4_e2m1", {}),
        ("int8", {"mode": "channel", "axis": 0}),
    ],
)
def test_compiled_kernels_with_and_without_wide_vectors_match_the_reference(
    monkeypatch: pytest.MonkeyPatch, wide: bool, name: str, options: dict
) -> None:
    """On AVX-512 machines qbench.kernels builds its kernels with a compiler that prefers
    512-bit vectors (``kernels.wide_vector_compiler``): the bits, codes included, are the
    reference's either way (on other machines the flag changes nothing, and is still run)."""
    import shutil

    from torch._inductor import cpu_vec_isa

    if not kernels.COMPILE_ENABLED:
        pytest.skip("QBENCH_COMPILE=0: nothing is compiled")
    compiler = None
    if wide:
        real_isa = cpu_vec_isa.pick_vec_isa()
        with monkeypatch.context() as patch:  # the script as an AVX-512 machine gets it
            patch.setattr(
                cpu_vec_isa,
                "pick_vec_isa",
                lambda: type("Isa", (), {"bit_width": lambda self: 512})(),
            )
            compiler = kernels._write_wide_compiler()
        assert cpu_vec_isa.pick_vec_isa() is real_isa
        if compiler is None:
            assert shutil.which("g++") is None and shutil.which("clang++") is None
            pytest.skip("no gcc or clang here")
    monkeypatch.setattr(kernels, "_WIDE_COMPILER", [compiler])
    monkeypatch.setattr(kernels, "_COMPILED", {})
    fmt = qbench.get_format(name)
    spec = spec_from_arguments(name, **options)
    x = torch.cat([awkward_tensor(5), awkward_tensor(6)]).reshape(8, -1)
    got = fmt.quantize(x, spec, return_codes=True, path="compiled")
    want = fmt.quantize(x, spec, return_codes=True, path="reference")
    assert not quantize_kernel_failed(lambda plan: True)
    assert quantize_kernels(), "nothing was compiled"
    assert bool(same_bits(got.dequantized, want.dequantized).all())
    assert torch.equal(got.codes, want.codes)


@pytest.mark.parametrize("planted", [None, "inf", "nan"])
def test_a_split_plans_amax_is_the_plain_pass_unless_a_group_is_not_finite(
    monkeypatch: pytest.MonkeyPatch, planted: str | None
) -> None:
    """On the CPU the first piece of a split plan (NVFP4) takes the plain max |x| and runs the
    finite-only amax only where a group's maximum is NaN or inf (a NaN or inf in it): the
    same bits, codes and scales as the reference twin either way, and one pass over x, not
    two, for a finite tensor."""
    ran: list[str] = []
    real_fused = kernels.fused

    def recording(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        ran.append(kwargs.get("name", fn.__name__))
        return real_fused(fn, *args, **kwargs)

    monkeypatch.setattr(kernels, "fused", recording)
    x = torch.randn(6, 96, generator=torch.Generator().manual_seed(1)) * 3
    if planted is not None:
        x[2, 17] = math.inf if planted == "inf" else math.nan
        x[4, 40] = -math.inf if planted == "inf" else 1.0
    fmt = qbench.get_format("nvfp4")
    spec = spec_from_arguments("nvfp4")
    got = fmt.quantize(x, spec, return_codes=True, path="compiled")
    want = fmt.quantize(x, spec, return_codes=True, path="reference")
    assert bool(same_bits(got.dequantized, want.dequantized).all())
    assert torch.equal(got.codes, want.codes)
    assert bool(same_bits(got.scales, want.scales).all())
    amax_kernels = [name for name in ran if name.endswith("amax_kernel")]
    if planted is None:
        assert amax_kernels == ["abs_amax_kernel"]
    else:
        assert amax_kernels == ["abs_amax_kernel", "amax_kernel"]


def test_a_split_plans_many_scales_run_on_torchs_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scales piece of a split plan runs on one thread for few scales, on torch's thread
    count from :data:`quantizer.SCALES_ONE_THREAD_BELOW` of them (NVFP4's blocks of 16 make
    a million of them for a 4096x4096 tensor); the bits are the same."""
    seen = _recorded_compiles(monkeypatch)
    fmt, spec = qbench.get_format("nvfp4"), spec_from_arguments("nvfp4")
    x = torch.randn(4, 64)  # 16 blocks of 16
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        few = fmt.quantize(x, spec, path="compiled")
        monkeypatch.setattr(quantizer, "SCALES_ONE_THREAD_BELOW", 16)
        many = fmt.quantize(x, spec, path="compiled")
    finally:
        torch.set_num_threads(before)
    assert bool(same_bits(few, many).all())
    scales = [options for name, options in seen if name == "scales_kernel"]
    assert scales == [kernels.cpu_options(1), kernels.cpu_options(2)]


NARROW_CASES = [
    ("fp8_e4m3", {"mode": "chunk", "chunk_size": 20}),  # a short last block: unpadded eagerly
    ("fp8_e5m2", {"mode": "chunk", "chunk_size": 16, "overflow": "format"}),  # inf codes
    ("fp8_e4m3fnuz", {"mode": "channel"}),  # no -0: NaN is 0x80
    ("fp6_e2m3", {"mode": "tensor"}),
    ("fp4_e2m1", {"mode": "chunk", "chunk_size": 32, "rounding": "stochastic"}),
    ("fp4_e3m0", {"mode": "channel"}),
    ("nvfp4", {}),
    ("mxfp8_e4m3", {}),
]
#: Compiled too (each a kernel of its own to compile cold in CI): one per kind of codes and
#: kernel shape (uint8, int8 with noise, NVFP4's three pieces). The cast to the byte is the
#: same op in every compiled kernel; eagerly and by reference every case runs.
NARROW_COMPILED = {"fp8_e4m3", "fp4_e2m1", "nvfp4"}


@pytest.mark.parametrize(
    ("name", "scaling", "path"),
    [
        (name, scaling, path)
        for name, scaling in NARROW_CASES
        for path in ("compiled", "eager", "reference")
        if path != "compiled" or name in NARROW_COMPILED
    ],
)
def test_narrow_codes_are_the_int32_codes_a_byte_each(
    monkeypatch: pytest.MonkeyPatch, name: str, scaling: dict, path: str
) -> None:
    """``narrow_codes`` (what the audit's quantizer asks for) gives codes a byte each (uint8,
    or int8 for a format without NaN, whose NaN input's code is -1) equal to the int32 ones
    on every path: compiled (written so by the kernel), eager in slices (each
    slice's codes straight into the uint8 buffer: float8 cast or bit encoding), reference;
    the same values, scales and channels-last strides. Without it the codes stay int32."""
    monkeypatch.setattr(quantizer, "EAGER_SLICE", 96)  # several slices even here
    fmt = qbench.get_format(name)
    spec = spec_from_arguments(name, **scaling)
    x = torch.cat([awkward_tensor(5), awkward_tensor(6)]).reshape(2, 4, 3, 48)
    x = x.contiguous(memory_format=torch.channels_last)
    seed = torch.Generator().manual_seed
    wide = fmt.quantize(x, spec, return_codes=True, path=path, generator=seed(3))
    narrow = fmt.quantize(
        x, spec, return_codes=True, path=path, narrow_codes=True, generator=seed(3)
    )
    element = getattr(fmt, "element_format", fmt)
    byte = torch.uint8 if element.has_nan else torch.int8  # without NaN, a NaN's code is -1
    assert wide.codes.dtype == torch.int32 and narrow.codes.dtype == byte
    assert torch.equal(narrow.codes.to(torch.int32), wide.codes)
    assert int(wide.codes.max()) >= 1 << (element.bits - 1)  # negative values: the sign bit
    assert int(wide.codes.min()) == (0 if element.has_nan else -1)  # the NaN planted
    assert bool(same_bits(narrow.dequantized, wide.dequantized).all())
    assert bool(same_bits(narrow.scales, wide.scales).all())
    assert narrow.codes.stride() == wide.codes.stride()
    # without codes the keyword changes nothing: the same values from the same kernels
    fmt.quantize(x, spec, path=path, generator=seed(3))
    compiled = set(quantize_kernels())
    alone = fmt.quantize(x, spec, path=path, narrow_codes=True, generator=seed(3))
    assert bool(same_bits(alone, wide.dequantized).all())
    assert set(quantize_kernels()) == compiled


def test_narrow_codes_stay_int32_where_a_byte_would_not_hold_them() -> None:
    """int8 (codes not encoded from float bit fields: their range is not known to the
    quantizer) and a 9-bit float keep int32 codes when asked for narrow ones; an empty
    tensor's codes take the asked dtype too."""
    from qbench_formats.families import FloatFormat

    x = awkward_tensor(7)
    nine_bits = FloatFormat("fp9_e4m4", exponent_bits=4, mantissa_bits=4, bias=7)
    for fmt, name in [(qbench.get_format("int8"), "int8"), (nine_bits, "fp8_e4m3")]:
        spec = spec_from_arguments(name, mode="channel")  # fp9: only the scaling is read
        got = fmt.quantize(x, spec, return_codes=True, narrow_codes=True)
        assert got.codes.dtype == torch.int32, fmt.name
        assert torch.equal(got.codes, fmt.quantize(x, spec, return_codes=True).codes)
        assert int(got.codes.max()) > 255 or fmt.name == "int8"
    spec = spec_from_arguments("fp8_e4m3", mode="channel")
    empty = qbench.get_format("fp8_e4m3").quantize(
        torch.zeros(0, 4), spec, return_codes=True, narrow_codes=True
    )
    assert empty.codes.dtype == torch.uint8 and empty.codes.shape == (0, 4)
