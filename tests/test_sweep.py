"""Sweeps (``qbench run`` with a ``sweep:`` grid, or several configs) on the demo's real
zoo model and digits data: one FP32 reference for the whole grid, per-config reports written
whole as they finish, a killed sweep resuming to the numbers of an uninterrupted one, bad
grids refused in one line, and ``qbench compare`` over the finished reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import qbench.preparation
import qbench.runner
import torch
import yaml
from integration_helpers import QBENCH, REPO
from qbench.cli import main
from qbench.config import load_config
from qbench.errors import QBenchError
from qbench.sweep import expand, run_sweep

LIMIT = 64  # two batches of 32

GRID = {
    "format": ["fp8_e4m3", "int8"],
    "quantization": [
        {"mode": "tensor"},
        {"mode": "chunk", "chunk_size": 32},
        {"mode": "chunk", "chunk_size": 32, "rounding": "stochastic"},
    ],
}


def sweep_config(folder: Path, **sweep) -> Path:
    data = {
        "name": "grid",
        "model": {"adapter": "zoo", "name": "tiny_resnet"},
        "dataset": {"name": "digits", "split": "test", "batch_size": 32},
        "memory_format": "contiguous",  # no channels-last probe: every FP32 forward is a batch
        "quantization": {"weight_mode": "channel"},
        "evaluation": {"metrics": ["accuracy", "layerwise", "compliance"]},
        "output": {"dir": str(folder / "reports"), "reporters": ["json", "text"]},
        "sweep": {"grid": GRID, **sweep},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def metrics_by_name(reports) -> dict[str, dict]:
    return {report["name"]: report["metrics"] for report in reports}


def test_a_2x3_sweep_runs_the_fp32_reference_once(tmp_path, monkeypatch):
    twins: set[int] = set()
    references: set[int] = set()
    calls = {"reference": 0, "twin": 0}
    prepare, build = qbench.preparation.prepare, qbench.runner.build_reference

    def counting_prepare(model, spec):
        twin = prepare(model, spec)
        twins.add(id(twin))
        return twin

    def counting_build(*args, **kwargs):
        reference = build(*args, **kwargs)
        references.add(id(reference.model))
        return reference

    def count(module, inputs):
        if id(module) in references:
            calls["reference"] += 1
        elif id(module) in twins:
            calls["twin"] += 1

    monkeypatch.setattr(qbench.preparation, "prepare", counting_prepare)
    monkeypatch.setattr(qbench.runner, "build_reference", counting_build)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        result = run_sweep([load_config(sweep_config(tmp_path))], limit=LIMIT)
    finally:
        handle.remove()
    assert len(result.reports) == 6 and result.reference_passes == 1
    assert calls == {"reference": 2, "twin": 12}  # 2 batches: once FP32, six twins each
    summary = result.summary
    assert summary["complete"] and summary["finished"] == 6 and not summary["pending"]
    names = [row["name"] for row in summary["rows"]]
    assert names[:2] == ["grid-fp8_e4m3-tensor", "grid-fp8_e4m3-chunk-32"]
    assert any(row["pareto"] for row in summary["rows"])
    for row in summary["rows"]:
        assert row["audit"] == "PASS" and row["status"] == "done"
        assert 8.0 < row["effective_bits"] < 8.5
    # each twin's numbers are those of the same config run alone
    alone = qbench.runner.run(
        load_config(expand(load_config(sweep_config(tmp_path)))[2][0].data),
        limit=LIMIT,
        output=tmp_path / "alone",
    )
    assert alone.report["metrics"] == result.reports[2]["metrics"]


def test_a_sweep_interrupted_mid_run_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
    whole = run_sweep([load_config(sweep_config(tmp_path / "whole", parallel=2))], limit=LIMIT)

    run_twins, calls = qbench.runner.run_twins, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_twins(*args, **kwargs)

    path = sweep_config(tmp_path / "cut", parallel=2)
    monkeypatch.setattr(qbench.runner, "run_twins", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([load_config(path)], limit=LIMIT)
    summary = json.loads((tmp_path / "cut" / "reports" / "grid" / "sweep.json").read_text())
    assert summary["complete"] is False and summary["finished"] == 2
    assert len(summary["pending"]) == 4
    monkeypatch.setattr(qbench.runner, "run_twins", run_twins)

    statuses: dict[str, str] = {}
    resumed = run_sweep(
        [load_config(path)],
        limit=LIMIT,
        on_result=lambda r, s: statuses.update({r.out_dir.name: s}),
    )
    assert sorted(statuses.values()) == ["done"] * 4 + ["skipped"] * 2
    assert resumed.summary["complete"]
    assert metrics_by_name(resumed.reports) == metrics_by_name(whole.reports)
    again: dict[str, str] = {}
    run_sweep(
        [load_config(path)],
        limit=LIMIT,
        force=True,
        on_result=lambda r, s: again.update({r.out_dir.name: s}),
    )
    assert set(again.values()) == {"done"}  # --force recomputes


@pytest.mark.slow
def test_a_sweep_killed_with_sigkill_resumes_to_the_same_numbers(tmp_path):
    """kill -9 while the second of three groups runs: the first group's reports are whole,
    the sweep report says incomplete, and the rerun computes only what was lost."""
    path = sweep_config(tmp_path, parallel=2)
    command = [sys.executable, "-c", QBENCH, "run", str(path), "--limit", str(LIMIT)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [*command, "--no-progress"], env=env, cwd=tmp_path, start_new_session=True
    )
    sweep_json = tmp_path / "reports" / "grid" / "sweep.json"
    deadline = time.monotonic() + 240
    while not sweep_json.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    summary = json.loads(sweep_json.read_text())
    assert summary["complete"] is False
    done = subprocess.run(
        [*command, "--no-progress"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("skipped (finished before") == summary["finished"]
    whole = run_sweep([load_config(sweep_config(tmp_path / "whole", parallel=2))], limit=LIMIT)
    rerun = [
        json.loads(p.read_text())
        for p in sorted((tmp_path / "reports" / "zoo_tiny_resnet").glob("*/report.json"))
    ]
    assert metrics_by_name(rerun) == metrics_by_name(whole.reports)


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (
            {"grid": {"format": ["fp8_e4m3"]}, "exclude": [{"format": "fp8_e4m3"}]},
            "no combination left after sweep.exclude",
        ),
        (
            {"grid": {"format": ["fp8_e4m3"]}, "exclude": [{"mode": "tensor"}]},
            "'mode' is not a grid key",
        ),
        (
            {"grid": {"format": ["fp8_e4m3"]}, "exclude": [{"format": "fp9"}]},
            "'fp9' is not among the grid's values",
        ),
        ({"grid": {"format": ["fp8_e4m3", "fp8_e4m3"]}}, "fp8_e4m3 appears more than once"),
        ({"grid": {"mode": ["tensor", "chunk"]}}, "the combination {mode: chunk} is not a valid"),
        ({"grid": {"output.dir": ["a"]}}, "'output' cannot be swept"),
        ({"grid": {"format": []}}, "sweep.grid.format"),
        (
            {"grid": {f"quantization.k{i}": list(range(10)) for i in range(10)}},
            "10000000000 combinations; allowed: at most 1000",
        ),
    ],
)
def test_an_empty_or_contradictory_sweep_is_refused_in_one_line(tmp_path, capsys, sweep, message):
    data = yaml.safe_load(sweep_config(tmp_path).read_text())
    data["sweep"] = sweep
    data["quantization"] = {"format": "fp8_e4m3"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "reports").exists()  # refused before any model was built


def test_expand_names_and_merges_grid_values(tmp_path):
    configs = expand(load_config(sweep_config(tmp_path)))
    assert [cfg.name for cfg, _ in configs][-1] == "grid-int8-chunk-32-stochastic"
    cfg, variant = configs[-1]
    assert variant == {"format": "int8", "quantization": "chunk-32-stochastic"}
    q = cfg.data["quantization"]
    assert q["format"] == "int8" and q["weight_mode"] == "channel" and q["chunk_size"] == 32
    assert "sweep" not in cfg.data
    data = yaml.safe_load(sweep_config(tmp_path).read_text())
    data["sweep"] = {"grid": {"format": ["fp8_e4m3"], "model.weights": ["/data/a b", "/data/c"]}}
    names = [cfg.name for cfg, _ in expand(load_config(data))]
    assert names == ["grid-fp8_e4m3-data_a_b", "grid-fp8_e4m3-data_c"]
    with pytest.raises(QBenchError, match="cannot be swept"):
        data = yaml.safe_load(sweep_config(tmp_path).read_text())
        data["sweep"] = {"grid": {"name": ["x"]}}
        expand(load_config(data))


def test_compare_builds_the_table_from_finished_reports(tmp_path, capsys):
    run_sweep([load_config(sweep_config(tmp_path))], limit=LIMIT)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(
            [
                "compare",
                str(tmp_path / "reports" / "zoo_tiny_resnet"),
                "--output",
                str(tmp_path / "cmp"),
            ]
        )
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "compare: 6 of 6 configs" in out and "grid-int8-chunk-32-stochastic" in out
    table = json.loads((tmp_path / "cmp" / "compare" / "sweep.json").read_text())
    assert len(table["rows"]) == 6 and table["quality"] == "accuracy.top1_delta"
    with pytest.raises(SystemExit) as info:
        main(["compare", str(tmp_path / "nothing-here")])
    assert info.value.code == 2


def test_the_sweep_demo_config_is_a_grid_of_at_least_eight():
    configs = expand(load_config(REPO / "configs" / "sweep_demo.yaml"))
    assert len(configs) >= 8


@pytest.mark.parametrize(
    ("quantization", "bits"),
    [
        ({"format": "mxfp4_e2m1"}, 4.25),
        ({"format": "mxfp6_e2m3"}, 6.25),
        ({"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 128}, 8.25),
        ({"format": "fp8_e4m3", "mode": "chunk", "chunk_size": 32, "scale_format": "e8m0"}, 8.25),
        ({"format": "nvfp4"}, 4.5 + 32 / (256 * 128)),  # + the per-tensor fp32 scale
        ({"format": "int8", "weight_mode": "channel"}, 8 + 32 / 128),  # 128 inputs per channel
        ({"format": "int8"}, 8 + 32 / (256 * 128)),
    ],
)
def test_effective_bits_count_every_scale(quantization, bits):
    twin = qbench.preparation.prepare(torch.nn.Sequential(torch.nn.Linear(128, 256)), quantization)
    coverage = qbench.preparation.preparation_report(twin)["coverage"]
    assert coverage["weight_bits"] == pytest.approx(bits, rel=1e-12)
    assert coverage["weight_bits_quantized"] == pytest.approx(bits, rel=1e-12)


def test_weights_left_fp32_count_32_bits():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    twin = qbench.preparation.prepare(
        model, {"format": "mxfp4_e2m1", "layers": [{"match": "1", "enabled": False}]}
    )
    coverage = qbench.preparation.preparation_report(twin)["coverage"]
    assert coverage["weight_bits"] == pytest.approx((4.25 + 32) / 2)
    assert coverage["weight_bits_quantized"] == pytest.approx(4.25)


def test_a_sweep_config_is_not_run_as_one_config(tmp_path, capsys):
    path = sweep_config(tmp_path)
    with pytest.raises(QBenchError, match="a config with a sweep section is many configs"):
        qbench.runner.run(load_config(path))
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(path)])
    assert info.value.code == 2
    assert "allowed: qbench run" in capsys.readouterr().err
