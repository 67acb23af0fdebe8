"""``qbench.prepare`` is the plain function of DESIGN.md §5; the module that holds it and the
tools around it is ``qbench.preparation``, so importing it rebinds nothing."""

from __future__ import annotations

import importlib
import inspect
import types

import qbench


def test_prepare_stays_a_function_after_the_module_is_imported() -> None:
    preparation = importlib.import_module("qbench.preparation")
    assert inspect.isfunction(qbench.prepare)
    assert type(preparation) is types.ModuleType  # a plain module, not a callable one
    assert qbench.preparation is preparation
    assert all(
        inspect.isfunction(getattr(preparation, name))
        for name in ("prepare", "observe", "preparation_report", "quantized_modules")
    )
