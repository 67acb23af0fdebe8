"""Metrics stream: peak RSS for 10x more images grows by less than 10 %."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("_memory_probe.py")


def _peak_kib(batches: int) -> int:
    done = subprocess.run(
        [sys.executable, str(PROBE), str(batches)], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is KiB on Linux only")
def test_peak_rss_does_not_grow_with_images() -> None:
    # Each batch's largest output is 128 x 8192 float32 = 4 MiB per model; keeping them
    # (a non-streaming metric) would add ~240 MiB over 30 batches, far above the 10 % bound.
    small = _peak_kib(3)
    large = _peak_kib(30)
    assert large < small * 1.10, f"peak RSS {small} KiB for 3 batches, {large} KiB for 30"
