"""A whole `qbench run` streams: peak RSS for 10x more images grows by less than 10 %."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from integration_helpers import REPO
from qbench.testing import run_python

MEASURE = textwrap.dedent(
    """
    import resource, sys
    import qbench, qbench.memory
    if sys.argv[4] == "tuned":  # as `qbench run` on the command line does
        qbench.memory.keep_freed_memory()  # a no-op where there is no glibc
    result = qbench.run(sys.argv[1], limit=int(sys.argv[2]), output=sys.argv[3])
    assert result.report["dataset"]["images"] == int(sys.argv[2])
    print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def _peak_kib(config, images: int, out, malloc: str) -> int:
    result = run_python(MEASURE, str(config), str(images), str(out), malloc, timeout=600)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("peak_kib")[-1])


@pytest.mark.parametrize("malloc", ["default", "tuned"])
def test_peak_memory_does_not_grow_with_the_dataset(tmp_path, malloc):
    """Also with freed memory kept in the process (qbench.memory, what the CLI does): kept
    blocks are reused, so the heap does not grow batch after batch."""
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config["dataset"]["batch_size"] = 10  # 5 batches against 50: many more metric updates
    path = tmp_path / "memory.yaml"
    path.write_text(yaml.safe_dump(config))
    small = _peak_kib(path, 50, tmp_path / "small", malloc)
    large = _peak_kib(path, 500, tmp_path / "large", malloc)
    print(f"peak RSS: {small} KiB for 50 images, {large} KiB for 500")
    assert large < small * 1.10, (small, large)
