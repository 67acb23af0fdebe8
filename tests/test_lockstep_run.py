"""`qbench run` of one config runs the FP32 model one layer ahead of its twin (qbench.lockstep):
the layerwise metric holds at most a couple of FP32 layer outputs at a time, not a whole
forward's, and the metrics are those of the FP32 forward run whole before the twin's (the
path a sweep group of several twins takes), stochastic rounding included."""

from __future__ import annotations

import math

import qbench
import qbench.lockstep
import qbench.runner
import qbench_eval.layerwise as layerwise
import yaml


def _workers() -> list:
    """Lockstep's FP32 worker threads still alive."""
    import threading

    return [t for t in threading.enumerate() if t.name == "qbench-fp32"]


def _config(folder, rounding: str = "nearest_even") -> dict:
    return {
        "name": "lockstep",
        "model": {"adapter": "zoo", "name": "tiny_resnet"},
        "dataset": {"name": "digits", "split": "test", "batch_size": 32},
        "memory_format": "contiguous",
        "quantization": {
            "format": "fp8_e4m3",
            "mode": "chunk",
            "chunk_size": 32,
            "weight_mode": "channel",
            "rounding": rounding,
        },
        "evaluation": {"metrics": ["accuracy", "layerwise", "compliance"]},
        "output": {"dir": str(folder / "reports"), "reporters": ["json"]},
    }


def _held_most(monkeypatch) -> list[int]:
    """Watch how many FP32 outputs the layerwise metrics hold, at their most (the FP32 side
    handing the turn back after every layer: the demo's outputs are far below the default
    budget of bytes it may run ahead by)."""
    monkeypatch.setattr(qbench.lockstep, "AHEAD_BYTES", 0)
    most = [0]
    held: dict[int, int] = {}
    keep, take = layerwise._LayerStats.keep, layerwise._LayerStats.take

    def counting_keep(self, tensor, watch=None):
        kept = keep(self, tensor, watch)
        held[id(kept)] = 1
        most[0] = max(most[0], len(held))
        return kept

    def counting_take(self, kept):
        held.pop(id(kept), None)
        return take(self, kept)

    monkeypatch.setattr(layerwise._LayerStats, "keep", counting_keep)
    monkeypatch.setattr(layerwise._LayerStats, "take", counting_take)
    return most


def _layers(report) -> dict[str, dict]:
    return {layer["name"]: layer for layer in report["metrics"]["layerwise"]["layers"]}


def test_one_run_holds_a_layer_not_a_forward_and_measures_the_same(tmp_path, monkeypatch):
    for rounding in ("nearest_even", "stochastic"):
        most = _held_most(monkeypatch)
        alone = qbench.run(_config(tmp_path / rounding, rounding), limit=64)
        layers = _layers(alone.report)
        assert len(layers) > 12
        assert 1 <= most[0] <= 3, most[0]  # the FP32 side is one layer ahead, no more

        # the same config in a sweep group of two: the FP32 forward runs whole first
        most = _held_most(monkeypatch)
        data = _config(tmp_path / f"{rounding}-sweep", rounding)
        data["sweep"] = {"grid": {"format": ["fp8_e4m3", "int8"]}}
        path = tmp_path / f"{rounding}.yaml"
        path.write_text(yaml.safe_dump(data))
        from qbench.config import load_config
        from qbench.sweep import run_sweep

        results = run_sweep([load_config(path)], limit=64)
        assert most[0] >= len(layers)  # every layer's FP32 output waited for the twins'
        assert results.reference_passes == 1  # one FP32 pass over the data for both twins
        twin = next(r for r in results.reports if "fp8_e4m3" in r["name"])
        assert twin["metrics"]["accuracy"] == alone.report["metrics"]["accuracy"]
        for name, layer in _layers(twin).items():
            for key in ("cosine", "sqnr_db", "mse"):
                a, b = layer[key], layers[name][key]
                assert a == b or math.isclose(a, b, rel_tol=1e-12), (rounding, name, key)
        assert twin["metrics"]["compliance"]["status"] == "PASS"


def test_a_twin_failing_mid_forward_ends_the_fp32_worker_too(tmp_path, monkeypatch):

    import pytest
    import qbench.lockstep

    qbench.run(_config(tmp_path / "ok"), limit=32)
    assert not _workers()
    original = qbench.lockstep.Lockstep.__init__

    def failing_twin(self, reference, twin, rng, **options):
        original(self, reference, twin, rng, **options)
        modules = dict(twin.named_modules())

        def fail(module, inputs):
            raise RuntimeError("twin layer failed")

        modules[self.layers[len(self.layers) // 2]].register_forward_pre_hook(fail)

    monkeypatch.setattr(qbench.lockstep.Lockstep, "__init__", failing_twin)
    with pytest.raises(RuntimeError, match="twin layer failed"):
        qbench.run(_config(tmp_path / "bad"), limit=32)
    assert not _workers()


def test_fp32_outputs_are_let_go_once_measured_on_the_first_batch_too(tmp_path, monkeypatch):
    """On the first batch the layerwise metric watches the FP32 outputs it keeps for
    in-place writes (copy-on-write); a measured output is let go at once all the same, so
    while the twin runs, the metric holds no more than a couple of FP32 outputs."""
    import weakref

    import qbench.lockstep

    kept: list[weakref.ref] = []
    holding_most = [0]
    keep = layerwise._LayerStats.keep

    def recording_keep(self, tensor, watch=None):
        held = keep(self, tensor, watch)
        kept.append(weakref.ref(held))
        return held

    original = qbench.lockstep.Lockstep.__init__

    def watching(self, reference, twin, rng, **options):
        original(self, reference, twin, rng, **options)
        twins = dict(twin.named_modules())

        def count(module, inputs):
            holding = sum(k() is not None and k().tensor is not None for k in kept)
            holding_most[0] = max(holding_most[0], holding)

        for name in self.layers:
            twins[name].register_forward_pre_hook(count)

    monkeypatch.setattr(layerwise._LayerStats, "keep", recording_keep)
    monkeypatch.setattr(qbench.lockstep.Lockstep, "__init__", watching)
    monkeypatch.setattr(qbench.lockstep, "AHEAD_BYTES", 0)
    result = qbench.run(_config(tmp_path), limit=32)
    assert len(_layers(result.report)) > 12 and len(kept) > 12
    assert holding_most[0] <= 2, holding_most[0]


def test_a_long_run_keeps_the_fp32_forward_first(tmp_path, monkeypatch):
    """A run long enough to compile its kernels (``QBENCH_COMPILE_MIN_BATCHES``) does not
    run in lockstep (see runner.run_twins: there the hand-overs cost more time than the
    memory is worth); a short one does."""
    import qbench.kernels

    made: list[object] = []
    original = qbench.lockstep.Lockstep.__init__

    def counting(self, *args, **kwargs):
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(qbench.lockstep.Lockstep, "__init__", counting)
    qbench.run(_config(tmp_path / "short"), limit=64)
    assert len(made) == 1
    monkeypatch.setattr(qbench.kernels, "COMPILE_MIN_BATCHES", 2)
    qbench.run(_config(tmp_path / "long"), limit=64)
    assert len(made) == 1
