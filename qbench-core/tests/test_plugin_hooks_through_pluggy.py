"""Registration hooks are called through pluggy, plugin by plugin; the registry API that
removing a plugin uses; the typed ``Register`` protocol; what the hookspecs say."""

from __future__ import annotations

import inspect
import typing

import pytest
import qbench
import qbench.plugins as plugins
from qbench import hookimpl, hookspecs
from qbench.errors import DuplicateComponentError, UnknownComponentError


class Fmt:
    bits = 4
    max_value = 1.0

    def __init__(self, name: str) -> None:
        self.name = name

    def quantize(self, x, spec, **kwargs):  # noqa: ANN001, ANN003, ANN201
        return x


def _plugin(*names: str, raising: bool = False) -> object:
    class Plugin:
        @hookimpl
        def qbench_register_formats(self, register: qbench.Register) -> None:
            for name in names:
                register(Fmt(name))
            if raising:
                raise RuntimeError("boom")

    return Plugin()


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> plugins.PluginHost:
    """A host with no installed plugin (entry points are not read)."""
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [])
    host = plugins.PluginHost()
    host.discover()
    return host


def test_hooks_are_called_through_pluggy_one_plugin_per_call(host: plugins.PluginHost) -> None:
    """pluggy's call monitoring sees every registration call (a hook called as a plain
    attribute would bypass it), and each call holds exactly one plugin's implementation."""
    calls: list[tuple[str, list[str]]] = []
    host.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: calls.append((name, [i.plugin_name for i in impls])),
        lambda outcome, name, impls, kwargs: None,
    )
    a = host.add_plugin(_plugin("fmt_a"), "a", "dist-a", "1.0")
    b = host.add_plugin(_plugin("fmt_b", raising=True), "b", "dist-b", "2.0")
    host.register_all()
    assert calls == [
        ("qbench_register_formats", ["dist-a:a"]),
        ("qbench_register_formats", ["dist-b:b"]),
    ]
    registry = host.registries["format"]
    assert registry.plugin_of("fmt_a") is a and a.status == "ok"
    # b's hook raised: b alone is broken, and named with its version
    assert b.status == "broken" and "qbench_register_formats raised RuntimeError: boom" in (
        b.error or ""
    )
    assert "fmt_b" not in registry


def test_a_plugin_added_after_registration_is_called_through_pluggy(
    host: plugins.PluginHost,
) -> None:
    host.add_plugin(_plugin("fmt_a"), "a", "dist-a", "1.0")
    host.register_all()
    calls: list[list[str]] = []
    host.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: calls.append([i.plugin_name for i in impls]),
        lambda outcome, name, impls, kwargs: None,
    )
    late = host.add_plugin(_plugin("fmt_late"), "late", "dist-late", "3.0")
    assert calls == [["dist-late:late"]]
    assert host.registries["format"].plugin_of("fmt_late") is late


def test_registry_remove_forgets_a_component_and_its_collision() -> None:
    registry = plugins.Registry("format")
    first = plugins.PluginInfo("a", "dist-a", "1", "a")
    second = plugins.PluginInfo("b", "dist-b", "1", "b")
    registry.add("x", Fmt("x"), first)
    registry.add("y", Fmt("y"), first)
    with pytest.raises(DuplicateComponentError):
        registry.add("x", Fmt("x"), second)
    registry.remove("x")
    assert "x" not in registry and registry.conflicts() == {}
    with pytest.raises(UnknownComponentError):
        registry.get("x")
    registry.add("x", Fmt("x"), second)  # usable again
    assert registry.plugin_of("x") is second and registry.names() == ["x", "y"]
    with pytest.raises(UnknownComponentError):
        registry.remove("never_registered")


def test_unregister_plugin_removes_through_the_registry_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(plugins.DISABLE_ENV, "qbench-formats,qbench-ops,qbench-adapters,qbench-eval")
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [])
    plugins.reset()
    removed: list[tuple[str, str]] = []
    remove = plugins.Registry.remove

    def spy(self: plugins.Registry, name: str) -> None:
        removed.append((self.kind, name))
        remove(self, name)

    monkeypatch.setattr(plugins.Registry, "remove", spy)
    try:
        plugins.register_plugin(_plugin("fmt_1", "fmt_2"), "removable")
        assert plugins.registry("format").names() == ["fmt_1", "fmt_2"]
        plugins.unregister_plugin("removable")
        assert removed == [("format", "fmt_1"), ("format", "fmt_2")]
        assert plugins.registry("format").names() == []
        assert not plugins.host().pm.get_plugins()
        assert [p.name for p in plugins.host().plugins] == []
    finally:
        plugins.reset()


def test_register_is_a_typed_protocol_exported_from_qbench() -> None:
    assert qbench.Register is hookspecs.Register
    assert "Register" in qbench.__all__
    assert typing.Protocol in hookspecs.Register.__mro__
    signature = inspect.signature(hookspecs.Register.__call__)
    assert list(signature.parameters) == ["self", "component", "name"]
    assert not hasattr(hookspecs, "_all_hookspecs")
    for hook in hookspecs.REGISTRATION_HOOKS:
        hints = typing.get_type_hints(getattr(hookspecs, hook))
        assert hints["register"] is hookspecs.Register, hook


BUILT_IN_PLUGINS = [
    "qbench_formats.plugin",
    "qbench_ops.plugin",
    "qbench_adapters.plugin",
    "qbench_eval.plugin",
]


@pytest.mark.parametrize("module_name", BUILT_IN_PLUGINS)
def test_built_in_plugins_annotate_register_with_the_protocol(module_name: str) -> None:
    module = pytest.importorskip(module_name)
    hooks = [name for name in hookspecs.REGISTRATION_HOOKS if hasattr(module, name)]
    assert hooks, module_name
    for hook in hooks:
        hints = typing.get_type_hints(getattr(module, hook))
        assert hints["register"] is hookspecs.Register, (module_name, hook)


def test_every_hookspec_says_all_hooks_run_on_the_first_registry_lookup() -> None:
    """No hook claims to run when "a registry of its kind" is first needed: they all run
    together on the first lookup of any kind (checked below)."""
    assert "registry of its kind" not in (hookspecs.__doc__ or "")
    for hook in hookspecs.REGISTRATION_HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
        assert "first time QBench needs\nany registry" in doc or (
            "first time QBench needs any registry" in " ".join(doc.split())
        ), hook
        assert "looked up" not in doc and "is built" not in doc, hook


def test_first_lookup_of_one_kind_runs_every_registration_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(plugins.DISABLE_ENV, "qbench-formats,qbench-ops,qbench-adapters,qbench-eval")
    plugins.reset()
    called: list[str] = []

    class Plugin:
        pass

    for hook in hookspecs.REGISTRATION_HOOKS:

        def implementation(register: qbench.Register, _hook: str = hook) -> None:
            called.append(_hook)

        implementation.__name__ = hook
        setattr(Plugin, hook, staticmethod(hookimpl(implementation)))
    monkeypatch.setattr(
        plugins.PluginHost,
        "discover",
        lambda self: self.add_plugin(Plugin(), "every-hook"),
    )
    try:
        plugins.registry("reporter")  # one kind asked for
        assert called == list(hookspecs.REGISTRATION_HOOKS)
    finally:
        plugins.reset()
