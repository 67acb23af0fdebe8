"""A whole `qbench run` streams: peak RSS for 10x more images grows by less than 10 %."""

from __future__ import annotations

import textwrap

import yaml
from conftest import REPO
from qbench.testing import run_python

MEASURE = textwrap.dedent(
    """
    import resource, sys
    import qbench
    result = qbench.run(sys.argv[1], limit=int(sys.argv[2]), output=sys.argv[3])
    assert result.report["dataset"]["images"] == int(sys.argv[2])
    print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def _peak_kib(config, images: int, out) -> int:
    result = run_python(MEASURE, str(config), str(images), str(out), timeout=600)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("peak_kib")[-1])


def test_peak_memory_does_not_grow_with_the_dataset(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config["dataset"]["batch_size"] = 10  # 5 batches against 50: many more metric updates
    path = tmp_path / "memory.yaml"
    path.write_text(yaml.safe_dump(config))
    small = _peak_kib(path, 50, tmp_path / "small")
    large = _peak_kib(path, 500, tmp_path / "large")
    print(f"peak RSS: {small} KiB for 50 images, {large} KiB for 500")
    assert large < small * 1.10, (small, large)
