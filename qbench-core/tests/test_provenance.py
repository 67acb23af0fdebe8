"""Every report says what produced it (qbench.provenance), and ``qbench run --reproduce``
reruns it and says whether the numbers match."""

from __future__ import annotations

import json

import pytest
import qbench
import torch
from core_toys import toy_config
from qbench import provenance
from qbench.cli import main


def test_a_report_records_what_produced_it(toy_plugins, tmp_path):
    report = qbench.run(toy_config(name="prov", seed=3), output=tmp_path, limit=12).report
    recorded = report["provenance"]
    assert recorded["config"]["dataset"]["limit"] == 12  # the data as run, --limit included
    assert recorded["config"]["quantization"] == {"format": "toy3"}
    assert recorded["config"]["memory_format"] == "auto"  # defaults filled in
    assert recorded["seed"] == 3 and recorded["threads"] == torch.get_num_threads()
    assert recorded["versions"]["qbench"] == qbench.__version__
    assert recorded["versions"]["torch"] == torch.__version__
    assert recorded["device"].startswith("cpu: ")
    assert "(in-process) -" in recorded["plugins"]
    assert len(recorded["weights_sha256"]) == 64 and recorded["started"].endswith("+00:00")
    timings = report["timings"]  # where the time went
    assert list(timings) == ["build", "prepare", "batches", "results"]
    assert all(value >= 0 for value in timings.values())
    assert sum(timings.values()) <= report["elapsed_s"] + 1e-3


def test_fingerprints_change_with_the_weights_and_the_files(tmp_path):
    model = torch.nn.Linear(3, 2)
    before = provenance.weights_fingerprint(model)
    assert provenance.weights_fingerprint(model) == before
    with torch.no_grad():
        model.weight[0, 0] += 1e-6
    assert provenance.weights_fingerprint(model) != before

    class Files:
        def __init__(self, samples):
            self.samples = samples

    (tmp_path / "a.png").write_bytes(b"1234")
    (tmp_path / "b.png").write_bytes(b"12")
    first = provenance.data_fingerprint(Files([(tmp_path / "a.png", 0), (tmp_path / "b.png", 1)]))
    assert first == provenance.data_fingerprint(
        Files([(str(tmp_path / "a.png"), 0), (str(tmp_path / "b.png"), 1)])
    )
    assert first != provenance.data_fingerprint(Files([(tmp_path / "a.png", 0)]))
    assert first != provenance.data_fingerprint(
        Files([(tmp_path / "a.png", 1), (tmp_path / "b.png", 1)])
    )
    assert provenance.data_fingerprint([(0, 1)]) is None  # no samples listed


def test_reproduce_reruns_and_says_whether_the_numbers_match(toy_plugins, tmp_path, capsys):
    first = qbench.run(toy_config(name="again"), output=tmp_path / "first")
    saved = first.out_dir / "report.json"
    with pytest.raises(SystemExit) as info:
        main(["run", "--reproduce", str(saved), "--output", str(tmp_path / "second")])
    assert info.value.code == 0
    assert "reproduced: every number of" in capsys.readouterr().out
    assert (tmp_path / "second" / "toy_mlp" / "again" / "report.json").is_file()

    tampered = json.loads(saved.read_text())
    tampered["metrics"]["accuracy"]["agreement"] = 0.123
    saved.write_text(json.dumps(tampered))
    with pytest.raises(SystemExit) as info:
        main(["run", "--reproduce", str(saved), "--output", str(tmp_path / "third")])
    assert info.value.code == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("qbench: NOT reproduced: 1 value(s) differ")
    assert "accuracy.agreement: 0.123 then" in last


def test_reproduce_refuses_a_file_that_is_not_a_report(toy_plugins, tmp_path, capsys):
    bogus = tmp_path / "notes.json"
    bogus.write_text('{"hello": 1}')
    with pytest.raises(SystemExit) as info:
        main(["run", "--reproduce", str(bogus)])
    assert info.value.code == 2
    assert "is not a QBench report with provenance" in capsys.readouterr().err
