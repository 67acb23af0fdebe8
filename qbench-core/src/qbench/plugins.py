"""Plugin discovery and the component registries.

pluggy's ``load_setuptools_entrypoints`` stops at the first broken plugin, so QBench walks
the ``qbench`` entry-point group itself: each load and each registration is wrapped, and a
failure is recorded with the distribution's name and version while every other plugin keeps
working. First-party packages are discovered exactly the same way as third-party ones.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import DuplicateComponentError, QBenchError, UnknownComponentError

ENTRY_POINT_GROUP = "qbench"
DISABLE_ENV = "QBENCH_DISABLE_PLUGINS"
KINDS = tuple(hookspecs.REGISTRATION_HOOKS.values())


@dataclass
class PluginInfo:
    """One entry point of the ``qbench`` group (or a plugin registered in-process)."""

    name: str
    distribution: str
    version: str
    value: str
    status: str = "ok"  # ok | broken | disabled
    error: str | None = None
    components: dict[str, list[str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.value,
            "status": self.status,
            "error": self.error,
            "components": {k: sorted(v) for k, v in self.components.items() if v},
        }


@dataclass
class Entry:
    component: Any
    plugin: PluginInfo


class Registry:
    """Components of one kind by name, each remembering the plugin that registered it."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._conflicts: dict[str, list[PluginInfo]] = {}

    def add(self, name: str, component: Any, plugin: PluginInfo) -> None:
        if not isinstance(name, str) or not name:
            raise QBenchError(f"{self.kind} registered without a name: {component!r}")
        if name in self._entries:
            first = self._entries[name].plugin
            self._conflicts.setdefault(name, [first]).append(plugin)
            raise DuplicateComponentError(
                f"duplicate {self.kind} {name!r}: registered by {first.label} "
                f"and again by {plugin.label}; the second registration was refused"
            )
        self._entries[name] = Entry(component, plugin)

    def get(self, name: str) -> Any:
        if name in self._conflicts:
            labels = " and ".join(p.label for p in self._conflicts[name])
            raise DuplicateComponentError(
                f"{self.kind} {name!r} is registered by more than one plugin ({labels}); "
                f"uninstall one or block it with {DISABLE_ENV}"
            )
        try:
            return self._entries[name].component
        except KeyError:
            raise UnknownComponentError(self.kind, name, self._entries) from None

    def plugin_of(self, name: str) -> PluginInfo:
        self.get(name)
        return self._entries[name].plugin

    def conflicts(self) -> dict[str, list[PluginInfo]]:
        """Names registered by more than one plugin (unusable until one is removed)."""
        return dict(self._conflicts)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, Any]]:
        for name in self.names():
            yield name, self._entries[name].component

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class PluginHost:
    """The plugin manager, the list of plugins found, and one registry per kind."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._info_by_plugin: dict[int, PluginInfo] = {}
        self.registries: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
        self._registered = False

    # -- discovery ---------------------------------------------------------------------

    def discover(self) -> None:
        disabled = {s.strip() for s in os.environ.get(DISABLE_ENV, "").split(",") if s.strip()}
        seen: set[tuple[str, str]] = set()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "unknown"
            version = dist.version if dist is not None else "?"
            if (ep.name, dist_name) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, dist_name))
            info = PluginInfo(ep.name, dist_name, version, ep.value)
            self.plugins.append(info)
            if ep.name in disabled or dist_name in disabled:
                info.status = "disabled"
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not break the others
                self._mark_broken(info, f"failed to import {ep.value}: {_describe(exc)}")
                continue
            self._add(plugin, info)

    def add_plugin(
        self, plugin: Any, name: str, distribution: str = "(in-process)", version: str = "-"
    ) -> PluginInfo:
        """Register a plugin object directly (tests, notebooks); same rules as entry points."""
        info = PluginInfo(name, distribution, version, repr(plugin))
        self.plugins.append(info)
        self._add(plugin, info)
        if self._registered:  # registries already built: register this one now
            self._register_plugin(plugin, info)
        return info

    def _add(self, plugin: Any, info: PluginInfo) -> None:
        try:
            self.pm.register(plugin, name=f"{info.distribution}:{info.name}")
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._mark_broken(info, f"failed to register: {_describe(exc)}")
            return
        self._info_by_plugin[id(plugin)] = info

    def _mark_broken(self, info: PluginInfo, error: str) -> None:
        info.status = "broken"
        info.error = error
        print(f"qbench: plugin {info.name!r} from {info.label} is broken: {error}", file=sys.stderr)

    # -- registration ------------------------------------------------------------------

    def register_all(self) -> None:
        if self._registered:
            return
        self._registered = True
        for plugin in list(self.pm.get_plugins()):
            info = self._info_by_plugin.get(id(plugin))
            if info is not None:
                self._register_plugin(plugin, info)

    def _register_plugin(self, plugin: Any, info: PluginInfo) -> None:
        for hook_name, kind in hookspecs.REGISTRATION_HOOKS.items():
            impl = getattr(plugin, hook_name, None)
            if impl is None or not self.pm.is_registered(plugin):
                continue
            registry = self.registries[kind]
            staged: list[tuple[str, Any]] = []

            def register(component: Any, name: str | None = None, _staged=staged) -> None:
                _staged.append((name or getattr(component, "name", None), component))

            try:
                impl(register=register)
            except Exception as exc:
                self._mark_broken(info, f"{hook_name} raised {_describe(exc)}")
                continue
            for name, component in staged:
                try:
                    registry.add(name, component, info)
                except QBenchError as exc:
                    info.error = str(exc) if info.error is None else f"{info.error}; {exc}"
                    print(f"qbench: {exc}", file=sys.stderr)
                    continue
                info.components.setdefault(kind, []).append(name)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


_host: PluginHost | None = None
_lock = threading.RLock()


def host() -> PluginHost:
    """The process-wide plugin host, discovering and registering plugins on first use."""
    global _host
    with _lock:
        if _host is None:
            h = PluginHost()
            h.discover()
            h.register_all()
            _host = h
        return _host


def reset() -> None:
    """Forget discovered plugins (tests; after installing a plugin in-process)."""
    global _host
    with _lock:
        _host = None


def registry(kind: str) -> Registry:
    if kind not in KINDS:
        raise QBenchError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
    return host().registries[kind]


def get(kind: str, name: str) -> Any:
    return registry(kind).get(name)


def register_plugin(plugin: Any, name: str) -> PluginInfo:
    """Add a plugin object in-process, as if an installed distribution had declared it."""
    return host().add_plugin(plugin, name)


def unregister_plugin(name: str) -> None:
    """Remove an in-process plugin and everything it registered."""
    h = host()
    for info in [p for p in h.plugins if p.name == name]:
        h.plugins.remove(info)
        for kind, names in info.components.items():
            reg = h.registries[kind]
            for n in names:
                entry = reg._entries.get(n)
                if entry is not None and entry.plugin is info:
                    del reg._entries[n]
                reg._conflicts.pop(n, None)
        for plugin in list(h.pm.get_plugins()):
            if h._info_by_plugin.get(id(plugin)) is info:
                h.pm.unregister(plugin)
