"""What the audit checks: its settings (``evaluation.compliance``), their schema and defaults.

The defaults ship as ``qbench_eval/compliance_default.yaml``; a run may point at its own YAML
file (relative to the run's config file) or give the settings inline. Settings are checked
against :data:`SETTINGS_SCHEMA` with :func:`qbench.config.check_options`, as the config
schema checks them, one line per problem.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from qbench.config import check_options
from qbench.errors import ConfigError, QBenchError
from qbench.types import ROLES

#: The default settings, a file of the ``qbench_eval`` package.
DEFAULT_CONFIG_NAME = "compliance_default.yaml"
#: Where a run's settings sit in its config file (error messages name it).
OPTIONS_KEY = "evaluation.compliance"

#: The settings' properties (a mapping given inline or read from a YAML file).
SETTINGS_PROPERTIES: dict[str, Any] = {
    "roles": {"type": "array", "items": {"enum": list(ROLES)}},
    "skip_layers": {"type": "array", "items": {"type": "string"}},
    "max_examples": {"type": "integer", "minimum": 0},
    "require_observed": {"type": "boolean"},
    "activation_batches": {"type": ["integer", "null"], "minimum": 1},
}
#: A mapping of settings: what a YAML file or an inline ``evaluation.compliance`` holds.
SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": SETTINGS_PROPERTIES,
    "additionalProperties": False,
}
#: ``ComplianceMetric.options_schema``: merged into the config schema by core.
OPTIONS_SCHEMA: dict[str, Any] = {
    "description": (
        "The compliance audit's settings: null (the default shipped in qbench-eval), a path "
        "to a YAML file relative to the config file, or the settings inline."
    ),
    "anyOf": [
        {"type": "null"},
        {"type": "string", "minLength": 1},
        SETTINGS_SCHEMA,
    ],
}


@dataclass(frozen=True)
class ComplianceConfig:
    """What the audit checks; loaded from YAML (see ``compliance_default.yaml``)."""

    roles: tuple[str, ...] = ROLES
    skip_layers: tuple[str, ...] = ()
    max_examples: int = 5
    require_observed: bool = True
    activation_batches: int | None = None
    source: str = "default"

    def audits(self, layer: str, role: str) -> bool:
        """Is this (layer, role) audited? A quantization point inside a layer (e.g. the
        ``q`` input of an attention layer, reported as ``<layer>.q``) is skipped with it."""
        if role not in self.roles:
            return False
        names = self_and_parents(layer)
        return not any(fnmatch.fnmatchcase(n, p) for n in names for p in self.skip_layers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "roles": list(self.roles),
            "skip_layers": list(self.skip_layers),
            "max_examples": self.max_examples,
            "require_observed": self.require_observed,
            "activation_batches": self.activation_batches,
            "source": self.source,
        }


def self_and_parents(layer: str) -> list[str]:
    """``"a.b.c"`` -> ``["a.b.c", "a.b", "a"]``."""
    parts = layer.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def default_config_text() -> str:
    """The YAML text of the default compliance configuration shipped with qbench-eval."""
    return resources.files("qbench_eval").joinpath(DEFAULT_CONFIG_NAME).read_text(encoding="utf-8")


def load_config(options: Any, config_dir: Path | None = None) -> ComplianceConfig:
    """The audit configuration for ``evaluation.compliance``: None (the shipped default), a
    path to a YAML file (relative to the run's config directory) or an inline mapping.
    Keys left out keep their default values."""
    values = _checked_file(yaml.safe_load(default_config_text()), DEFAULT_CONFIG_NAME)
    source = "default"
    if isinstance(options, (str, Path)):
        path = Path(options)
        if not path.is_absolute() and config_dir is not None:
            path = Path(config_dir) / path
        source = str(path)
        if not path.is_file():
            raise QBenchError(
                f"{OPTIONS_KEY}: file {str(path)!r} not found (give a YAML path relative to the config file)"
            )
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QBenchError(f"{path}: not valid YAML: {first}") from None
        values.update(_checked_file({} if loaded is None else loaded, str(path)))
    elif isinstance(options, Mapping):
        source = "inline"
        check_options(SETTINGS_SCHEMA, options, OPTIONS_KEY)
        values.update(options)
    elif options is not None:
        raise QBenchError(
            f"{OPTIONS_KEY}: found {type(options).__name__} {options!r}; allowed: a YAML file path or a mapping"
        )
    return ComplianceConfig(
        roles=tuple(values["roles"]),
        skip_layers=tuple(values["skip_layers"]),
        max_examples=values["max_examples"],
        require_observed=values["require_observed"],
        activation_batches=values["activation_batches"],
        source=source,
    )


def _checked_file(settings: Any, label: str) -> dict[str, Any]:
    """The settings read from the YAML file ``label``, checked; each problem's line starts
    with the file, as config validation's lines do (``audit.yaml: max_examples: ...``)."""
    try:
        check_options(SETTINGS_SCHEMA, settings, "")
    except ConfigError as exc:
        raise ConfigError([f"{label}: {line}" for line in exc.problems]) from None
    return dict(settings)
