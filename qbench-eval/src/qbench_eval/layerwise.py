"""The ``layerwise`` metric: how far each quantized layer's output is from its FP32 twin.

Forward hooks on the same module names in both models (``qbench.prepare`` keeps names)
capture each layer's output; the two outputs of one call are compared as soon as both exist
and then dropped, so memory holds at most one batch's outputs and the totals are running
float64 sums on the model's device (no host sync per layer).

Each layer's error is measured *inside the full quantized model*: its input already carries
the error of the layers before it, which is what a user of the quantized model experiences.

Memory: an FP32 output is held, by reference, until the twin's arrives, and let go once the
pair is measured. A run of one config runs the two forwards in lockstep (``qbench.lockstep``),
so that is a layer or so of outputs; otherwise (a sweep's group, a long run) the FP32 forward
runs first and its outputs of the batch are all held. An output that a later op changes in
place (``ReLU(inplace=True)``, ``out += identity``) before its pair is measured must be held
as a copy instead; which ones are is learned on the first call of each layer without copying
the others: while the FP32 model's forward runs, :class:`_CopyOnWrite` copies a held output
just before an op writes into its storage. Copying every output of the first batch to find
out would double what the first batch holds.
"""

from __future__ import annotations

import fnmatch
import math
from collections import deque
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from qbench.config import check_options
from qbench.errors import QBenchError
from qbench.kernels import ONE_LOOP, fused, in_memory_order, use_compiled, without_function_modes
from qbench.types import BatchOutputs
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from ._identity import Seen

#: Copy buffers a layer keeps for reuse: one per call of the layer in a forward (a module
#: called twice, like torchvision's shared ReLU in a residual block, needs two).
_MAX_FREE_BUFFERS = 4

#: FP32 forwards during which first calls are watched (:meth:`LayerwiseMetric._learning`).
_WATCHED_BATCHES = 4

# Slots of the per-layer output accumulator (float64, on the output's device).
_SSE, _REF_SQ, _Q_SQ, _DOT, _NONFINITE_CALLS = range(5)

#: Calls whose sums and input statistics a layer keeps before adding them into its totals in
#: one stack and reduction: added one call at a time, they took about ten tiny ops a call
#: (on a GPU, ten kernel launches). 64 calls of a layer hold a few kilobytes.
_FOLD_CALLS = 64


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a module's output or input (tuples from e.g. MultiheadAttention)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def _pair_sums(reference: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """float64 [sum (q-r)^2, r.r, q.q, r.q] of two float outputs; one fused loop compiled."""
    r = reference.reshape(-1).to(torch.float64)
    q = quantized.reshape(-1).to(torch.float64)
    d = q - r
    return torch.stack([(d * d).sum(), (r * r).sum(), (q * q).sum(), (r * q).sum()])


def _pair_sums_eager(reference: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """:func:`_pair_sums` a slice of :data:`_EAGER_SLICE` elements at a time: each slice of
    ``r`` and ``q`` in float64 (``q - r`` is then exact, no cancellation), four BLAS dot
    products. Whole tensors at once would take 24 bytes per element of temporaries (600 MB
    for resnet's first convolution at batch 32); slices that stay in the cache also run 4x
    faster here than a Gram matrix of float64 rows 2^20 long (benchmarks/README.md)."""
    r, q = reference.reshape(-1), quantized.reshape(-1)
    n = r.numel()
    sums = torch.zeros(4, dtype=torch.float64, device=reference.device)
    for start in range(0, n, _EAGER_SLICE):
        r64 = r[start : start + _EAGER_SLICE].to(torch.float64)
        q64 = q[start : start + _EAGER_SLICE].to(torch.float64)
        d = q64 - r64
        sums += torch.stack([d.dot(d), r64.dot(r64), q64.dot(q64), r64.dot(q64)])
    return sums


#: Elements an eager pair sum reads at a time (:func:`_pair_sums_eager`): 2 MiB of float64
#: per operand, within a core's cache.
_EAGER_SLICE = 1 << 18
#: The same for the eager input statistics (:func:`_input_stats_eager`): their five ops over
#: 2^20 elements ran 25 % faster than over 2^18, 2.4x faster than over a whole activation.
_EAGER_STATS_SLICE = 1 << 20


#: Below this many elements the zeros are counted in int32 (exact: no count can reach it),
#: which AVX2 adds eight lanes at a time against int64's four: pair sums and statistics
#: 8-12% faster on resnet18's activations. The count is returned as int64 either way.
_NARROW_COUNT_BELOW = 1 << 31


def _narrow_count(x: torch.Tensor) -> bool:
    return x.numel() < _NARROW_COUNT_BELOW


def _input_stats(
    x: torch.Tensor, narrow_count: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(number of zeros (int64), max |x| (NaN if any), smallest non-zero |x| (+inf if
    none)); ``narrow_count`` counts in int32 first (see :data:`_NARROW_COUNT_BELOW`)."""
    magnitude = x.abs()
    is_zero = magnitude == 0
    zeros = is_zero.sum(dtype=torch.int32).to(torch.int64) if narrow_count else is_zero.sum()
    largest = magnitude.amax()
    smallest_nonzero = torch.where(magnitude > 0, magnitude, math.inf).amin()
    return zeros, largest, smallest_nonzero


def _pair_sums_and_stats(
    reference: torch.Tensor, quantized: torch.Tensor, narrow_count: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_pair_sums` and :func:`_input_stats` of ``quantized`` in one loop."""
    return (_pair_sums(reference, quantized), *_input_stats(quantized, narrow_count))


def _input_stats_slice(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_input_stats` of one eager slice in fewer passes on the CPU (where the host
    reads a value without a device sync): ``abs`` and its range first; with no zero and no
    NaN the smallest magnitude is the smallest non-zero one and nothing else is read. Else,
    for float32, on the magnitudes' bits (integers ordered like the values, NaN above inf):
    the zeros are the elements less the ``count_nonzero``, and ``bits - 1`` masked to 31
    bits turns a zero into the largest integer, so its minimum plus one is the smallest
    non-zero magnitude (a NaN is above every number: only a slice of NaN and zeros
    reaches it, and has no non-zero magnitude, +inf). Four passes and no temporary beyond
    ``abs``'s, where the general statistics take seven and three."""
    if x.device.type != "cpu":
        return _input_stats(x, True)
    magnitude = x.abs()
    smallest, largest = torch.aminmax(magnitude)  # NaN in both if any NaN
    if bool(smallest > 0):
        return torch.zeros((), dtype=torch.int64), largest, smallest
    if magnitude.dtype != torch.float32:
        return _input_stats(x, True)
    bits = magnitude.view(torch.int32)
    zeros = torch.tensor(bits.numel() - int(torch.count_nonzero(bits)), dtype=torch.int64)
    lowest = int(bits.sub_(1).bitwise_and_(0x7FFFFFFF).amin()) + 1
    if lowest > _F32_INF_BITS:  # no non-zero number
        lowest = _F32_INF_BITS
    return zeros, largest, torch.tensor(lowest, dtype=torch.int32).view(torch.float32)


#: The float32 bits of +inf.
_F32_INF_BITS = 0x7F800000


def _input_stats_eager(
    x: torch.Tensor, narrow_count: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_input_stats` a slice of :data:`_EAGER_STATS_SLICE` elements at a time (its
    temporaries take 9 bytes per element); counts, maxima and minima combine exactly."""
    flat = x.reshape(-1)
    n = flat.numel()
    step = _EAGER_STATS_SLICE
    if n <= step:
        return _input_stats_slice(flat)
    parts = [_input_stats_slice(flat[s : s + step]) for s in range(0, n, step)]
    zeros = torch.stack([p[0] for p in parts]).sum()
    largest = torch.stack([p[1] for p in parts]).amax()  # a NaN stays NaN
    smallest = torch.stack([p[2] for p in parts]).amin()
    return zeros, largest, smallest


def pair_sums(reference: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """:func:`_pair_sums`, compiled as one loop for large outputs, else eager. Both outputs
    are read in the reference's memory order (a channels-last pair in one linear sweep)."""
    return fused(
        _pair_sums,
        in_memory_order(reference, quantized),
        eager=_pair_sums_eager,
        options=ONE_LOOP,
    )


def pair_sums_and_stats(
    reference: torch.Tensor, quantized: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(:func:`pair_sums`, :func:`input_stats` of ``quantized``), compiled as one loop: the
    quantized output is usually the next layer's input, whose statistics then cost no pass
    of their own. Only used where the kernels run compiled (eager, it would be two passes
    anyway, and the statistics of an output no layer reads would be wasted work)."""
    sums, zeros, largest, smallest = fused(
        _pair_sums_and_stats,
        in_memory_order(reference, quantized),
        (_narrow_count(quantized),),
        options=ONE_LOOP,
    )
    return sums, (zeros, largest, smallest)


def input_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_input_stats`, compiled as one loop for large inputs, else eager."""
    return fused(
        _input_stats,
        in_memory_order(x),
        (_narrow_count(x),),
        eager=_input_stats_eager,
        options=ONE_LOOP,
    )


@dataclass
class _Kept:
    tensor: torch.Tensor | None  # None once measured (:meth:`_LayerStats.release`)
    version: int | None  # None: an inference tensor (no counter), always copied
    copy: torch.Tensor | None


def _storage_key(tensor: torch.Tensor) -> int | None:
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no storage to speak of (sparse, nested...)
        return None


_WRITTEN_ARGS: dict[Any, tuple[tuple[int, str], ...]] = {}


def _written(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
    """The tensors an aten op writes into (``self`` of ``relu_``, ``out=``...): its schema's
    arguments marked as written."""
    places = _WRITTEN_ARGS.get(func)
    if places is None:
        places = _WRITTEN_ARGS[func] = tuple(
            (i, argument.name)
            for i, argument in enumerate(func._schema.arguments)
            if argument.alias_info is not None and argument.alias_info.is_write
        )
    tensors: list[torch.Tensor] = []
    for i, name in places:
        value = args[i] if i < len(args) else kwargs.get(name)
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif isinstance(value, (list, tuple)):
            tensors.extend(v for v in value if isinstance(v, torch.Tensor))
    return tensors


class _CopyOnWrite(TorchDispatchMode):
    """While the FP32 model's forward runs, outputs held by reference whose layers have not
    shown yet whether they are changed in place (:meth:`_LayerStats.keep`) are copied just
    before an op writes into their storage: only those, not every output of the first batch.
    What is not written during the forward is then known unchanged by it (the version counter
    tells the rest, as for any output held by reference).

    One per process, entered by the pre-hook of each watched FP32 model's top module (several
    metrics of a sweep watching one model share it) and left by the last of their hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.held: dict[int, list[tuple[_LayerStats, _Kept]]] = {}

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """True: torch.compile goes on compiling while the watch is on. Dynamo skips every
        frame it has not compiled yet while a dispatch mode without this is entered, and it
        keeps that state in one flag for the whole process, not per thread: with the FP32
        forward in a worker thread beside the twin's (:mod:`qbench.lockstep`), the twin's
        kernels would run their eager bodies for as long as the watch is on. The watch needs
        no compiled kernel's inner ops: a kernel writes into its own outputs only."""
        return True

    def watch(self, stats: _LayerStats, kept: _Kept) -> bool:
        """Copy ``kept`` if an op writes into it before the watch ends; False if it cannot be
        watched (it must then be copied now)."""
        key = _storage_key(kept.tensor)
        if key is None:
            return False
        self.held.setdefault(key, []).append((stats, kept))
        return True

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.held:
            for tensor in _written(func, args, kwargs):
                key = _storage_key(tensor)
                for stats, kept in self.held.pop(key, ()) if key is not None else ():
                    unmeasured = kept.tensor is not None and kept.copy is None
                    if unmeasured and kept.tensor._version == kept.version:
                        stats.save(kept)
        return func(*args, **kwargs)

    def begin(self) -> None:
        if self.depth == 0:
            self.__enter__()
        self.depth += 1

    def end(self) -> None:
        if self.depth == 0:
            return
        self.depth -= 1
        if self.depth == 0:
            self.held.clear()
            self.__exit__(None, None, None)


_COPY_ON_WRITE: _CopyOnWrite | None = None


def _no_dispatch_modes() -> Any:
    """Torch dispatch modes (:class:`_CopyOnWrite`) off for the block; free when none is on."""
    return _disable_current_modes() if torch._C._len_torch_dispatch_stack() else nullcontext()


def _copy_on_write() -> _CopyOnWrite:
    global _COPY_ON_WRITE
    if _COPY_ON_WRITE is None:
        _COPY_ON_WRITE = _CopyOnWrite()
    return _COPY_ON_WRITE


class _LayerStats:
    """Running sums for one layer, kept on the device of the layer's output (no host sync
    until :meth:`result`)."""

    def __init__(self, name: str, info: Mapping[str, Any]):
        self.name = name
        self.info = dict(info)
        self.calls = 0
        self.elements = 0
        self.input_elements = 0
        self.sums: torch.Tensor | None = None
        self.input_zeros: torch.Tensor | None = None
        self.input_min_nonzero: torch.Tensor | None = None
        self.input_max: torch.Tensor | None = None
        # Each call's sums and input statistics, added into the totals above every
        # _FOLD_CALLS calls (and by result()): a handful of tiny ops per call otherwise.
        self._sums_pending: list[torch.Tensor] = []
        self._inputs_pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.pending: dict[str, deque[_Kept]] = {"reference": deque(), "quantized": deque()}
        # Whether a later op (ReLU(inplace=True), ``out += identity``) changes this layer's
        # output in place before its twin's output arrives: learned on the first call.
        self.changed_in_place: bool | None = None
        self.lost_calls = 0
        self._free: list[torch.Tensor] = []  # copy buffers of measured pairs, for reuse

    def keep(self, tensor: torch.Tensor, watch: _CopyOnWrite | None = None) -> _Kept:
        """Hold an output until its twin arrives: by reference, with its version counter, if
        the layer's output is not changed in place later; else as a copy, into a buffer this
        layer reuses batch after batch. Until that is known (the first call), by reference
        under ``watch``, which copies it only if an op is about to write into it; without a
        watch, as a copy."""
        version = None if tensor.is_inference() else tensor._version
        kept = _Kept(tensor, version, None)
        if version is None or self.changed_in_place is True:
            self.save(kept)
        elif self.changed_in_place is None:
            if watch is not None and watch.watch(self, kept):
                return kept
            self.save(kept)
        return kept

    def save(self, kept: _Kept) -> None:
        """Copy the held output (as it is now) into a buffer of this layer."""
        kept.copy = self._buffer_like(kept.tensor).copy_(kept.tensor)

    def _buffer_like(self, tensor: torch.Tensor) -> torch.Tensor:
        """A free buffer of ``tensor``'s shape, dtype and device: a fresh allocation of an
        activation-sized tensor costs a page fault per 4 KiB, which for a 50 MB output
        (resnet's first block at batch 16) is 20x the copy itself."""
        # an inference tensor cannot be written outside inference mode: such a buffer only
        # serves inside it
        inference = torch.is_inference_mode_enabled()
        for i, buffer in enumerate(self._free):
            if (buffer.shape, buffer.dtype, buffer.device, buffer.is_inference()) == (
                tensor.shape,
                tensor.dtype,
                tensor.device,
                inference,
            ):
                return self._free.pop(i)
        # A dense tensor's strides are kept (a channels-last output stays one): the copy is a
        # straight one, and the pair is read in one order (:func:`pair_sums`).
        return torch.empty_like(tensor)

    def release(self, kept: _Kept) -> None:
        """The pair of ``kept`` was measured: it lets go of the output (a watch may still
        list it until the forward ends), and its copy's buffer serves a later call of a
        layer that is copied every call. (A copy made only while learning is dropped: with
        the forwards in lockstep a pair is measured before a later op changes it, and a
        buffer kept per layer for nothing would add up to gigabytes on a large model.)"""
        if kept.copy is not None and self.changed_in_place and len(self._free) < _MAX_FREE_BUFFERS:
            self._free.append(kept.copy)
        kept.tensor = kept.copy = None

    def take(self, kept: _Kept) -> torch.Tensor | None:
        """The held output as it was when kept (None if that can no longer be known)."""
        unchanged = kept.version is not None and kept.tensor._version == kept.version
        if self.changed_in_place is None and kept.version is not None:
            self.changed_in_place = not unchanged
        if unchanged:
            return kept.tensor
        if kept.copy is None:  # it behaved differently on an earlier call: copy from now on
            self.changed_in_place = True
            self.lost_calls += 1
        return kept.copy

    def add_pair(
        self, reference: torch.Tensor, quantized: torch.Tensor, seen: Seen[Any] | None = None
    ) -> None:
        """Add one pair of outputs. With ``seen``, the quantized output's input statistics
        are computed in the same loop (where kernels run compiled) and left in ``seen`` for
        the layer that takes it as input (see :meth:`add_input`)."""
        if reference.shape != quantized.shape:
            raise QBenchError(
                f"layerwise: layer {self.name!r} output shapes differ between the FP32 model "
                f"{tuple(reference.shape)} and the quantized model {tuple(quantized.shape)}"
            )
        # float64 sums: over ~10^6 float32 terms they keep ~1e-12 relative error, so an SQNR
        # of 60+ dB (fp16-like formats) is still resolved. One fused pass over both outputs.
        r = reference.detach()
        q = quantized.detach().to(device=r.device)
        if quantized.device != r.device or not use_compiled(q.numel()):
            seen = None  # q is a copy (not what the next layer reads), or eager: two passes
        if seen is not None:
            sums, stats = pair_sums_and_stats(r, q)
            seen.put((quantized,), stats)
        else:
            sums = pair_sums(r, q)
        self._sums_pending.append(sums)
        if len(self._sums_pending) >= _FOLD_CALLS:
            self._fold_sums()
        self.elements += r.numel()
        self.calls += 1

    def _fold_sums(self) -> None:
        """Add the pending calls' sums into :attr:`sums`, with how many of them were not
        finite (any NaN/inf in q makes q.q non-finite)."""
        if not self._sums_pending:
            return
        calls = torch.stack(self._sums_pending)
        self._sums_pending = []
        nonfinite = (~torch.isfinite(calls[:, _Q_SQ])).sum().to(torch.float64)
        row = torch.cat([calls.sum(0), nonfinite.reshape(1)])
        self.sums = row if self.sums is None else self.sums + row

    def add_input(self, x: torch.Tensor, seen: Seen[Any]) -> None:
        # Zeros are mapped to +inf for the minimum, which is then the smallest non-zero
        # magnitude; the overall minimum is 0 exactly when zeros were seen (_input_result).
        # The same unchanged tensor feeding another layer (a residual block's input, into
        # its first convolution and its downsample) is not read twice.
        found = seen.get((x,))
        if found is None:
            found = input_stats(x.detach())
            seen.put((x,), found)
        self._inputs_pending.append(found)
        if len(self._inputs_pending) >= _FOLD_CALLS:
            self._fold_inputs()
        self.input_elements += x.numel()

    def _fold_inputs(self) -> None:
        """Fold the pending calls' input statistics into the running ones (float64 extremes:
        an input's dtype may differ between calls)."""
        if not self._inputs_pending:
            return
        zeros, largest, smallest = (torch.stack(part) for part in zip(*self._inputs_pending))
        self._inputs_pending = []
        zeros = zeros.sum()
        largest = largest.to(torch.float64).amax()  # a NaN stays NaN
        smallest = smallest.to(torch.float64).amin()
        if self.input_min_nonzero is None:
            self.input_min_nonzero, self.input_max, self.input_zeros = smallest, largest, zeros
        else:
            self.input_min_nonzero = torch.minimum(self.input_min_nonzero, smallest)
            self.input_max = torch.maximum(self.input_max, largest)
            self.input_zeros = self.input_zeros + zeros

    def result(self) -> dict[str, Any]:
        self._fold_sums()
        self._fold_inputs()
        out: dict[str, Any] = {
            "name": self.name,
            **self.info,
            "calls": self.calls,
            "elements": self.elements,
        }
        if self.sums is not None and self.elements:
            sse, ref_sq, q_sq, dot, nonfinite_calls = self.sums.tolist()
            out["mse"] = sse / self.elements
            # Cosine of the whole flattened output (all batches): dot / (|r| |q|).
            out["cosine"] = dot / math.sqrt(ref_sq * q_sq) if ref_sq > 0 and q_sq > 0 else None
            # SQNR = 10 log10(signal power / noise power); infinite when the outputs are equal.
            if sse == 0:
                out["sqnr_db"] = math.inf
            elif ref_sq == 0 or not math.isfinite(sse):
                out["sqnr_db"] = -math.inf if math.isfinite(sse) else math.nan
            else:
                out["sqnr_db"] = 10.0 * math.log10(ref_sq / sse)
            out["nonfinite_calls"] = int(nonfinite_calls)
        else:
            out.update(mse=None, cosine=None, sqnr_db=None, nonfinite_calls=0)
        out["input"] = self._input_result()
        return out

    def _input_result(self) -> dict[str, Any]:
        if self.input_min_nonzero is None or self.input_max is None or not self.input_elements:
            return {"elements": 0}
        min_nonzero = float(self.input_min_nonzero)
        max_abs = float(self.input_max)
        zeros = int(self.input_zeros)
        nonzero = math.isfinite(min_nonzero)
        log2_range = None
        if nonzero and max_abs > 0 and math.isfinite(max_abs):
            log2_range = math.log2(max_abs / min_nonzero)
        return {
            "elements": self.input_elements,
            "min_abs": 0.0 if zeros else min_nonzero,
            "min_nonzero_abs": min_nonzero if nonzero else None,
            "max_abs": max_abs,
            "log2_range": log2_range,
            "zero_fraction": zeros / self.input_elements,
        }


class LayerwiseMetric:
    """Per quantized layer: MSE, cosine similarity and SQNR (dB) of its output against the FP32
    model's same layer on the same batch, and the dynamic range of the input it quantized."""

    name = "layerwise"
    options_schema: dict[str, Any] = {
        "description": "Options of the layerwise metric (or null: every quantized layer).",
        "type": ["object", "null"],
        "properties": {
            "include": {
                "description": "Glob patterns on module names; only matching layers are measured.",
                "type": "array",
                "items": {"type": "string"},
                "default": ["*"],
            },
            "exclude": {
                "description": "Glob patterns on module names of layers not to measure.",
                "type": "array",
                "items": {"type": "string"},
                "default": [],
            },
        },
        "additionalProperties": False,
    }

    def __init__(self, options: Mapping[str, Any] | None = None):
        check_options(self.options_schema, options, "evaluation.layerwise")
        options = dict(options or {})
        self.include: list[str] = options.get("include") or ["*"]
        self.exclude: list[str] = options.get("exclude") or []
        self.layers: dict[str, _LayerStats] = {}
        self.missing_in_reference: list[str] = []
        self.unpaired_calls = 0
        self.batches = 0
        self._handles: list[Any] = []
        self._inputs: Seen[Any] = Seen()
        self._recorded: nn.Module | None = None  # the FP32 model, while its calls are recorded
        self._call_hooks: tuple[Any, Any, Any, Any] | None = None
        self._watch: Any = None  # the _CopyOnWrite, while the FP32 model's forward runs
        self._watching = 0

    # -- wiring -----------------------------------------------------------------------

    def attach(
        self, reference: nn.Module, quantized: nn.Module, context: Mapping[str, Any]
    ) -> None:
        entries = _quantized_layers(quantized, context)
        reference_modules = dict(reference.named_modules())
        quantized_modules = dict(quantized.named_modules())
        order = {name: i for i, name in enumerate(quantized_modules)}
        entries.sort(key=lambda e: order.get(e["name"], len(order)))
        for entry in entries:
            name = entry["name"]
            if not self._selected(name) or name not in quantized_modules:
                continue
            if name not in reference_modules:
                self.missing_in_reference.append(name)
                continue
            info = {k: entry[k] for k in ("type", "op") if k in entry}
            stats = self.layers[name] = _LayerStats(name, info)
            self._handles.append(
                reference_modules[name].register_forward_hook(self._output_hook(stats, "reference"))
            )
            self._handles.append(
                quantized_modules[name].register_forward_hook(
                    self._output_hook(stats, "quantized", self._inputs)
                )
            )
            self._handles.append(
                quantized_modules[name].register_forward_pre_hook(
                    self._input_hook(stats, self._inputs)
                )
            )

        self._watch_calls(reference, quantized, entries)
        self._watch_writes(reference)

    def _watch_calls(
        self, reference: nn.Module, quantized: nn.Module, entries: list[dict[str, Any]]
    ) -> None:
        """Functional calls the twin quantizes (``qbench_ops.calls``) are layers too, under
        their site names: the same sites are recorded, unquantized, in the FP32 model."""
        try:
            from qbench_ops.calls import install, interceptor_of
        except ImportError:  # pragma: no cover - qbench-ops is a dependency
            return
        interceptor = interceptor_of(quantized)
        if interceptor is None:
            return
        from qbench import LayerSpecs

        # In a sweep several twins' metrics watch one FP32 model: they share its recorder
        # (one per model; the groups are the same, ``quantization.functions`` being part of
        # what must match to share a reference), and the last one to close removes it.
        recorder = interceptor_of(reference)
        if recorder is None or not recorder.record_only:
            recorder = install(
                reference,
                interceptor.groups,
                lambda site, module_name, module: LayerSpecs(),
                owned=[entry["name"] for entry in entries],
                record_only=True,
            )
        self._recorded = reference
        hooks: dict[str, dict[str, Any]] = {}

        def on_call(side: str) -> Any:
            def hook(site: str, output: torch.Tensor) -> None:
                pair = hooks.get(site)
                if pair is None:
                    if not self._selected(site) or site in self.layers:
                        return
                    function = site.rsplit(":", 1)[-1].split("#", 1)[0]
                    stats = self.layers[site] = _LayerStats(site, {"type": "call", "op": function})
                    pair = hooks[site] = {
                        "reference": self._output_hook(stats, "reference"),
                        "quantized": self._output_hook(stats, "quantized"),
                    }
                pair[side](None, None, output)

            return hook

        recorder.call_hooks.append(reference_hook := on_call("reference"))
        interceptor.call_hooks.append(quantized_hook := on_call("quantized"))
        self._call_hooks = (interceptor, quantized_hook, recorder, reference_hook)

    def _selected(self, name: str) -> bool:
        included = any(fnmatch.fnmatchcase(name, p) for p in self.include)
        return included and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)

    def _output_hook(self, stats: _LayerStats, side: str, seen: Seen[Any] | None = None) -> Any:
        """The forward hook of one side; ``seen`` (the quantized side's) receives the input
        statistics of its output when the pair is measured as that output arrives."""
        other = "quantized" if side == "reference" else "reference"

        @without_function_modes()  # the metric's own math is not the model's
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is None or not tensor.is_floating_point():
                return
            with _no_dispatch_modes():  # nor is it an op writing into a held output
                waiting = stats.pending[other]
                if waiting:
                    kept = waiting.popleft()
                    partner = stats.take(kept)
                    if partner is None:  # changed in place after all: cannot be paired
                        return
                    if side == "reference":
                        stats.add_pair(tensor, partner)
                    else:  # the quantized output, fresh: likely the next layer's input
                        stats.add_pair(partner, tensor, seen)
                    stats.release(kept)
                else:
                    watch = self._watch if side == "reference" and self._watching else None
                    stats.pending[side].append(stats.keep(tensor.detach(), watch))

        return hook

    def _learning(self) -> bool:
        """Whether some layer has not shown yet if its FP32 output is changed in place (and
        on the first batch, when the functional calls' layers are still being found). Not
        past the first few batches: a layer never paired would keep the watch (a Python call
        per op of the FP32 forward) on for good; a first call that late is copied."""
        if self.batches >= _WATCHED_BATCHES:
            return False
        return self.batches == 0 or any(
            stats.changed_in_place is None for stats in self.layers.values()
        )

    def _watch_writes(self, reference: nn.Module) -> None:
        """Around each forward of the FP32 model while :meth:`_learning`: the process's
        :class:`_CopyOnWrite` watches the outputs held by reference."""

        def begin(module: nn.Module, inputs: Any) -> None:
            if self._learning():
                self._watch = _copy_on_write()
                self._watch.begin()
                self._watching += 1

        def end(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._watching:
                self._watching -= 1
                self._watch.end()

        self._handles.append(reference.register_forward_pre_hook(begin))
        self._handles.append(reference.register_forward_hook(end, always_call=True))

    def _stop_watching(self) -> None:
        while self._watching:
            self._watching -= 1
            self._watch.end()

    @staticmethod
    def _input_hook(stats: _LayerStats, seen: Seen[Any]) -> Any:
        @without_function_modes()
        def hook(module: nn.Module, inputs: Any) -> None:
            tensor = first_tensor(inputs)
            if tensor is not None and tensor.is_floating_point():
                stats.add_input(tensor, seen)

        return hook

    # -- streaming ----------------------------------------------------------------------

    def update(self, batch: BatchOutputs) -> None:
        """Both forwards of this batch are done: anything still unpaired cannot be paired."""
        self._stop_watching()  # (a forward that never finished)
        for stats in self.layers.values():
            for side in ("reference", "quantized"):
                self.unpaired_calls += len(stats.pending[side])
                for kept in stats.pending[side]:
                    stats.release(kept)
                stats.pending[side].clear()
        self.batches += 1

    def close(self) -> None:
        self._stop_watching()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        recorder = None
        if self._call_hooks is not None:
            interceptor, hook, recorder, reference_hook = self._call_hooks
            for owner, owned in ((interceptor, hook), (recorder, reference_hook)):
                if owned in owner.call_hooks:
                    owner.call_hooks.remove(owned)
            self._call_hooks = None
        if self._recorded is not None:
            from qbench_ops.calls import uninstall

            if recorder is None or not recorder.call_hooks:  # the last watcher of the model
                uninstall(self._recorded)
            self._recorded = None
        for stats in self.layers.values():
            stats._free.clear()

    def result(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "layers": [stats.result() for stats in self.layers.values()],
            "missing_in_reference": list(self.missing_in_reference),
            "unpaired_calls": self.unpaired_calls
            + sum(stats.lost_calls for stats in self.layers.values()),
        }

    @staticmethod
    def sweep_columns(result: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
        """A sweep table's columns: mean and worst output cosine and SQNR over the layers
        measured (an infinite SQNR, a layer left exact, is left out of the mean)."""
        layers = result.get("layers") or ()
        cosines = [_float(layer.get("cosine")) for layer in layers]
        cosines = [c for c in cosines if c is not None and math.isfinite(c)]
        sqnrs = [_float(layer.get("sqnr_db")) for layer in layers]
        finite = [v for v in sqnrs if v is not None and math.isfinite(v)]
        worst_sqnr = min((v for v in sqnrs if v is not None and not math.isnan(v)), default=None)
        return [
            ("mean_cosine", "mean cosine", sum(cosines) / len(cosines) if cosines else None),
            ("worst_cosine", "worst cosine", min(cosines) if cosines else None),
            ("mean_sqnr_db", "mean SQNR dB", sum(finite) / len(finite) if finite else None),
            ("worst_sqnr_db", "worst SQNR dB", worst_sqnr),
        ]

    @staticmethod
    def sweep_layers(result: Mapping[str, Any]) -> dict[str, Any]:
        """Each layer's output cosine, for a sweep's layers x configs heat map."""
        return {
            str(layer.get("name")): _float(layer.get("cosine"))
            for layer in result.get("layers") or ()
        }

    @staticmethod
    def summary(result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """The row of ``qbench run``'s summary table: the lowest output cosine of any layer,
        naming that layer (the first of equals)."""
        measured = [
            layer
            for layer in result.get("layers") or ()
            if isinstance(layer.get("cosine"), (int, float))
        ]
        if not measured:
            return []
        worst = min(measured, key=lambda layer: layer["cosine"])
        return [(f"min layer cosine ({worst.get('name')})", "", f"{worst['cosine']:.4f}")]


def _float(value: Any) -> float | None:
    """A number of a result, also as read back from report.json (NaN and infinities are
    strings there)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _quantized_layers(quantized: nn.Module, context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The quantized layers, from the run's preparation report (or qbench.preparation directly)."""
    preparation = context.get("preparation")
    if preparation is not None:
        return [dict(entry) for entry in preparation.get("quantized", [])]
    from qbench.preparation import quantized_modules

    return [
        {"name": name, "type": type(module).__name__}
        for name, module in quantized_modules(quantized).items()
    ]
