"""qbench.memory: with the tuning, a freed activation-sized block is reused without page
faults; without it, every allocation of one faults its pages in afresh.

Each case runs in a fresh interpreter: the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = """
import json, resource, sys
import torch
import qbench.memory

tuned = qbench.memory.keep_freed_memory() if sys.argv[1] == "tune" else False

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def churn(times):
    for _ in range(times):
        torch.ones(16 << 20).sum()  # a 64 MiB block, allocated, touched and freed

def window():
    before = faults()
    churn(5)
    return faults() - before

churn(2)  # the heap grows to hold the block once
# A small allocation made meanwhile (torch's thread pools and caches, early on) can land in
# the freed block and send the next one to fresh pages until the heap settles: the fewest
# faults of a few windows is what reuse gives. Untuned, every churn faults in every window.
fewest = min(window() for _ in range(4))
print(json.dumps({"tuned": tuned, "again": qbench.memory.keep_freed_memory(),
                  "faults": fewest}))
"""

PAGES_PER_BLOCK = (64 << 20) // 4096


def _churn(mode: str, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    tuned = _churn("tune")
    if not tuned["tuned"]:
        pytest.skip("this C library has no mallopt to tune (not glibc)")
    assert tuned["again"] is True  # idempotent
    plain = _churn("plain")
    assert tuned["faults"] < PAGES_PER_BLOCK // 4  # reused from the heap
    assert plain["faults"] > 4 * tuned["faults"]  # each block mapped and faulted anew
    if not _huge_pages_always():  # 2 MiB pages would fault 512x less often
        assert plain["faults"] >= 5 * PAGES_PER_BLOCK // 2


def _huge_pages_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as f:
            return "[always]" in f.read()
    except OSError:
        return False


def test_the_environment_turns_it_off() -> None:
    off = _churn("tune", QBENCH_MALLOC_TUNING="0")
    assert off["tuned"] is False and off["again"] is False


def test_qbench_run_on_the_command_line_tunes_its_process(
    toy_plugins, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qbench.memory
    import yaml
    from core_toys import toy_config
    from qbench.cli import main

    calls: list[bool] = []
    monkeypatch.setattr(qbench.memory, "keep_freed_memory", lambda: calls.append(True) or True)
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(toy_config()))
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--limit", "2", "--output", str(tmp_path), "--no-progress"])
    assert info.value.code == 0 and calls == [True]


class _Cycle:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_objects_frozen_keeps_earlier_objects_out_of_collections_until_exit() -> None:
    import gc
    import weakref

    from qbench.memory import objects_frozen

    assert gc.get_freeze_count() == 0
    old = _Cycle()
    old_ref = weakref.ref(old)
    with objects_frozen() as froze:
        assert froze and gc.get_freeze_count() > 0
        del old
        new = _Cycle()
        new_ref = weakref.ref(new)
        del new
        gc.collect()
        # garbage made during the block is collected; garbage among the frozen objects waits
        assert new_ref() is None and old_ref() is not None
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old_ref() is None  # handed back at exit, and collected as usual


def test_objects_frozen_leaves_a_freeze_made_by_someone_else() -> None:
    import gc

    from qbench.memory import objects_frozen

    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with objects_frozen() as froze:
            assert not froze
        assert gc.get_freeze_count() == count  # their objects stay frozen
    finally:
        gc.unfreeze()
