"""Fused tensor kernels for plugins: torch.compile for large tensors, plain eager for small ones.

A metric that reads every activation of every batch (the layer-wise error, the compliance
audit) costs one eager pass, one temporary, per torch op. Written as one Python function of
elementwise ops and reductions, inductor turns it into a single loop over the data. This
module compiles such a function once per (function, constants) and chooses per call (numbers
the kernel reads at run time, such as a format's, are no part of that key: :func:`fused`):

* at least :data:`COMPILE_MIN_NUMEL` elements: the compiled kernel (``dynamic=True``, so one
  kernel serves every shape; no recompile per layer);
* fewer, or ``QBENCH_COMPILE=0``, or compile unavailable (no C++ compiler): the same
  function, or a cheaper eager twin, run eagerly. A compile failure is warned about once
  and the eager path is used from then on.

This module is the one home of that decision, of the compiled kernels and of the fall-back:
every kernel QBench compiles goes through :func:`fused` (qbench-formats' quantize kernels,
each piece of a split one, and its code encoder included), and :data:`COMPILE_ENABLED` and
:data:`COMPILE_MIN_NUMEL` are read at every call, so setting them here reaches every kernel.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any

#: Below this many elements a kernel runs eagerly: a compiled call's guards and dispatch cost
#: tens of microseconds, and the one-off compile (seconds per kernel) only pays off where
#: eager costs real time. Environment: QBENCH_COMPILE_MIN_NUMEL.
COMPILE_MIN_NUMEL = int(os.environ.get("QBENCH_COMPILE_MIN_NUMEL", 1 << 18))
#: QBENCH_COMPILE=0 turns torch.compile off everywhere in QBench.
COMPILE_ENABLED = os.environ.get("QBENCH_COMPILE", "1") not in ("0", "false", "no")
#: A run of fewer batches than this keeps every kernel eager: tracing and compiling the
#: kernels of one run costs tens of seconds in a fresh process (less with a warm disk cache,
#: never nothing), while a batch saves a fraction of a second with them, so a 20-image look
#: is fastest eager. Kernels this process compiled already are used whatever the count.
#: Environment: QBENCH_COMPILE_MIN_BATCHES. Outside a run (``qbench.quantize``, a twin called
#: directly) nothing is expected and :data:`COMPILE_MIN_NUMEL` alone decides.
COMPILE_MIN_BATCHES = int(os.environ.get("QBENCH_COMPILE_MIN_BATCHES", 32))
#: The batches the current run expects (:func:`expecting`); None outside a run.
EXPECTED_BATCHES: int | None = None
#: Where compiled kernels are kept between processes (inductor's FX graph and AOT caches),
#: one folder per torch version: QBENCH_CACHE_DIR, else ``~/.cache/qbench``. A user's own
#: TORCHINDUCTOR_CACHE_DIR wins.
CACHE_ENV = "QBENCH_CACHE_DIR"
PATHS = ("auto", "compiled", "eager")
#: Inductor options that keep a long elementwise chain inside the reduction that consumes it.
#: By default inductor stores ("realizes") an intermediate of more than 30 ops, or one read
#: more than 4 times, to a buffer of its own: a full-size write and read-back in a loop of its
#: own, which for a decode-and-count kernel more than doubles its time.
ONE_LOOP: Mapping[str, Any] = {
    "realize_opcount_threshold": 1 << 16,
    "realize_reads_threshold": 1 << 16,
}

#: QBENCH_RUNTIME_NUMBERS=0 bakes a kernel's ``numbers`` (:func:`fused`) into it as
#: constants, one compiled kernel per distinct value, as before they were read at run time:
#: the baseline ``benchmarks/format_kernels.py`` measures against. Read at every call.
RUNTIME_NUMBERS = os.environ.get("QBENCH_RUNTIME_NUMBERS", "1") not in ("0", "false", "no")

#: Inductor's ``cpp.min_chunk_size`` for QBench's CPU kernels. Inductor decides whether a
#: loop runs on the threads (``omp parallel``) from the sizes of the call that compiles the
#: kernel: under 512 elements a thread (its default), one thread. A kernel compiled with
#: ``dynamic=True`` then serves every later shape, in this process and, through inductor's
#: on-disk cache (which keys on the graph, not on those sizes), in every later one: a test or
#: a look at a small tensor on ``path="compiled"`` left later 4096x4096 calls of the same
#: kernel on one core (fp8_e4m3 chunk 32 and channel 2.3-2.5x ``clone()`` against 1.2-1.3,
#: the NVFP4 elements kernel 50 ms against 29 on a 2-core x86 VM; benchmarks/README.md).
#: With 1, a loop runs on the threads unless its first call had fewer elements than
#: threads; kernels first compiled on large tensors come out as before.
PARALLEL_FROM_FIRST_CALL = 1

_COMPILED: dict[tuple[Any, ...], Callable[..., Any]] = {}
_FAILED: set[tuple[Any, ...]] = set()
_CPP_OPTIONS: frozenset[str] | None = None  # which of cpu_options' names inductor has


def cpu_options(threads: int | None = None) -> dict[str, Any]:
    """The inductor options of every CPU kernel QBench compiles: ``{"cpp.threads": N}`` with N
    ``threads`` or torch's intra-op thread count now, plus the compiler of
    :func:`wide_vector_compiler` where there is one (empty where inductor has no such options).

    Inductor bakes the thread count into a CPU kernel (``omp parallel num_threads(N)``) but
    leaves it out of its on-disk cache key, so a process allowed fewer threads (a shared
    machine, ``torch.set_num_threads(1)``) would load kernels compiled by an earlier process
    for more and run them on more cores than it allowed. Named in the options, the count is
    part of both that cache's key and this module's, and a changed count compiles anew.

    ``cpp.min_chunk_size`` 1 (see :data:`PARALLEL_FROM_FIRST_CALL`): a kernel's loops run on
    the threads whatever the size of the call that compiled it.
    """
    global _CPP_OPTIONS
    import torch

    if _CPP_OPTIONS is None:
        from torch._inductor import config as inductor_config

        known = inductor_config.get_config_copy()
        _CPP_OPTIONS = frozenset(n for n in ("cpp.threads", "cpp.min_chunk_size") if n in known)
    if "cpp.threads" not in _CPP_OPTIONS:
        return {}
    options: dict[str, Any] = {
        "cpp.threads": torch.get_num_threads() if threads is None else threads
    }
    if "cpp.min_chunk_size" in _CPP_OPTIONS:
        options["cpp.min_chunk_size"] = PARALLEL_FROM_FIRST_CALL
    compiler = wide_vector_compiler()
    if compiler is not None:
        options["cpp.cxx"] = (compiler,)
    return options


#: QBENCH_WIDE_VECTORS=0 compiles QBench's CPU kernels with inductor's compiler as it is,
#: flags and all (see :func:`wide_vector_compiler`).
WIDE_VECTORS = os.environ.get("QBENCH_WIDE_VECTORS", "1") not in ("0", "false", "no")
#: The flag :func:`wide_vector_compiler` adds (gcc and clang both take it).
PREFER_512 = "-mprefer-vector-width=512"
_WIDE_COMPILER: list[str | None] = []


def wide_vector_compiler() -> str | None:
    """The C++ compiler QBench's CPU kernels are built with where inductor writes 512-bit
    vector code (x86 with AVX-512, Linux, gcc or clang): a two-line script in QBench's cache
    folder that runs inductor's own compiler with ``-mprefer-vector-width=512`` added. None
    elsewhere (inductor's compiler as it is). Decided once per process.

    Why: inductor (torch 2.9) writes a vector ``bit_cast`` as a loop over the 16 lanes
    through a stack array, trusting the compiler to merge that loop into single vector
    moves. With ``-march=native`` on a CPU whose tuning prefers 256-bit
    vectors (Intel's AVX-512 server parts, for gcc), the compiler merges it into two 256-bit
    halves, and the 512-bit load that follows their two stores misses store forwarding: a
    stall on every bit cast. QBench's kernels are float32 bit arithmetic, bit casts all
    through. Measured on a 2-core Sapphire Rapids VM, one thread, 2^20 floats: eight chained
    bit-cast round trips 22.4 -> 1.2 ms with the flag, eight integer-compare selects (each
    with its bit cast) 18.0 -> 4.1 ms (``benchmarks/bit_casts.py``); the fp8 chunk-128 fake
    quant of a 4096x4096 tensor 3.3 -> 1.3x a clone (benchmarks/README.md). Compiling for 256-bit vectors instead is no way out: on that
    machine (``cpp.simdlen=256``) inductor's AVX2 code chose the wrong side of an integer
    ``where``, found by the bit-exactness tests."""
    if not _WIDE_COMPILER:
        _persist_compiled()  # inductor's ISA probes build in its cache folder, fixed at first use
        probe_vec_isas()
        _WIDE_COMPILER.append(_write_wide_compiler() if WIDE_VECTORS else None)
    return _WIDE_COMPILER[0]


#: The checks :func:`probe_vec_isas` ran for real in this process (for tests: a second
#: process should run none).
ISA_CHECKS_RUN: list[str] = []


def probe_vec_isas() -> None:
    """Let inductor pick its vector ISA with the build checks of earlier processes remembered.

    Before its first CPU kernel in a process, inductor (torch 2.9) checks every vector ISA the
    CPU claims by compiling a probe program and then loading it in a new Python process that
    imports torch: on an AVX-512 + AMX server, six such checks (AVX-512 and AMX each with their
    bf16/fp16 extensions, AVX2), 8-20 s of every process's first compile on a 2-core VM (an
    import of torch each). The answers depend only on the machine, the compiler and torch,
    so QBench remembers the checks that passed in its cache folder, keyed by torch's version,
    the Python, the compiler (path, size and time) and the CPU's flags, and answers them from
    there. Inductor's own logic (which ISAs to check, the flags a passed check turns on) runs
    unchanged; a failed check is not remembered (it runs again, in case it failed by chance).
    Called once per process, before QBench's first compile; does nothing where the probe
    cannot run (no inductor, no compiler: compiling fails later anyway, and falls back)."""
    import hashlib
    import json

    try:
        from torch._inductor import cpu_vec_isa

        original = cpu_vec_isa.VecISA.check_build
        memo = cache_dir() / "isa" / f"checks-{_isa_machine_key()}.json"
    except Exception:
        return
    try:
        passed: set[str] = set(json.loads(memo.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        passed = set()
    learned: set[str] = set()

    def remembered(isa: Any, code: str) -> bool:
        key = hashlib.sha256(
            f"{type(isa).__name__}\0{isa._arch_flags}\0{code}".encode()
        ).hexdigest()
        if key in passed:
            return True
        ISA_CHECKS_RUN.append(str(isa))
        ok = bool(original(isa, code))
        if ok:
            learned.add(key)
        return ok

    cpu_vec_isa.VecISA.check_build = remembered
    try:
        cpu_vec_isa.pick_vec_isa()  # inductor caches the ISAs found for the process
    except Exception:
        return
    finally:
        cpu_vec_isa.VecISA.check_build = original
    if learned - passed:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            partial = memo.with_name(f"{memo.name}.{os.getpid()}")
            partial.write_text(json.dumps(sorted(passed | learned)), encoding="utf-8")
            os.replace(partial, memo)
        except OSError:  # a read-only cache folder: the checks run again next time
            pass


def _isa_machine_key() -> str:
    """What an ISA check's answer depends on besides its code: torch, the Python that loads
    the probe, the compiler that builds it, and the CPU (its flags)."""
    import hashlib
    import platform
    import shutil
    import sys

    import torch
    from torch._inductor import cpp_builder

    compiler = shutil.which(cpp_builder.get_cpp_compiler()) or ""
    identity = [torch.__version__, sys.executable, platform.machine(), compiler]
    if compiler:
        stat = os.stat(os.path.realpath(compiler))
        identity += [os.path.realpath(compiler), str(stat.st_size), str(stat.st_mtime_ns)]
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            identity += [line for line in cpuinfo if line.startswith(("flags", "Features"))][:1]
    except OSError:
        identity.append(platform.processor())
    return hashlib.sha256("\n".join(identity).encode()).hexdigest()[:20]


def _write_wide_compiler() -> str | None:
    """Write (or find, unchanged) :func:`wide_vector_compiler`'s script and return its path;
    None where it does not apply or cannot run."""
    import shlex
    import shutil
    import subprocess
    import sys

    if sys.platform != "linux":
        return None
    try:
        from torch._inductor import cpp_builder, cpu_vec_isa

        if cpu_vec_isa.pick_vec_isa().bit_width() != 512:
            return None
        real = shutil.which(cpp_builder.get_cpp_compiler())
    except Exception:  # no C++ compiler: compiling fails anyway, and falls back to eager
        return None
    if real is None:
        return None
    name = os.path.basename(real)
    # inductor picks its flags by the compiler's path: the script's must say the same
    clang = "clang" in name
    if not clang and not re.search(r"(gcc|g\+\+)", name):
        return None
    script = cache_dir() / "cxx" / f"qbench-wide-{name}"
    # inductor splits its command line like a shell (unquoted), and picks flags by the path
    if ("clang" in str(script)) != clang or re.search(r"[\s'\"\\]", str(script)):
        return None
    text = (
        "#!/bin/sh\n"
        f"# qbench.kernels.wide_vector_compiler: {name} preferring 512-bit vectors\n"
        f'exec {shlex.quote(real)} {PREFER_512} "$@"\n'
    )
    try:
        if not script.is_file() or script.read_text(encoding="utf-8") != text:
            script.parent.mkdir(parents=True, exist_ok=True)
            partial = script.with_name(f"{script.name}.{os.getpid()}")
            partial.write_text(text, encoding="utf-8")
            partial.chmod(0o755)
            os.replace(partial, script)
        subprocess.run([str(script), "--version"], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):  # a read-only home, a noexec mount
        return None
    return str(script)


def _compiled(
    fn: Callable[..., Any],
    constants: tuple[Hashable, ...],
    options: tuple[Any, ...] = (),
    name: str = "fused_kernel",
    kinds: str | None = None,
    baked: tuple[Any, ...] | None = None,
) -> Callable[..., Any]:
    key = (fn, constants, options, kinds) if baked is None else (fn, constants, options, *baked[:2])
    kernel = _COMPILED.get(key)
    if kernel is None:
        import torch

        if not name.isidentifier():
            raise ValueError(f"kernel name {name!r} is not a Python identifier")
        # Dynamo keys its cache (and its recompile limit) on the code object: a fresh one per
        # (function, constants) keeps kernels from evicting each other. The real filename
        # matters, dynamo shares functions it cannot find a file for.
        namespace: dict[str, Any] = {"FN": fn, "CONSTANTS": constants, "KINDS": kinds}
        if kinds is None:
            source = f"def {name}(*tensors):\n    return FN(*tensors, *CONSTANTS)\n"
        elif baked is not None:  # (kinds, words, numbers): the numbers as constants
            namespace["NUMBERS"] = baked[-1]
            source = (
                f"def {name}(*tensors):\n    return FN(*tensors, *CONSTANTS, numbers=NUMBERS)\n"
            )
        elif not kinds:
            source = f"def {name}(*tensors):\n    return FN(*tensors, *CONSTANTS, numbers=())\n"
        else:  # the last len(kinds) arguments are the numbers' words (:func:`_unpacked`)
            namespace["UNPACK"], namespace["COUNT"] = _unpacked, len(kinds)
            source = (
                f"def {name}(*args):\n"
                "    numbers = UNPACK(args[-COUNT:], KINDS, args[0].device)\n"
                "    return FN(*args[:-COUNT], *CONSTANTS, numbers=numbers)\n"
            )
        own = frozenset(namespace)
        exec(compile(source, __file__, "exec"), namespace)
        _persist_compiled()
        compile_options = dict(options)
        if hasattr(torch.compiler, "skip_guard_on_globals_unsafe"):  # guard_filter_fn exists
            compile_options["guard_filter_fn"] = functools.partial(_kernel_guards, own)
        kernel = torch.compile(namespace[name], dynamic=True, options=compile_options or None)
        _COMPILED[key] = kernel
    return kernel


#: Globals a kernel's trace reads that nothing changes at run time, as dynamo names what
#: it reaches from a frame's globals: the modules (and their submodules) of the standard
#: library's ``dataclasses`` (``dataclasses.replace`` of a frozen plan walks its fields: a
#: sixth of a quantize kernel's guards) and of torch, and the builtins.
_STATIC_MODULES = ("__import_dataclasses", "__import_torch")
_BUILTINS = "__builtins_dict__"
#: The global a guard's name starts from: ``G['CONSTANTS'][0].encoding`` -> CONSTANTS.
_GLOBAL_ROOT = re.compile(r"G\['([^']+)'\]")


def _static_global(root: str) -> bool:
    """Whether a guard on the global ``root`` checks something that never changes."""
    return root.startswith(_BUILTINS) or any(
        root == module or root.startswith(f"{module}_dot_") for module in _STATIC_MODULES
    )


def _kernel_guards(own: frozenset[str], entries: list[Any]) -> list[bool]:
    """Which of dynamo's guards a compiled kernel keeps (``guard_filter_fn``): all but those
    on the kernel's own globals (``own``: its function, constants and number kinds, fixed
    for the kernel as its key says) and on :data:`_STATIC_MODULES` and the builtins.

    Dynamo re-checks, on every call, every attribute its trace read of anything reachable
    from a frame's globals. A quantize kernel's plan is a frozen dataclass of frozen
    dataclasses, rebuilt around the run-time numbers with ``dataclasses.replace``: 335-450
    guards a kernel, 260-370 of them on the plan, on ``dataclasses``, torch and the
    builtins. Guards on the tensors, the shapes, grad mode, the function-mode stack and
    qbench's and plugins' module globals (a function replaced by a test) stay. Measured on
    a 2-core x86 VM, tiny tensors, A/B in one process: a quantize call's host cost 12-22%
    lower (``benchmarks/call_overhead.py``, benchmarks/README.md)."""
    keep = []
    for entry in entries:
        root = _GLOBAL_ROOT.search(entry.name) if entry.is_global else None
        keep.append(root is None or not (root[1] in own or _static_global(root[1])))
    return keep


def _kinds(numbers: tuple[int | float, ...]) -> str:
    """One letter a number, "i" (int, bool) or "f" (float): part of a kernel's key."""
    kinds = []
    for number in numbers:
        if isinstance(number, float):
            kinds.append("f")
        elif isinstance(number, int):
            kinds.append("i")
        else:
            raise TypeError(f"a kernel's numbers are ints and floats, found {number!r}")
    return "".join(kinds)


_INT32 = (-(1 << 31), (1 << 31) - 1)


def _words(numbers: tuple[int | float, ...], kinds: str) -> tuple[int, ...]:
    """``numbers`` as int32 words: each int as it is, each float as its float32 bit pattern
    (so -0.0 and 0.0 differ, as tuple keys of the numbers themselves would not). Raises
    ValueError for an int beyond int32 or a float that float32 does not hold exactly: the
    eager path computes with the number itself, so the compiled one must see the same
    value."""
    import struct

    words = []
    for number, kind in zip(numbers, kinds):
        if kind == "i":
            if not _INT32[0] <= number <= _INT32[1]:
                raise ValueError(f"a kernel's int number {number} is beyond int32")
            words.append(int(number))
            continue
        try:
            (word,) = struct.unpack("<i", struct.pack("<f", number))
        except OverflowError:  # beyond float32's range: not exact either
            word = 0
        (back,) = struct.unpack("<f", struct.pack("<i", word))
        if back != number and number == number:  # NaN keeps its quiet pattern
            raise ValueError(f"a kernel's float number {number!r} is not exact in float32")
        words.append(word)
    return tuple(words)


#: :func:`_kinds_and_words` of the numbers tuples seen last, by identity: a caller that builds
#: its numbers once (``qbench_formats.quantizer.compiled_kernel``) passes the same tuple on
#: every call, whose 17 words took 8 us to pack again each time.
_WORDS: dict[int, tuple[tuple[Any, ...], str, tuple[int, ...]]] = {}
_WORDS_MAX = 256


def _kinds_and_words(numbers: tuple[int | float, ...]) -> tuple[str, tuple[int, ...]]:
    """(:func:`_kinds`, :func:`_words`) of ``numbers``, kept for the very same tuple."""
    hit = _WORDS.get(id(numbers))
    if hit is not None and hit[0] is numbers:
        return hit[1], hit[2]
    kinds = _kinds(numbers)
    words = _words(numbers, kinds)
    if len(_WORDS) >= _WORDS_MAX:
        _WORDS.clear()
    _WORDS[id(numbers)] = (numbers, kinds, words)
    return kinds, words


def _unpacked(words: tuple[Any, ...], kinds: str, device: Any) -> tuple[Any, ...]:
    """Inside a compiled kernel: the numbers' words (:func:`_words`, passed as Python ints)
    as 0-dim int32 tensors, float32 ones (the word's bits) for the floats, on the first
    tensor's ``device`` (a CPU scalar in a CUDA graph would be a kernel and a copy of its own).

    Passed as ints, not as a tensor of numbers: dynamo (``dynamic=True``) makes them
    symbolic, and inductor hands them to the C++ kernel as scalar parameters, loop-invariant
    for the compiler, where a tensor's numbers are loaded, converted and broadcast in every
    vector iteration (the audit's count: about 10% more time; benchmarks/README.md). Dynamo
    keeps every value symbolic, a first call's 0 or 1 and equal values included: one graph
    for all (tested)."""
    import torch

    numbers = []
    for word, kind in zip(words, kinds):
        number = torch.full((), word, dtype=torch.int32, device=device)
        numbers.append(number if kind == "i" else number.view(torch.float32))
    return tuple(numbers)


def memory_order(tensor: Any) -> tuple[int, ...] | None:
    """The permutation of ``tensor``'s dimensions, largest stride first, under which it is
    contiguous, where that is not its own order (a channels-last activation: (0, 2, 3, 1));
    None if it is contiguous already or has no such order (gaps, overlaps, broadcasts).

    A kernel that does not care about the order of elements (sums, counts, extrema) reads a
    permuted tensor in one linear sweep; read in logical order, a channels-last tensor is a
    gather with a stride of C elements that inductor cannot vectorize, and ``reshape(-1)``
    of it is a copy."""
    if tensor.dim() < 2 or tensor.is_contiguous():
        return None
    # a stable sort: dimensions of equal stride (size 1) keep their logical order
    order = tuple(sorted(range(tensor.dim()), key=lambda d: -tensor.stride(d)))
    return order if tensor.permute(order).is_contiguous() else None


def in_memory_order(*tensors: Any) -> tuple[Any, ...]:
    """``tensors`` permuted by the first one's :func:`memory_order` (unchanged if it has
    none): the first becomes contiguous, and so does every other of the same layout. A tensor
    of lower rank that broadcasts against the first (a tensor-mode scale, a 0-dim tensor) is
    first expanded to its shape, a view with zero strides: permuting it alone would fail."""
    order = memory_order(tensors[0])
    if order is None:
        return tensors
    shape = tensors[0].shape
    return tuple((t if t.dim() == len(shape) else t.expand(shape)).permute(order) for t in tensors)


def int_range(tensor: Any) -> tuple[int, int]:
    """(smallest, largest) of a non-empty integer tensor, read on the host.

    ``amin`` then ``amax``, not ``aminmax``: ATen's integer ``aminmax`` is not vectorized
    (measured on a 2-core x86 VM, 3.2 M int32 codes: 5.5 ms against 0.8 ms for the two)."""
    return int(tensor.amin()), int(tensor.amax())


@contextlib.contextmanager
def without_function_modes() -> Iterator[None]:
    """Torch function modes off for the block, back on after.

    QBench's call interceptor (``qbench_ops.calls``) keeps a ``TorchFunctionMode`` on the
    stack while a twin's forward runs, to quantize the model's own functional calls. Kernels,
    quantizers and metrics compute nothing it should see (a metric's matmul is not the
    model's), and dynamo would trace into the mode's handler, guard on it and recompile.
    Costs one C call when no mode is active."""
    import torch

    if not torch._C._len_torch_function_stack():
        yield
        return
    modes = []
    while torch._C._len_torch_function_stack():
        modes.append(torch._C._pop_torch_function_stack())
    try:
        yield
    finally:
        for mode in reversed(modes):
            torch._C._push_on_torch_function_stack(mode)


def stays_eager(batches: int | None) -> bool:
    """Whether a run of ``batches`` batches keeps the kernels it has not compiled yet eager
    (:func:`expecting`), or compiling is off: nothing new compiles in it."""
    return not COMPILE_ENABLED or (batches is not None and batches < COMPILE_MIN_BATCHES)


def use_compiled(numel: int, path: str = "auto", key: Any = None) -> bool:
    """Would a kernel over ``numel`` elements run compiled on ``path``? (``key``: the
    kernel's, when it may already be compiled in this process.)"""
    decision = _decide(numel, path)
    return decision if decision is not None else key is not None and key in _COMPILED


def _decide(numel: int, path: str) -> bool | None:
    """Compiled or not, or None: only if this process compiled the kernel already (a run
    expecting fewer than :data:`COMPILE_MIN_BATCHES` batches)."""
    if path not in PATHS:
        raise ValueError(f"path {path!r} is not one of {', '.join(PATHS)}")
    if not COMPILE_ENABLED or path == "eager":
        return False
    if path == "compiled":
        return True
    if numel < COMPILE_MIN_NUMEL:
        return False
    if stays_eager(EXPECTED_BATCHES):
        return None
    return True


@contextlib.contextmanager
def expecting(batches: int | None) -> Iterator[None]:
    """For the block (a run), ``batches`` batches are expected: fewer than
    :data:`COMPILE_MIN_BATCHES` keep kernels not yet compiled in this process eager."""
    global EXPECTED_BATCHES
    before, EXPECTED_BATCHES = EXPECTED_BATCHES, batches
    try:
        yield
    finally:
        EXPECTED_BATCHES = before


def cache_dir() -> Path:
    """QBench's cache folder (``$QBENCH_CACHE_DIR`` or ``~/.cache/qbench``)."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "qbench"


def _persist_compiled() -> None:
    """Point inductor's on-disk caches (FX graphs, AOT autograd; on by default in torch)
    at QBench's cache folder, per torch version, unless the user chose a folder: a second
    process loads the kernels a first one compiled instead of compiling them again (tracing
    still runs per process)."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    import torch

    folder = cache_dir() / "inductor" / f"torch-{torch.__version__}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: inductor's default temporary folder serves
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


def fused(
    fn: Callable[..., Any],
    tensors: tuple[Any, ...],
    constants: tuple[Hashable, ...] = (),
    *,
    eager: Callable[..., Any] | None = None,
    numbers: tuple[int | float, ...] | None = None,
    numel: int | None = None,
    path: str = "auto",
    options: Mapping[str, Any] | None = None,
    name: str = "fused_kernel",
) -> Any:
    """``fn(*tensors, *constants)``, compiled or eager (see the module docstring).

    ``eager`` is an alternative for the eager path taking the same arguments (e.g. one BLAS
    call instead of four reductions); it must compute the same result. ``numel`` defaults to
    the first tensor's element count. ``options`` are inductor options for the compiled
    kernel (e.g. :data:`ONE_LOOP`), on top of :func:`cpu_options`. ``name`` names the
    compiled function (what dynamo's logs and a profiler show).

    ``numbers`` (ints and floats) are values the kernel reads at run time instead of having
    them baked in: ``fn`` gets them as the keyword argument ``numbers``, a tuple. Eager, they
    are the numbers themselves; compiled, 0-dim tensors (int32 for an int, float32 for a
    float) built from scalar arguments of the kernel (:func:`_unpacked`), so one kernel serves
    every value: a format's parameters, where the kernel would otherwise be compiled once
    per format. Each int must fit int32 and each float be exact in float32 (ValueError), so
    both paths compute with the same values; ``fn`` must compute the same bits from either.

    The compiled kernel is built once per (``fn``, ``constants``, options, the kinds of the
    numbers) and reused for every shape; where building or running it fails, a warning names
    ``fn`` once and this call and every later one with that key run eagerly. A "tensor" may
    be None (an optional argument), and ``constants`` must be hashable and must not change
    afterwards: the compiled kernel does not re-check ``fn`` or what it reaches through
    ``constants`` on each call, as their key already names them (:func:`_kernel_guards`).
    """
    extra = {} if numbers is None else {"numbers": numbers}
    with without_function_modes():  # a kernel's math is never the model's call to intercept
        decision = _decide(tensors[0].numel() if numel is None else numel, path)
        if decision is False or (decision is None and not _COMPILED):
            return (eager or fn)(*tensors, *constants, **extra)
        frozen = tuple(sorted({**cpu_options(), **(options or {})}.items()))
        kinds = words = baked = None
        if numbers is not None:
            kinds, words = _kinds_and_words(numbers)
            if not RUNTIME_NUMBERS:
                baked = (kinds, words, numbers)
        # baked: keyed on the words (NaN != NaN would make a key never found again)
        key = (
            (fn, constants, frozen, kinds) if baked is None else (fn, constants, frozen, *baked[:2])
        )
        if decision is None and key not in _COMPILED:
            return (eager or fn)(*tensors, *constants, **extra)
        passed = () if words is None or baked is not None else words
        return _compiled_or_eager(
            fn, tensors, constants, eager, frozen, key, name, extra, kinds, baked, passed
        )


def _compiled_or_eager(
    fn: Callable[..., Any],
    tensors: tuple[Any, ...],
    constants: tuple[Hashable, ...],
    eager: Callable[..., Any] | None,
    frozen: tuple[Any, ...],
    key: tuple[Any, ...],
    name: str | None,
    extra: dict[str, Any],
    kinds: str | None,
    baked: tuple[Any, ...] | None,
    passed: tuple[int, ...],
) -> Any:
    if key not in _FAILED:
        try:
            return _compiled(fn, constants, frozen, name, kinds, baked)(*tensors, *passed)
        except Exception as exc:  # no C++ compiler, unsupported op: the eager twin is exact
            _FAILED.add(key)
            # inductor's errors start "backend='inductor' raised:", the cause on the next line
            reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            warnings.warn(
                f"qbench: torch.compile of {getattr(fn, '__qualname__', fn)} failed "
                f"({type(exc).__name__}: {reason[:300]}); using the eager path",
                RuntimeWarning,
                stacklevel=4,
            )
    return (eager or fn)(*tensors, *constants, **extra)
