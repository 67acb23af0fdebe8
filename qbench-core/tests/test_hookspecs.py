"""Every hook is documented and tested (datasette's habit): adding an undocumented or
untested hook fails here."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import qbench.plugins as plugins
from qbench import hookimpl, hookspecs

HOOKS = [name for name in dir(hookspecs) if name.startswith("qbench_")]
REPO = Path(__file__).resolve().parents[2]


def test_registration_table_lists_every_hook():
    assert sorted(HOOKS) == sorted(hookspecs.REGISTRATION_HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    function = getattr(hookspecs, hook)
    doc = inspect.getdoc(function) or ""
    assert len(doc.splitlines()[0]) > 10, f"{hook} has no summary line"
    assert "Called" in doc, f"{hook} does not say when it is called"
    for parameter in inspect.signature(function).parameters:
        assert f":param {parameter}:" in doc, f"{hook} does not document {parameter}"
    assert inspect.signature(function).parameters["register"].annotation, f"{hook} is untyped"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_mentioned_in_package_docs(hook):
    readme = (REPO / "qbench-core" / "README.md").read_text()
    assert f"`{hook}(register)`" in readme, f"{hook} missing from qbench-core/README.md"


@pytest.mark.parametrize("hook, kind", sorted(hookspecs.REGISTRATION_HOOKS.items()))
def test_hook_registers_into_its_registry(hook, kind, monkeypatch):
    """Each hook, implemented by an in-process plugin, fills the registry of its kind, and the
    register callable is bound to that plugin (so collisions can name it)."""
    monkeypatch.setenv(plugins.DISABLE_ENV, "qbench-formats,qbench-ops,qbench-adapters,qbench-eval")
    plugins.reset()

    class Component:
        """Satisfies every kind's protocol (registration checks what its kind needs)."""

        name = f"probe_{kind}"
        bits = 4
        max_value = 1.0

        def quantize(self, x, spec, **kwargs):
            return x

        def from_module(self, module, specs, *, name):
            return module

        def build(self, options, **kwargs):
            return None

        def attach(self, reference, quantized, context):
            pass

        def update(self, batch):
            pass

        def result(self):
            return {}

        def write(self, report, out_dir):
            return []

    class Plugin:
        pass

    def implementation(register):
        register(Component())

    implementation.__name__ = hook
    setattr(Plugin, hook, staticmethod(hookimpl(implementation)))
    info = plugins.register_plugin(Plugin(), "probe")
    try:
        assert plugins.registry(kind).names() == [f"probe_{kind}"]
        assert plugins.registry(kind).plugin_of(f"probe_{kind}") is info
        assert info.components == {kind: [f"probe_{kind}"]}
        for other in set(hookspecs.REGISTRATION_HOOKS.values()) - {kind}:
            assert len(plugins.registry(other)) == 0
    finally:
        plugins.reset()
