"""The plugin guide (README "Writing a plugin") documents every member of every component
protocol in ``qbench.types``, and core reads nothing off a component that the protocols do
not declare. (``tests/test_format_protocol_usage.py`` checks the same for everything the
quantizer and the audit read off a format, by recording it.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from qbench import types

CORE = Path(__file__).resolve().parents[1]
README = CORE / "README.md"
SOURCES = CORE / "src" / "qbench"

PROTOCOLS = {
    "Format": types.Format,
    "BlockScaledFormat": types.BlockScaledFormat,
    "FloatFields": types.FloatFields,
    "Op": types.Op,
    "ObservableModule": types.ObservableModule,
    "Installed": types.Installed,
    "Observer": types.Observer,
    "Adapter": types.Adapter,
    "Dataset": types.Dataset,
    "Metric": types.Metric,
    "Reporter": types.Reporter,
    "Configurable": types.Configurable,
}


def protocol_members(protocol: type) -> set[str]:
    """Attributes and methods a protocol declares (its own and its protocol bases')."""
    members: set[str] = set()
    for cls in protocol.__mro__:
        if cls is object or not getattr(cls, "_is_protocol", False) or cls.__name__ == "Protocol":
            continue
        members |= set(getattr(cls, "__annotations__", {}))
        members |= {
            name
            for name, value in vars(cls).items()
            if isinstance(value, (classmethod, staticmethod)) or callable(value)
        }
    return {m for m in members if not m.startswith("_")}


def readme_names() -> set[str]:
    """Every identifier inside a backtick span of the plugin guide."""
    text = README.read_text()
    guide = text[text.index("## Writing a plugin") :]
    guide = re.sub(r"```.*?```", "", guide, flags=re.DOTALL)  # fences would pair backticks
    spans = re.findall(r"`([^`]+)`", guide)
    return {word for span in spans for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span)}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_protocol_member_is_in_the_plugin_guide(name: str) -> None:
    documented = readme_names()
    assert name in documented, f"the README's plugin guide does not name protocol {name}"
    missing = protocol_members(PROTOCOLS[name]) - documented
    assert not missing, f"{name} members missing from qbench-core/README.md: {sorted(missing)}"


def test_the_observation_protocol_is_declared() -> None:
    assert protocol_members(types.ObservableModule) == {
        "qbench_attach_observer",
        "qbench_detach_observer",
        "qbench_roles",
    }
    assert {"name", "module_types", "roles", "from_module"} <= protocol_members(types.Op)


# Which protocol an object named so in core's source satisfies.
_NAMES = {
    "op": ("Op",),
    "fmt": ("Format", "BlockScaledFormat", "FloatFields", "Configurable"),
    "format": ("Format", "BlockScaledFormat", "FloatFields", "Configurable"),
    "metric": ("Metric",),
    "m": ("Metric",),
    "observer": ("Observer",),
}


def _reads(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(object name, attribute, line) for ``getattr(obj, "attr"...)``, ``hasattr(obj,
    "attr")`` and ``obj.attr`` in a source tree."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            found.append((node.args[0].id, node.args[1].value, node.lineno))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            found.append((node.value.id, node.attr, node.lineno))
    return found


def test_core_reads_only_declared_members_off_components() -> None:
    """Every ``qbench_*`` attribute core reads off a module is an ObservableModule (or, off
    what an op installed, an Installed) member;
    everything it reads off an op, a format, a metric or an observer is a member of its
    protocol."""
    observable = protocol_members(types.ObservableModule) | protocol_members(types.Installed)
    undeclared, seen_observation = [], set()
    for path in sorted(SOURCES.rglob("*.py")):
        for owner, attribute, line in _reads(ast.parse(path.read_text())):
            where = f"{path.relative_to(CORE)}:{line}: {owner}.{attribute}"
            if attribute.startswith("qbench_") and owner not in ("qbench", "hookspecs"):
                if attribute.startswith("qbench_register_"):
                    continue  # hook names, documented by test_hookspecs
                seen_observation.add(attribute)
                if attribute not in observable:
                    undeclared.append(where)
            elif owner in _NAMES and not attribute.startswith("_"):
                allowed = set().union(*(protocol_members(PROTOCOLS[p]) for p in _NAMES[owner]))
                if attribute not in allowed:
                    undeclared.append(where)
    assert not undeclared, "read by core but not declared in qbench.types: " + "; ".join(undeclared)
    # the scan really sees preparation.py's observation calls
    assert {"qbench_attach_observer", "qbench_detach_observer", "qbench_roles"} <= seen_observation
