"""Registers this package's formats and presets with QBench (entry point in pyproject.toml)."""

from __future__ import annotations

from qbench import Register, hookimpl


@hookimpl
def qbench_register_formats(register: Register) -> None:
    """Every element format, scale format and block-scaled preset in :mod:`.catalog`."""
    from .catalog import ALL_FORMATS

    for fmt in ALL_FORMATS:
        register(fmt)
