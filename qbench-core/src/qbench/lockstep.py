"""Run the FP32 model and its twin layer by layer, in lockstep.

A metric that compares the two models layer by layer must hold one side's output of a layer
until the other side's arrives. Run one whole forward after the other and it holds every
layer's output of a batch at once: for a real-sized CNN at batch 32 that is gigabytes, many
times what a plain FP32 evaluation needs. :class:`Lockstep` runs the FP32 forward in a worker
thread a little ahead of the twin's: before the twin computes a layer, the FP32 side computes
the same layer, goes on while its outputs since it last stopped are under ``ahead_bytes``
(32 MiB; 0: one layer ahead, no more), and stops; so a layer's FP32 output waits only while
the twin catches up, and the two forwards' own activations are all the rest. One worker
thread serves every batch until :meth:`Lockstep.close`.

The two threads never run at once (one holds the turn, the other waits for it), so the hooks
metrics put on both models see their calls in one order, as before, and nothing is raced. A
layer is a leaf module of the FP32 model whose name the twin also has; the twin waits for its
``k``-th call of a layer until the FP32 side has finished its ``k``-th call of it. A layer the
two sides do not call equally often (a module the twin no longer calls, folded away...) is no
longer waited for from the next batch on: the FP32 side then runs ahead until the next layer
both call, holding what it computes in between, which is only memory, never a wrong pairing.

Each side keeps its own random number state (the twin's stochastic rounding draws from the
twin's), switched with the turn. The worker runs under the caller's grad mode; an exception
in either forward stops both and is raised in the caller.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["AHEAD_BYTES", "Lockstep", "set_thread_omp_threads", "thread_omp_threads"]

#: The default :class:`Lockstep` ``ahead_bytes``.
AHEAD_BYTES = 32 << 20

_REFERENCE, _TWIN = "reference", "twin"


class _Stopped(Exception):
    """Raised inside the FP32 forward to end it when the twin's forward failed (an
    ``Exception``: torch runs the hooks registered with ``always_call`` on the way out)."""


class Lockstep:
    """One FP32 model and one twin, run a batch at a time with :meth:`forward`.

    ``ahead_bytes``: the FP32 side hands the turn back once the layer the twin waits for is
    done *and* its layers' outputs since it took the turn add up to this many bytes (else it
    goes on to the next layer): late layers with small outputs then cost no hand-over (a
    thread switch each way; up to ~1 ms measured on a busy 2-core VM) each. 0: hand back
    after every layer.

    ``rng`` is a pair of callables ``(get, set)`` for the random number state of the device
    (see the runner); each side's state is switched in and out with its turn.

    ``reference_threads``: the OpenMP threads of the worker's own CPU ops (None: as many as
    any thread gets). Each thread that runs torch's CPU ops parallel has an OpenMP team of
    its own, and GNU OpenMP, finding more threads in its teams than cores, stops letting a
    team's idle threads wait busily: every parallel op of the twin's side then wakes its
    helper from sleep. On a 2-core VM that made a short EfficientNet run's wall time vary
    from 23 to 57 s for the same ~33 s of CPU; with the FP32 side on one thread (its forward
    is a small part of a run), 20-23 s (``benchmarks/README.md``). Where the OpenMP runtime
    cannot be reached (:func:`set_thread_omp_threads`), it is left as it is."""

    def __init__(
        self,
        reference: Any,
        twin: Any,
        rng: tuple[Callable[[], Any], Callable[[Any], None]],
        ahead_bytes: int | None = None,
        reference_threads: int | None = None,
    ) -> None:
        self.ahead_bytes = AHEAD_BYTES if ahead_bytes is None else ahead_bytes
        self.reference_threads = reference_threads
        self._reference, self._twin = reference, twin
        self._get_rng, self._set_rng = rng
        self._turn = threading.Condition()
        self._holder = _TWIN
        self._done: Counter[str] = Counter()  # calls of each layer the FP32 side finished
        self._calls: Counter[str] = Counter()  # calls of each layer the twin began
        self._wanted: tuple[str, int] | None = None
        self._finished = True
        self._stopping = False
        self._skipped: set[str] = set()
        self._states: dict[str, Any] = {}
        self._thread: threading.Thread | None = None  # the worker, started on first use
        self._ahead_bytes = 0  # outputs the FP32 side produced since it took the turn
        self._job: tuple[Any, bool] | None = None
        self._active = False  # within forward()
        self._closing = False
        self._outcome: tuple[Any, BaseException | None] = (None, None)
        twin_modules = dict(twin.named_modules())
        self.layers: list[str] = []
        self._handles: list[Any] = []
        for name, module in reference.named_modules():
            if not name or next(module.children(), None) is not None or name not in twin_modules:
                continue
            self.layers.append(name)
            self._handles.append(module.register_forward_hook(self._finished_call(name)))
            self._handles.append(twin_modules[name].register_forward_pre_hook(self._wait(name)))

    # -- the hooks --------------------------------------------------------------------

    def _finished_call(self, name: str) -> Callable[..., None]:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            if not self._active or threading.current_thread() is not self._thread:
                return  # the model run outside lockstep
            self._done[name] += 1
            if callable(getattr(output, "element_size", None)):  # a tensor
                self._ahead_bytes += output.numel() * output.element_size()
            wanted = self._wanted
            if (
                wanted is not None
                and self._done[wanted[0]] >= wanted[1]
                and self._ahead_bytes >= self.ahead_bytes
            ):
                self._ahead_bytes = 0
                self._pass(_TWIN)

        return hook

    def _wait(self, name: str) -> Callable[..., None]:
        def hook(module: Any, inputs: Any) -> None:
            if not self._active or threading.current_thread() is self._thread:
                return
            self._calls[name] += 1
            if name in self._skipped or self._finished:
                return
            if self._done[name] < self._calls[name]:
                self._wanted = (name, self._calls[name])
                self._pass(_REFERENCE)
                self._wanted = None

        return hook

    def _pass(self, to: str) -> None:
        """Give the turn to ``to`` and wait until it comes back (from the side now running).
        The FP32 side, woken to stop, raises :class:`_Stopped` instead."""
        me = _TWIN if to == _REFERENCE else _REFERENCE
        with self._turn:
            self._states[me] = self._get_rng()
            self._holder = to
            self._turn.notify_all()
            self._turn.wait_for(lambda: self._holder == me)
            self._set_rng(self._states[me])
            if me == _REFERENCE and self._stopping:
                raise _Stopped

    # -- a batch ----------------------------------------------------------------------

    def forward(self, inputs: Any, twin_rng: Any) -> tuple[Any, Any, Any]:
        """``(fp32_output, twin_output, twin_rng)`` of one batch: the twin's forward runs in
        the calling thread from the random number state ``twin_rng`` (its state after is
        returned), the FP32 model's in a worker thread one layer ahead of it from the state
        current at the call, which is the current one again after it."""
        import torch

        self._done.clear()
        self._calls.clear()
        self._finished = self._stopping = False
        self._ahead_bytes = 0
        self._outcome = (None, None)
        self._states = {_REFERENCE: self._get_rng()}
        self._holder = _TWIN
        self._set_rng(twin_rng)
        if self._thread is None:
            # one worker for every batch: a new thread per batch would also get a new
            # OpenMP team and new oneDNN scratch buffers, every batch (5x slower runs)
            self._thread = threading.Thread(target=self._serve, name="qbench-fp32", daemon=True)
            self._thread.start()
        self._active = True
        with self._turn:
            self._job = (inputs, torch.is_grad_enabled())
            self._turn.notify_all()
        try:
            twin_output = self._twin(inputs)
            self._drain()
        except BaseException:
            self._stop()
            raise
        finally:
            self._active = False
            twin_rng = self._get_rng()
            self._set_rng(self._states[_REFERENCE])
        output, error = self._outcome
        self._outcome = (None, None)
        if error is not None:
            raise error
        self._learn()
        return output, twin_output, twin_rng

    def _serve(self) -> None:
        """The worker: one FP32 forward per :meth:`forward`, until :meth:`close`."""
        if self.reference_threads is not None:
            set_thread_omp_threads(self.reference_threads)
        while True:
            with self._turn:
                self._turn.wait_for(lambda: self._job is not None or self._closing)
                if self._job is None:
                    return
                inputs, grad = self._job
                self._job = None
            self._run_reference(inputs, grad)
            del inputs

    def _run_reference(self, inputs: Any, grad: bool) -> None:
        import torch

        output: Any = None
        error: BaseException | None = None
        try:
            with self._turn:
                self._turn.wait_for(lambda: self._holder == _REFERENCE)
                self._set_rng(self._states[_REFERENCE])
                if self._stopping:
                    raise _Stopped
            with torch.set_grad_enabled(grad):
                output = self._reference(inputs)
        except _Stopped:
            pass
        except BaseException as exc:  # raised in the caller's thread
            error = exc
        with self._turn:
            self._outcome = (output, error)
            self._finished = True
            self._states[_REFERENCE] = self._get_rng()
            self._holder = _TWIN
            self._turn.notify_all()

    def _drain(self) -> None:
        """The twin is done: let the FP32 side run to the end of its forward."""
        with self._turn:
            if self._finished:
                return
            self._states[_TWIN] = self._get_rng()
            self._holder = _REFERENCE
            self._turn.notify_all()
            self._turn.wait_for(lambda: self._finished)
            self._set_rng(self._states[_TWIN])

    def _stop(self) -> None:
        """The twin's forward failed (or was interrupted): end the FP32 side's."""
        with self._turn:
            self._stopping = True
            if not self._finished:
                state = self._get_rng()
                self._holder = _REFERENCE
                self._turn.notify_all()
                self._turn.wait_for(lambda: self._finished)
                self._set_rng(state)

    def _learn(self) -> None:
        """Layers the two sides called unequally often this batch are not waited for again."""
        for name in self.layers:
            if name not in self._skipped and self._done[name] != self._calls[name]:
                self._skipped.add(name)

    def close(self) -> None:
        """Remove the hooks (the models run on their own again) and end the worker."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        thread, self._thread = self._thread, None
        if thread is not None:
            with self._turn:
                self._closing = True
                self._turn.notify_all()
            thread.join()


@functools.cache
def _openmp() -> Any:
    """The OpenMP runtime torch's CPU ops run on (the one in torch's own ``lib`` folder: GNU
    libgomp in the Linux wheels, LLVM or Intel's elsewhere), or None."""
    import ctypes
    import os

    import torch

    folder = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for prefix in ("libgomp", "libomp", "libiomp5"):
        for name in names:
            if name.startswith(prefix) and (".so" in name or name.endswith(".dylib")):
                try:
                    runtime = ctypes.CDLL(os.path.join(folder, name))
                    runtime.omp_set_num_threads.argtypes = [ctypes.c_int]
                    runtime.omp_get_max_threads.restype = ctypes.c_int
                except (OSError, AttributeError):
                    continue
                return runtime
    return None


def set_thread_omp_threads(threads: int) -> bool:
    """Give the calling thread's parallel CPU ops ``threads`` OpenMP threads (an OpenMP
    setting of the thread: torch reads it in each parallel region, and ``torch.set_num_threads``
    of any thread, which sets it for all, is left alone). False where torch's OpenMP runtime
    is not found."""
    runtime = _openmp()
    if runtime is None:
        return False
    import torch

    # torch sets a thread's count itself at its first parallel op (to torch.set_num_threads's
    # value, where one was set): a tiny softmax has that happen now, without a parallel region
    torch.ones(4).softmax(0)
    runtime.omp_set_num_threads(max(1, int(threads)))
    return True


def thread_omp_threads() -> int | None:
    """The calling thread's OpenMP thread count (None where the runtime is not found)."""
    runtime = _openmp()
    return None if runtime is None else int(runtime.omp_get_max_threads())
