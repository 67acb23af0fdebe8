"""Print ``name==version`` for each package named on the command line, as ``uv.lock`` pins it
(what ``wheels.sh`` downloads for a device machine, so that it runs what CI runs). A name
that ``uv.lock`` does not hold is an error, not an unpinned download.

    python3 benchmarks/device/pins.py jsonschema referencing
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

LOCK = Path(__file__).resolve().parents[2] / "uv.lock"


def pins(names: list[str], lock: str) -> list[str]:
    """``name==version`` for each of ``names`` from the text of a ``uv.lock``."""
    locked = {package["name"]: package["version"] for package in tomllib.loads(lock)["package"]}
    missing = [name for name in names if name not in locked]
    if missing:
        raise SystemExit(f"{LOCK}: no package {missing[0]!r} pinned (is it a dependency?)")
    return [f"{name}=={locked[name]}" for name in names]


if __name__ == "__main__":
    print(" ".join(pins(sys.argv[1:], LOCK.read_text())))
