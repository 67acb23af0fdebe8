"""Where reports go and how they get there (``qbench.output``), with the run's checks that
come before the first batch: a bad output location, another run's report, a model whose
output width is not the dataset's; reports as complete sets; exit status 3 on a FAIL."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
from pathlib import Path

import pytest
import qbench
import qbench.plugins as plugins
import torch
import yaml
from core_toys import ToyMetric, toy_config
from qbench import hookimpl
from qbench.cli import main
from qbench.types import ModelBundle


class TextReporter:
    """A second reporter, so a set has two files; ``fail`` makes it raise that exception."""

    name = "text"
    fail: BaseException | None = None
    kill = False

    def write(self, report, out_dir):
        path = Path(out_dir) / "report.txt"
        path.write_text(f"{report['name']}: {report['dataset']['images']} images\n")
        if self.kill:  # as kill -9 would, halfway through the set
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fail is not None:
            raise self.fail
        return [path]


class VerdictMetric(ToyMetric):
    """A metric whose verdict is FAIL, as an audit that found unrepresentable values."""

    name = "verdict"
    options_schema = None

    def result(self):
        return {**super().result(), "status": "FAIL", "warnings": ["3 values are NaN"]}


class _Extra:
    def __init__(self, reporter):
        self.reporter = reporter

    @hookimpl
    def qbench_register_reporters(self, register):
        register(self.reporter)

    @hookimpl
    def qbench_register_metrics(self, register):
        register(VerdictMetric)


@pytest.fixture
def text_reporter(toy_plugins):
    reporter = TextReporter()
    plugins.register_plugin(_Extra(reporter), "extra")
    return reporter


def _config(**changes):
    return {**toy_config(output={"reporters": ["json", "text"]}), **changes}


def _batches_seen(monkeypatch):
    seen = []
    update = ToyMetric.update
    monkeypatch.setattr(
        ToyMetric, "update", lambda self, batch: (seen.append(1), update(self, batch))
    )
    return seen


def test_a_set_is_written_whole_and_replaces_the_previous_one(text_reporter, tmp_path):
    first = qbench.run(_config(name="set"), output=tmp_path)
    assert sorted(p.name for p in first.files) == ["report.json", "report.txt"]
    assert all(p.parent == first.out_dir for p in first.files)
    qbench.run(_config(name="set"), output=tmp_path)
    assert sorted(os.listdir(first.out_dir)) == ["report.json", "report.txt"]
    assert sorted(os.listdir(first.out_dir.parent)) == ["set"]  # no staging left behind


def test_a_disk_that_fills_on_the_second_file_keeps_the_old_set_and_saves_the_results(
    text_reporter, tmp_path, monkeypatch
):
    old = qbench.run(_config(name="full"), output=tmp_path, limit=20)
    before = {p.name: p.read_bytes() for p in old.out_dir.iterdir()}
    monkeypatch.setenv("QBENCH_FALLBACK_DIR", str(tmp_path / "fallback"))
    text_reporter.fail = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(qbench.QBenchError) as info:
        qbench.run(_config(name="full"), output=tmp_path, limit=20)
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message
    saved = Path(message.rsplit("saved to ", 1)[1])
    assert json.loads(saved.read_text())["dataset"]["images"] == 20
    assert saved.is_relative_to(tmp_path / "fallback")
    assert {p.name: p.read_bytes() for p in old.out_dir.iterdir()} == before
    assert sorted(os.listdir(old.out_dir.parent)) == ["full"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill_9_while_writing_leaves_the_old_set_and_the_next_run_cleans_up(
    text_reporter, tmp_path
):
    old = qbench.run(_config(name="killed"), output=tmp_path)
    before = {p.name: p.read_bytes() for p in old.out_dir.iterdir()}
    text_reporter.kill = True
    pid = os.fork()
    if pid == 0:  # the child runs and is killed inside the second reporter
        try:
            qbench.run(_config(name="killed"), output=tmp_path, limit=4, overwrite=True)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert {p.name: p.read_bytes() for p in old.out_dir.iterdir()} == before
    assert len(os.listdir(old.out_dir.parent)) == 2  # the set and the dead run's staging
    text_reporter.kill = False
    qbench.run(_config(name="killed"), output=tmp_path, limit=4, overwrite=True)
    assert sorted(os.listdir(old.out_dir.parent)) == ["killed"]
    assert json.loads((old.out_dir / "report.json").read_text())["dataset"]["images"] == 4


def test_a_broken_reporter_is_named_and_the_others_still_write(text_reporter, tmp_path):
    text_reporter.fail = KeyError("x")
    with pytest.raises(qbench.QBenchError) as info:
        qbench.run(_config(name="broken"), output=tmp_path)
    message = str(info.value)
    assert message.startswith("reporter 'text' ((in-process) -) failed: KeyError: 'x'")
    assert (tmp_path / "toy_mlp" / "broken" / "report.json").is_file()


@pytest.mark.parametrize(
    "problem",
    ["a file", "a long name"],
)
def test_a_bad_output_location_is_refused_before_the_first_batch(
    toy_plugins, tmp_path, monkeypatch, problem
):
    seen = _batches_seen(monkeypatch)
    if problem == "a file":
        output = tmp_path / "taken"
        output.write_text("not a folder")
        expected = "is a file, not a folder"
    else:
        output = tmp_path / ("x" * 300)
        expected = "is 300 bytes; names of at most 200 bytes are allowed"
    with pytest.raises(qbench.QBenchError, match=expected) as info:
        qbench.run(toy_config(name="where"), output=output)
    assert "\n" not in str(info.value) and str(output)[:20] in str(info.value)
    assert seen == []


def test_an_unwritable_output_folder_is_refused_before_the_first_batch(
    toy_plugins, tmp_path, monkeypatch
):
    """As root (CI), permissions do not stop writes: the probe's failure is simulated."""
    import tempfile

    seen = _batches_seen(monkeypatch)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(qbench.QBenchError, match="cannot write reports under .*Permission denied"):
        qbench.run(toy_config(name="ro"), output=tmp_path / "ro")
    assert seen == []


def test_another_runs_report_is_not_replaced_without_overwrite(toy_plugins, tmp_path):
    full = qbench.run(toy_config(name="same"), output=tmp_path)
    with pytest.raises(qbench.QBenchError, match="holds the report of another run .20 images"):
        qbench.run(toy_config(name="same"), output=tmp_path, limit=5)
    assert json.loads((full.out_dir / "report.json").read_text())["dataset"]["images"] == 20
    qbench.run(toy_config(name="same"), output=tmp_path)  # the same run again: replaced
    limited = qbench.run(toy_config(name="same"), output=tmp_path, limit=5, overwrite=True)
    assert json.loads((limited.out_dir / "report.json").read_text())["dataset"]["images"] == 5


def test_reports_honour_the_umask(text_reporter, tmp_path):
    previous = os.umask(0o022)
    try:
        result = qbench.run(_config(name="modes"), output=tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(result.out_dir.stat().st_mode) == 0o755


def _cli_run(tmp_path, config, *flags):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--output", str(tmp_path / "out"), "--no-progress", *flags])
    return info.value.code


def test_a_failed_audit_exits_3_after_writing_the_reports(text_reporter, tmp_path, capsys):
    config = toy_config(name="cfg", evaluation={"metrics": ["accuracy", "verdict"]})
    assert _cli_run(tmp_path, config) == 3
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("qbench: FAIL: cfg (verdict) said FAIL; reports were written")
    assert "WARNING: 3 values are NaN" in captured.out
    saved = json.loads((tmp_path / "out" / "toy_mlp" / "cfg" / "report.json").read_text())
    assert saved["warnings"] == ["3 values are NaN"]
    assert _cli_run(tmp_path, config, "--no-fail-on-audit") == 0
    assert _cli_run(tmp_path, toy_config(name="cfg")) == 0


class _Skipping(list):
    """Toy batches that skipped two unreadable files and say which label space they use."""

    skipped = [{"path": "a.jpg", "reason": "truncated"}, {"path": "b.png", "reason": "empty"}]
    info = {"num_classes": 3}


def test_skipped_images_reach_the_report(toy_plugins, tmp_path, monkeypatch):
    from core_toys import ToyDataset

    build = ToyDataset.build
    monkeypatch.setattr(
        ToyDataset,
        "build",
        lambda self, options, *, bundle: _Skipping(build(self, options, bundle=bundle)),
    )
    report = qbench.run(toy_config(name="skips"), output=tmp_path).report
    assert report["dataset"]["skipped_count"] == 2
    assert report["dataset"]["skipped"][1] == {"path": "b.png", "reason": "empty"}
    assert report["warnings"][0].startswith("dataset toyset: 2 unreadable image(s) skipped")


@pytest.mark.parametrize("classes", [3, 10])
def test_a_model_whose_output_width_is_not_the_datasets_is_refused(
    toy_plugins, tmp_path, monkeypatch, classes
):
    from core_toys import ToyAdapter, ToyDataset

    build = ToyDataset.build

    def batches(self, options, *, bundle):
        out = _Skipping(build(self, options, bundle=bundle))
        out.skipped, out.info = [], {"num_classes": classes}
        return out

    monkeypatch.setattr(ToyDataset, "build", batches)
    if classes == 3:  # the toy model's width: runs
        assert qbench.run(toy_config(name="width"), output=tmp_path).report["dataset"]["images"]
        monkeypatch.setattr(
            ToyAdapter,
            "build",
            lambda self, options, *, device="cpu": ModelBundle(
                model=torch.nn.Linear(4, 2), name="narrow", num_classes=2
            ),
        )
        expected = "outputs 2 classes but the dataset has 3"
    else:
        expected = "'toy_mlp' outputs 3 classes but the dataset has 10"
    with pytest.raises(qbench.QBenchError, match=expected):
        qbench.run(toy_config(name="width"), output=tmp_path)


def test_validate_builds_what_run_would_refuse_before_data(toy_plugins, tmp_path, capsys):
    config = toy_config(name="v", quantization={"format": "toy3", "layers": [{"match": "nope*"}]})
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as info:
        main(["validate", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope*" in err[0] and str(path) in err[0]
    with pytest.raises(SystemExit) as info:
        main(["validate", "--schema-only", str(path)])
    assert info.value.code == 0
    path.write_text(yaml.safe_dump(toy_config(name="v")))
    with pytest.raises(SystemExit) as info:
        main(["validate", str(path), "--output", str(tmp_path / "out")])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "ok: model toy_mlp built" in out and "not checked: images are not decoded" in out
    assert not (tmp_path / "out").exists()


def test_a_model_that_ran_mostly_fp32_starts_its_report_with_a_warning(toy_plugins, tmp_path):
    """The toy MLP's second Linear (3x4 weights of 28) disabled: 57.14 % quantized."""
    quantization = {"format": "toy3", "layers": [{"match": "2", "enabled": False}]}
    report = qbench.run(toy_config(name="cov", quantization=quantization), output=tmp_path).report
    coverage = report["preparation"]["coverage"]
    assert (coverage["weight_elements"], coverage["weight_elements_quantized"]) == (28, 16)
    assert report["warnings"][0].startswith(
        "only 57.14 % of the model's weight elements ran quantized (below "
        "evaluation.min_weight_coverage 99 %); largest left FP32: 2 (Linear, 12: disabled by "
        "quantization.layers[0])"
    )
    relaxed = toy_config(
        name="cov2",
        quantization=quantization,
        evaluation={"metrics": ["accuracy"], "min_weight_coverage": 0.5},
    )
    assert qbench.run(relaxed, output=tmp_path).report["warnings"] == []


def test_inspect_lists_every_layer_and_what_stays_fp32_without_evaluating(
    toy_plugins, tmp_path, capsys, monkeypatch
):
    seen = _batches_seen(monkeypatch)
    quantization = {"format": "toy3", "layers": [{"match": "2", "enabled": False}]}
    path = tmp_path / "inspect.yaml"
    path.write_text(yaml.safe_dump(toy_config(name="look", quantization=quantization)))
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(path)])
    assert info.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["0", "Linear", "weight=toy3", "tensor,", "input=toy3", "tensor"]
    assert any(
        line.startswith("2 ") and "FP32: disabled by quantization.layers[0]" in line for line in out
    )
    assert any(line.startswith("1 ") and "FP32: no op registered for ReLU" in line for line in out)
    assert out[-1].startswith("coverage: 57.14 % of 28 weight elements quantized")
    assert seen == []  # no metric saw a batch: nothing was evaluated
    with pytest.raises(SystemExit):
        main(["inspect", "--json", str(path)])
    report = json.loads(capsys.readouterr().out)
    assert report["sample_images"] == 1 and report["coverage"]["weight_elements"] == 28
