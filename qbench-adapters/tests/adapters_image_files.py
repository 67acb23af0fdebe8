"""Fabricated image files for the dataset and download tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def write_image(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> None:
    """A small solid-colour image; ``value`` is recoverable from the pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def write_corrupt(path: Path) -> None:
    """A file named like a JPEG whose data stops after the JPEG header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    good = path.with_suffix(".tmp.jpg")
    Image.new("RGB", (32, 32), (10, 200, 30)).save(good, format="JPEG")
    path.write_bytes(good.read_bytes()[:40])
    good.unlink()
