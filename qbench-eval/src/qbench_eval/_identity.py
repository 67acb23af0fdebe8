"""Recognizing the very same tensors again, unchanged, without keeping them alive.

The ops share one quantization between consecutive layers (a ReLU's quantized output is the
next convolution's quantized input; a residual block's input feeds both its first convolution
and its downsample), and report it to observers once per layer. A metric that has already
measured those exact tensors can record the same result for the second layer instead of
reading every element again. "The same" means the same tensor objects (held by weak
reference only, so nothing outlives its layer) at the same in-place version counters; an
inference tensor has no counter and is never recognized.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")

#: Entries kept per cache; dead ones are dropped first. Sharing happens within a few layers.
CAPACITY = 16


class Seen(Generic[T]):
    """A small map from a tuple of live tensors (plus a hashable tag) to what was computed
    from them, valid only while every tensor is alive and unchanged."""

    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._entries: dict[int, tuple[tuple[Any, ...], Any, T]] = {}
        self.hits = 0

    @staticmethod
    def _state(tensors: Sequence[Any]) -> tuple[Any, ...] | None:
        """(weakref, version) per tensor, or None if any cannot be tracked."""
        state = []
        for tensor in tensors:
            if not isinstance(tensor, torch.Tensor) or tensor.is_inference():
                return None
            state.append((weakref.ref(tensor), tensor._version))
        return tuple(state)

    def get(self, tensors: Sequence[Any], tag: Any = None) -> T | None:
        if not tensors:
            return None
        entry = self._entries.get(id(tensors[0]))
        if entry is None:
            return None
        state, stored_tag, value = entry
        if len(state) != len(tensors) or stored_tag != tag:
            return None
        for (ref, version), tensor in zip(state, tensors, strict=True):
            if ref() is not tensor or tensor._version != version:
                return None
        self.hits += 1
        return value

    def put(self, tensors: Sequence[Any], value: T, tag: Any = None) -> None:
        state = self._state(tensors) if tensors else None
        if state is None:
            return
        if len(self._entries) >= self.capacity:
            self._entries = {
                k: e for k, e in self._entries.items() if all(r() is not None for r, _ in e[0])
            }
            while len(self._entries) >= self.capacity:  # all alive: forget the oldest
                del self._entries[next(iter(self._entries))]
        self._entries[id(tensors[0])] = (state, tag, value)
