"""Plugin discovery and the component registries.

pluggy's ``load_setuptools_entrypoints`` stops at the first broken plugin, so QBench walks
the ``qbench`` entry-point group itself: each load and each registration is wrapped, and a
failure is recorded with the distribution's name and version while every other plugin keeps
working. First-party packages are discovered exactly the same way as third-party ones.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
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

    def remove(self, name: str) -> None:
        """Forget ``name``: its component and any collision recorded over it (so a name two
        plugins fought over is usable again once one of them is removed)."""
        if name not in self._entries and name not in self._conflicts:
            raise UnknownComponentError(self.kind, name, self._entries)
        self._entries.pop(name, None)
        self._conflicts.pop(name, None)

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
        # loaded plugin objects in discovery order (pluggy's get_plugins() is a set)
        self._loaded: list[tuple[Any, PluginInfo]] = []
        self.registries: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
        self._registered = False

    # -- discovery ---------------------------------------------------------------------

    def discover(self) -> None:
        """Load every entry point of the ``qbench`` group, in a fixed order: sorted by
        distribution name (normalized as PyPI does: case, ``-``, ``_`` and ``.`` ignored),
        then entry-point name. ``importlib.metadata`` returns them in an order that varies
        between runs and machines; components are registered in this order
        (:meth:`register_all`), so which of two colliding registrations is refused does not."""
        disabled = {s.strip() for s in os.environ.get(DISABLE_ENV, "").split(",") if s.strip()}
        seen: set[tuple[str, str]] = set()
        found = []
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "unknown"
            version = dist.version if dist is not None else "?"
            found.append((_sort_key(dist_name), dist_name, ep.name, ep.value, version, ep))
        found.sort(key=lambda item: item[:4])
        for _, dist_name, _, _, version, ep in found:
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
        self._loaded.append((plugin, info))

    def _mark_broken(self, info: PluginInfo, error: str) -> None:
        """Record a failure against its plugin (every failure, not only the last) and report
        it once on stderr, naming the distribution and version."""
        info.status = "broken"
        info.error = error if info.error is None else f"{info.error}; {error}"
        print(f"qbench: plugin {info.name!r} from {info.label} is broken: {error}", file=sys.stderr)

    # -- registration ------------------------------------------------------------------

    def register_all(self) -> None:
        """Call every plugin's registration hooks, plugin by plugin in discovery order
        (entry points sorted by distribution name, then entry-point name; then in-process
        plugins in the order they were added).

        When two plugins register a component of one kind under one name, the *first* in that
        order is kept and the second registration is refused; the name is then unusable
        until one of them is uninstalled or blocked (:data:`DISABLE_ENV`), and both plugins
        are named. A component that does not satisfy its protocol
        (:func:`component_problem`) is refused and recorded against its plugin, which is
        listed as broken; its other components are registered.
        """
        if self._registered:
            return
        self._registered = True
        for plugin, info in list(self._loaded):
            if self.pm.is_registered(plugin):
                self._register_plugin(plugin, info)

    def _register_plugin(self, plugin: Any, info: PluginInfo) -> None:
        """Call ``plugin``'s registration hooks through pluggy, one plugin at a time: each hook
        is called through a :meth:`pluggy.PluginManager.subset_hook_caller` that leaves out
        every other plugin, so that everything registered (and every failure) is attributed
        to this plugin's distribution."""
        if not self.pm.is_registered(plugin):
            return
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        for hook_name, kind in hookspecs.REGISTRATION_HOOKS.items():
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            if not caller.get_hookimpls():
                continue
            registry = self.registries[kind]
            staged: list[tuple[str, Any]] = []

            def register(component: object, name: str | None = None, _staged=staged) -> None:
                _staged.append((name or getattr(component, "name", None), component))

            try:
                caller(register=register)
            except Exception as exc:
                self._mark_broken(info, f"{hook_name} raised {_describe(exc)}")
                continue
            for name, component in staged:
                problem = component_problem(kind, component)
                if problem is not None:
                    shown = name if isinstance(name, str) and name else repr(component)
                    self._mark_broken(info, f"{kind} {shown!r} refused: {problem}")
                    continue
                try:
                    registry.add(name, component, info)
                except QBenchError as exc:
                    info.error = str(exc) if info.error is None else f"{info.error}; {exc}"
                    print(f"qbench: {exc}", file=sys.stderr)
                    continue
                info.components.setdefault(kind, []).append(name)

    def remove_plugin(self, info: PluginInfo) -> None:
        """Remove a plugin and everything it registered (its components, the collisions
        recorded over their names) from the host and from pluggy."""
        if info in self.plugins:
            self.plugins.remove(info)
        for kind, names in info.components.items():
            registry = self.registries[kind]
            for name in names:
                if name in registry or name in registry.conflicts():
                    registry.remove(name)
        for plugin, owner in list(self._loaded):
            if owner is info:
                if self.pm.is_registered(plugin):
                    self.pm.unregister(plugin)
                self._info_by_plugin.pop(id(plugin), None)
        self._loaded = [(p, i) for p, i in self._loaded if i is not info]


def _sort_key(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


# --------------------------------------------------------------------------------------
# What a component must offer before it is registered
# --------------------------------------------------------------------------------------

#: Methods every component of a kind must have (callable attributes). A format's are what core
#: and the ops call on *every* format (``qbench.quantize``, the quantized modules); a metric is
#: registered as a class, so its methods are looked up on the class.
REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    "format": ("quantize",),
    "op": ("from_module",),
    "adapter": ("build",),
    "dataset": ("build",),
    "metric": ("attach", "update", "result"),
    "reporter": ("write",),
}
#: A format's methods that other parts call when present (``qbench formats NAME`` lists
#: ``values()``, the compliance audit rounds, decodes and checks representability): a
#: non-callable value there is refused too.
OPTIONAL_FORMAT_METHODS = ("values", "round", "is_representable", "encode", "decode")


def component_problem(kind: str, component: Any) -> str | None:
    """Why ``component`` cannot be registered as a ``kind``, or None if it can.

    Checked at registration, so a broken component is named with its plugin once, instead of
    breaking every later run (a non-mapping ``options_schema`` used to make every config
    validation fail with an AttributeError)."""
    problems = []
    missing = [
        m for m in REQUIRED_METHODS.get(kind, ()) if not callable(getattr(component, m, None))
    ]
    if missing:
        problems.append(f"has no {', '.join(f'{m}()' for m in missing)} method")
    if kind == "format":
        problems += _format_problems(component)
    if kind == "op":
        module_types = getattr(component, "module_types", ())
        if not isinstance(module_types, (tuple, list)) or not all(
            isinstance(t, type) for t in module_types
        ):
            problems.append(
                f"module_types must be a tuple of nn.Module classes, found {_short(module_types)}"
            )
    schema = getattr(component, "options_schema", None)
    if schema is not None:
        problems += _schema_problems(schema)
    return "; ".join(problems) if problems else None


def _format_problems(fmt: Any) -> list[str]:
    from .types import Scaling

    problems = []
    bits = getattr(fmt, "bits", None)
    if not isinstance(bits, numbers.Integral) or isinstance(bits, bool) or bits < 1:
        problems.append(f"bits must be a positive integer, found {_short(bits)}")
    max_value = getattr(fmt, "max_value", None)
    if (
        not isinstance(max_value, numbers.Real)
        or isinstance(max_value, bool)
        or not math.isfinite(max_value)
        or max_value <= 0
    ):
        problems.append(f"max_value must be a positive finite number, found {_short(max_value)}")
    for method in OPTIONAL_FORMAT_METHODS:
        value = getattr(fmt, method, None)
        if value is not None and not callable(value):
            problems.append(f"{method} must be a method, found {_short(value)}")
    scaling = getattr(fmt, "default_scaling", None)
    if scaling is not None and not isinstance(scaling, Scaling):
        problems.append(
            f"default_scaling must be None or a qbench.types.Scaling, found {_short(scaling)}"
        )
    return problems


def _schema_problems(schema: Any) -> list[str]:
    if not isinstance(schema, Mapping):
        return [f"options_schema must be a JSON-schema mapping, found {_short(schema)}"]
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        return [f"options_schema is not a valid JSON schema: at {where}: {exc.message}"]
    return []


def _short(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


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
        h.remove_plugin(info)
