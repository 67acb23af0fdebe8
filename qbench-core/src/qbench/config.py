"""Config files: YAML loaded safely, validated against the merged JSON Schema, defaults filled.

The schema is core's own (:func:`base_schema`) plus the ``options_schema`` fragments that
registered adapters, datasets and metrics declare (:func:`config_schema`). Every problem in a
file is reported at once, one line each: ``file: path: what was found; what is allowed``.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, QBenchError, closest
from .spec import CONFIG_ROLES, SCALING_KEYS
from .types import MODES, OVERFLOWS, ROUNDINGS, SCALE_METHODS

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: Keys a role prefix (``weight_``, ``input_``, ``act_``) can override.
QUANT_KEYS = ("format", *SCALING_KEYS, "rounding")
DEFAULT_METRICS = ["accuracy", "layerwise", "compliance"]
#: Values of the ``memory_format`` key (see ``qbench.runner.resolve_memory_format``).
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
#: A custom JSON-schema ``format``: the string is a file path, relative to the config's folder,
#: that must exist. Component schemas use it for files they read (e.g. a compliance YAML).
EXISTING_FILE = "existing-file"


def _quant_properties(format_names: list[str]) -> dict[str, Any]:
    fmt = {"type": "string", "enum": format_names}
    common: dict[str, Any] = {
        "format": {**fmt, "description": "number format (or block-scaled preset) name"},
        "mode": {"enum": list(MODES), "description": "scaling granularity"},
        "chunk_size": {
            "type": "integer",
            "minimum": 1,
            "description": "elements per chunk (mode chunk)",
        },
        "axis": {"type": "integer", "description": "channel axis / axis chunks run along"},
        "scale_format": {
            **fmt,
            "description": "format the scales are rounded to (fp32, e8m0, ...)",
        },
        "scale_method": {"enum": list(SCALE_METHODS)},
        "rounding": {"enum": list(ROUNDINGS)},
    }
    props: dict[str, Any] = dict(common)
    props["overflow"] = {"enum": list(OVERFLOWS)}
    props["enabled"] = {
        "type": "boolean",
        "description": "false keeps the model (or layer) in FP32",
    }
    for role in CONFIG_ROLES:
        for key in QUANT_KEYS:
            props[f"{role}_{key}"] = {**common[key], "description": f"{role} override of `{key}`"}
        props[f"{role}_enabled"] = {
            "type": "boolean",
            "description": f"false leaves {role}s in FP32",
        }
    props["stats_enabled"] = {
        "type": "boolean",
        "description": "false leaves internal statistics (BatchNorm running mean/var) in FP32",
    }
    return props


def base_schema(
    *,
    formats: list[str],
    adapters: Mapping[str, dict[str, Any]],
    datasets: Mapping[str, dict[str, Any]],
    metrics: Mapping[str, dict[str, Any] | None],
    reporters: list[str],
) -> dict[str, Any]:
    """Core's schema with the component option schemas merged in."""
    quant_props = _quant_properties(formats)
    layer_props = dict(quant_props)
    layer_props["match"] = {
        "type": "string",
        "minLength": 1,
        "description": "glob on the module name",
    }
    layer_props["type"] = {"type": "string", "minLength": 1, "description": "module class name"}

    def merged(
        kind_key: str, names: Mapping[str, dict[str, Any]], common: dict[str, Any]
    ) -> dict[str, Any]:
        branches = []
        for name, options in names.items():
            options = copy.deepcopy(options or {"type": "object"})
            props = dict(options.get("properties", {}))
            for key, value in common.items():
                props.setdefault(key, value)
            props[kind_key] = {"const": name}
            options["properties"] = props
            branches.append(
                {
                    "if": {"properties": {kind_key: {"const": name}}, "required": [kind_key]},
                    "then": options,
                }
            )
        return {
            "type": "object",
            "required": [kind_key],
            "properties": {kind_key: {"type": "string", "enum": sorted(names)}, **common},
            "allOf": branches,
        }

    dataset_common = {
        "batch_size": {"type": "integer", "minimum": 1, "default": 64},
        "limit": {"type": ["integer", "null"], "minimum": 1, "default": None},
    }
    eval_props: dict[str, Any] = {
        "metrics": {
            "type": "array",
            "items": {"type": "string", "enum": sorted(metrics)},
            "uniqueItems": True,
            "default": [m for m in DEFAULT_METRICS if m in metrics],
        }
    }
    for name, options in metrics.items():
        eval_props[name] = options or {}
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://qbench.dev/schema/config.json",
        "title": "QBench run configuration",
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "dataset"],
        "properties": {
            "name": {
                "type": "string",
                "pattern": r"^[A-Za-z0-9_.+-]+$",
                "description": "default: the file's stem",
            },
            "device": {"enum": ["auto", "cpu", "cuda"], "default": "auto"},
            "memory_format": {
                "enum": list(MEMORY_FORMATS),
                "default": "auto",
                "description": "layout of 4-D activations and weights in both models; auto: "
                "channels_last on CPU for models with 2-D convolutions, else contiguous",
            },
            "seed": {"type": "integer", "default": 0},
            "model": merged("adapter", adapters, {}),
            "dataset": merged("name", datasets, dataset_common),
            "quantization": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    **quant_props,
                    "layers": {
                        "type": "array",
                        "description": "per-layer overrides, first match wins",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": layer_props,
                            "anyOf": [{"required": ["match"]}, {"required": ["type"]}],
                        },
                    },
                },
                "default": {},
            },
            "evaluation": {
                "type": "object",
                "additionalProperties": False,
                "properties": eval_props,
                "default": {},
            },
            "output": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "dir": {"type": "string", "minLength": 1, "default": "reports"},
                    "reporters": {
                        "type": "array",
                        "items": {"type": "string", "enum": sorted(reporters)},
                        "uniqueItems": True,
                        "default": sorted(reporters),
                    },
                },
                "default": {},
            },
        },
    }


def config_schema() -> dict[str, Any]:
    """The merged schema from the installed plugins (what ``qbench schema`` prints)."""
    from .plugins import registry

    def schemas(kind: str) -> dict[str, Any]:
        return {name: getattr(obj, "options_schema", None) for name, obj in registry(kind).items()}

    return base_schema(
        formats=registry("format").names(),
        adapters=schemas("adapter"),
        datasets=schemas("dataset"),
        metrics=schemas("metric"),
        reporters=registry("reporter").names(),
    )


@dataclass
class Config:
    """A validated config with defaults filled in."""

    data: dict[str, Any]
    path: Path | None

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def directory(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def load_yaml(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"{path}: file not found"])
    if path.is_dir():
        raise ConfigError([f"{path}: is a directory, expected a YAML config file"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}: not valid YAML: {where}{problem}"]) from None


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any], *, schema: dict[str, Any] | None = None
) -> Config:
    """Load, validate and fill defaults. Raises :class:`ConfigError` listing every problem."""
    if isinstance(source, Mapping):
        path, label, raw = None, "<config>", copy.deepcopy(dict(source))
    else:
        path = Path(source)
        label = str(path)
        raw = load_yaml(path)
    if raw is None:
        raise ConfigError(
            [
                f"{label}: the file is empty; expected a mapping with keys model, dataset, quantization, ..."
            ]
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            [
                f"{label}: top level is a {_type_name(raw)}; expected a mapping with keys model, dataset, quantization, ..."
            ]
        )
    schema = schema if schema is not None else config_schema()
    base_dir = path.parent if path is not None else Path.cwd()
    problems = validate(raw, schema, label, base_dir)
    if problems:
        raise ConfigError(problems)
    data = fill_defaults(raw, schema)
    data.setdefault("name", path.stem if path is not None else "config")
    problems = _check_quantization(data.get("quantization", {}), label)
    if problems:
        raise ConfigError(problems)
    return Config(data, path)


def validate(raw: Any, schema: dict[str, Any], label: str, base_dir: Path) -> list[str]:
    import jsonschema

    checker = jsonschema.FormatChecker()

    @checker.checks(EXISTING_FILE)
    def _exists(value: object) -> bool:
        return not isinstance(value, str) or (base_dir / value).is_file()

    validator = jsonschema.Draft202012Validator(schema, format_checker=checker)
    # One line per problem: several validators failing on the same value (a string where an
    # enum of strings was expected fails both `type` and `enum`) are one problem.
    by_value: dict[str, Any] = {}
    structural: list[Any] = []
    for error in _leaf_errors(validator.iter_errors(raw)):
        if error.validator in ("required", "additionalProperties", "anyOf"):
            structural.append(error)
            continue
        key = _path(error.absolute_path)
        best = by_value.get(key)
        if best is None or _rank(error) < _rank(best):
            by_value[key] = error
    lines: list[str] = []
    for error in [*structural, *by_value.values()]:
        line = f"{label}: {_path(error.absolute_path)}: {_describe(error, base_dir)}"
        if line not in lines:
            lines.append(line)
    return sorted(lines, key=lambda s: s.split(": ")[1])


def _rank(error: Any) -> int:
    order = ("type", "enum", "const")
    return order.index(error.validator) if error.validator in order else len(order)


def _leaf_errors(errors: Any) -> list[Any]:
    """Flatten if/then/anyOf wrappers so each message names the deepest real problem."""
    out = []
    for error in errors:
        if error.validator in ("allOf", "anyOf", "oneOf", "if", "then") and error.context:
            deepest = max(len(e.absolute_path) for e in error.context)
            if deepest > len(error.absolute_path):
                out.extend(
                    _leaf_errors([e for e in error.context if len(e.absolute_path) == deepest])
                )
                continue
        out.append(error)
    return out


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _type_name(value: Any) -> str:
    return {
        type(None): "null",
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
    }.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: Any, base_dir: Path) -> str:
    v, found, expected = error.validator, error.instance, error.validator_value
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in found if k not in error.schema.get("properties", {})]
        parts = []
        for key in extra:
            guess = closest(key, allowed)
            parts.append(f"unknown key {key!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
        return "; ".join(parts) + f"; allowed keys: {', '.join(allowed)}"
    if v == "required":
        missing = [k for k in expected if isinstance(found, dict) and k not in found]
        return f"missing required key {', '.join(map(repr, missing))}"
    if v == "enum":
        guess = closest(str(found), [str(e) for e in expected])
        hint = f" (did you mean {guess!r}?)" if guess else ""
        return f"found {_show(found)}{hint}; allowed: {', '.join(map(str, expected))}"
    if v == "const":
        return f"found {_show(found)}; allowed: {_show(expected)}"
    if v == "type":
        want = " or ".join(expected) if isinstance(expected, list) else expected
        return f"found {_type_name(found)} {_show(found)}; expected {want}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return f"found {_show(found)}; must be {op} {expected}"
    if v == "format" and expected == EXISTING_FILE:
        return f"file not found: {found!r} (looked in {base_dir / str(found)})"
    if v == "pattern":
        return f"found {_show(found)}; must match {expected}"
    if v == "minLength":
        return f"found {_show(found)}; must not be empty"
    if v == "uniqueItems":
        return f"found {_show(found)}; entries must be unique"
    if v == "anyOf" and error.absolute_path and "layers" in list(error.absolute_path):
        return "a layer override needs `match` (a name glob) or `type` (a module class name)"
    return f"found {_show(found)}; {error.message}"


def fill_defaults(data: Any, schema: dict[str, Any]) -> Any:
    """Fill ``default`` values of object properties, following if/then branches that apply."""
    if not isinstance(data, dict) or not isinstance(schema, dict):
        return data
    out = dict(data)
    props: dict[str, Any] = dict(schema.get("properties", {}))
    for branch in schema.get("allOf", []):
        cond = branch.get("if", {}).get("properties", {})
        if all(out.get(k) == c.get("const") for k, c in cond.items()) and cond:
            for key, sub in branch.get("then", {}).get("properties", {}).items():
                props.setdefault(key, sub)
                if "default" in sub and "default" not in props[key]:
                    props[key] = {**props[key], "default": sub["default"]}
    for key, sub in props.items():
        if not isinstance(sub, dict):
            continue
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out and isinstance(out[key], dict):
            out[key] = fill_defaults(out[key], sub)
    return out


def _check_quantization(q: Mapping[str, Any], label: str) -> list[str]:
    """Rules the schema cannot say: chunk mode needs a chunk size once presets are resolved."""
    from .spec import role_spec

    problems = []
    entries: list[tuple[str, Mapping[str, Any]]] = [("quantization", q)]
    for i, entry in enumerate(q.get("layers") or ()):
        merged = {**q, **{k: v for k, v in entry.items() if k not in ("match", "type")}}
        entries.append((f"quantization.layers[{i}]", merged))
    for where, mapping in entries:
        for role in CONFIG_ROLES:
            try:
                role_spec(mapping, role)
            except QBenchError as exc:
                message = re.sub(r"^quantization\.", "", str(exc))
                problems.append(f"{label}: {where}.{message}")
    return sorted(set(problems))
