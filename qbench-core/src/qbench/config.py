"""Config files: YAML loaded safely, validated against the merged JSON Schema, defaults filled.

The schema is core's own (:func:`base_schema`) plus the ``options_schema`` fragments that
registered adapters, datasets and metrics declare (:func:`config_schema`). Every problem in a
file is reported at once, one line each: ``file: path: what was found; what is allowed``.
"""

from __future__ import annotations

import copy
import functools
import json
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from .errors import ConfigError, QBenchError, closest
from .spec import CONFIG_ROLES, SCALING_KEYS
from .types import MODES, OVERFLOWS, ROUNDINGS, SCALE_METHODS

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: Keys a role prefix (``weight_``, ``input_``, ``act_``) can override.
QUANT_KEYS = ("format", *SCALING_KEYS, "rounding")
DEFAULT_METRICS = ["accuracy", "layerwise", "compliance"]
#: Below this share of weight elements quantized, a report's first line is a warning.
DEFAULT_MIN_WEIGHT_COVERAGE = 0.99
#: Values of the ``memory_format`` key (see ``qbench.runner.resolve_memory_format``).
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
#: A custom JSON-schema ``format``: the string is a file path, relative to the config's folder,
#: that must exist. Component schemas use it for files they read (e.g. a compliance YAML).
EXISTING_FILE = "existing-file"
#: A schema annotation on the ``enum`` of component names: the registry the names come from,
#: so an unknown name is reported as ``unknown format 'fp9'`` (what ``qbench.get_format`` says).
REGISTRY_ANNOTATION = "x-qbench-registry"
#: ``torch.manual_seed`` takes a 64-bit seed; 0 <= seed < 2**63 holds in every integer type.
SEED_LIMIT = 2**63

# Limits on a config file, checked while it is read, before anything is validated or built:
# a config is a page of settings, and without them a 1 KB file of nested YAML aliases
# ("billion laughs") expands to 10^9 values and a 47 MB list takes minutes to validate.
#: Largest config file read, in bytes.
MAX_CONFIG_BYTES = 1024 * 1024
#: Most YAML nodes (mappings, lists, scalars, keys included) a config may hold once its
#: aliases are expanded, i.e. as the validator and every later stage see it.
MAX_CONFIG_NODES = 100_000
#: Deepest nesting of mappings and lists (the deepest real config is about 5 levels).
MAX_CONFIG_DEPTH = 100


#: The ``sweep:`` section: lists that expand the config into a grid of configs (qbench.sweep).
SWEEP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["grid"],
    "description": "expand this config into the product of the grid's lists; every config "
    "of the grid is run beside one FP32 reference",
    "properties": {
        "grid": {
            "type": "object",
            "minProperties": 1,
            "description": "key: a list of values; a bare key (format, mode, ...) is a "
            "quantization key, a dotted one (quantization.weight_mode, seed) a config path; "
            "a mapping value is merged at the path",
            "additionalProperties": {"type": "array", "minItems": 1},
        },
        "exclude": {
            "type": "array",
            "description": "combinations left out: each a mapping of grid keys to values, "
            "matching the configs that have all of them",
            "items": {"type": "object", "minProperties": 1},
        },
        "parallel": {
            "type": "integer",
            "minimum": 1,
            "default": 8,
            "description": "twins run beside one FP32 forward at a time (memory: one "
            "quantized copy of the model each)",
        },
    },
}


def _quant_properties(format_names: list[str]) -> dict[str, Any]:
    fmt = {"type": "string", "enum": format_names, REGISTRY_ANNOTATION: "format"}
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
        "percentile": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 100,
            "description": "p of scale_method percentile (default 99.99; chunks: one value "
            "per block saturates)",
        },
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
    props["fold_batchnorm"] = {
        "type": "boolean",
        "description": "fold each BatchNorm into the conv or linear before it in the twin "
        "before quantizing (as deployed graphs are); false keeps BatchNorms and quantizes "
        "their statistics",
    }
    props["functions"] = {
        "type": "array",
        "items": {"type": "string", "minLength": 1},
        "uniqueItems": True,
        "description": "function groups quantized where a module's forward calls them "
        "(matmul, sdpa, softmax, add, linear, conv); default: all but add",
    }
    props["stats_enabled"] = {
        "type": "boolean",
        "description": "false leaves internal statistics (BatchNorm running mean/var) in FP32",
    }
    return props


def _fragment(options: Mapping[str, Any]) -> dict[str, Any]:
    """A component's options schema as merged into the config schema: a copy, without a
    ``$schema`` of its own (jsonschema would validate that part with its stock validator,
    which lets ``1.0`` pass as an integer; see :func:`validator_class`)."""
    fragment = copy.deepcopy(dict(options))
    fragment.pop("$schema", None)
    return fragment


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
        kind: str, kind_key: str, names: Mapping[str, dict[str, Any]], common: dict[str, Any]
    ) -> dict[str, Any]:
        branches = []
        for name, options in names.items():
            options = _fragment(options or {"type": "object"})
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
            "properties": {
                kind_key: {
                    "type": "string",
                    "enum": sorted(names),
                    REGISTRY_ANNOTATION: kind,
                },
                **common,
            },
            "allOf": branches,
        }

    dataset_common = {
        "batch_size": {"type": "integer", "minimum": 1, "default": 64},
        "limit": {"type": ["integer", "null"], "minimum": 1, "default": None},
    }
    eval_props: dict[str, Any] = {
        "min_weight_coverage": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": DEFAULT_MIN_WEIGHT_COVERAGE,
            "description": "below this share of weight elements quantized, the report "
            "starts with a warning naming the largest modules left FP32",
        },
        "metrics": {
            "type": "array",
            "items": {"type": "string", "enum": sorted(metrics), REGISTRY_ANNOTATION: "metric"},
            "uniqueItems": True,
            "default": [m for m in DEFAULT_METRICS if m in metrics],
        },
    }
    for name, options in metrics.items():
        eval_props[name] = _fragment(options or {})
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
            "seed": {
                "type": "integer",
                "minimum": 0,
                "exclusiveMaximum": SEED_LIMIT,
                "default": 0,
                "description": "seeds torch's generators (0 <= seed < 2**63)",
            },
            "model": merged("adapter", "adapter", adapters, {}),
            "dataset": merged("dataset", "name", datasets, dataset_common),
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
            "calibration": {
                "type": "object",
                "additionalProperties": False,
                "required": ["batches"],
                "description": "static input/activation scales from the amax of the first "
                "`batches` batches of the dataset, which are then not evaluated (roles with "
                "mode tensor or channel, absmax, saturate; others stay dynamic); without this "
                "section every batch is scaled dynamically",
                "properties": {"batches": {"type": "integer", "minimum": 1}},
            },
            "sweep": SWEEP_SCHEMA,
            "output": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "dir": {"type": "string", "minLength": 1, "default": "reports"},
                    "reporters": {
                        "type": "array",
                        "items": {
                            "type": "string",
                            "enum": sorted(reporters),
                            REGISTRY_ANNOTATION: "reporter",
                        },
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


def quantization_schema(schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``quantization`` sub-schema of the merged config schema (``schema``, or the one
    :func:`config_schema` builds from the installed plugins): what a config's
    ``quantization:`` section, and a mapping given to ``qbench.prepare``, must satisfy."""
    schema = schema if schema is not None else config_schema()
    return {"$schema": SCHEMA_DIALECT, **copy.deepcopy(schema["properties"]["quantization"])}


def check_quantization(
    q: Any, label: str = "qbench.prepare", *, schema: Mapping[str, Any] | None = None
) -> list[str]:
    """Every problem of a ``quantization`` mapping, one line each, as ``qbench validate``
    reports them for a config (``label: quantization.chunk_size: found 0; must be >= 1``):
    the schema first, then the rules it cannot say (:func:`_check_quantization`)."""
    section = quantization_schema(schema)
    # a nested "$schema" would make jsonschema switch to its stock validator (loose integers)
    del section["$schema"]
    wrapper = {"$schema": SCHEMA_DIALECT, "type": "object", "properties": {"quantization": section}}
    data = {"quantization": _plain(q)}
    problems = validate(data, wrapper, label, Path.cwd())
    if problems:
        return problems
    return _check_quantization(data["quantization"], label)


def _plain(value: Any) -> Any:
    """Mappings as dicts and tuples as lists, as YAML gives them (what the schema checks)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


@dataclass
class Config:
    """A validated config with defaults filled in."""

    data: dict[str, Any]
    path: Path | None
    #: where relative paths in a config given as a mapping resolve (default: the cwd)
    base: Path | None = None

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def directory(self) -> Path:
        if self.path is not None:
            return self.path.parent
        return self.base if self.base is not None else Path.cwd()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


class _Refused(yaml.YAMLError):
    """A config the loader refuses (too large, too deep, a duplicate key) at ``mark``."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the limits a config file needs.

    * At most :data:`MAX_CONFIG_NODES` nodes once aliases are expanded: an alias counts as
      every node of what it refers to, and a recursive alias (a node containing itself) is
      refused. The count runs while the document is composed, so a billion-laughs file stops
      at its first alias over the budget, naming that alias's line.
    * At most :data:`MAX_CONFIG_DEPTH` levels of nesting (the composer recurses per level).
    * No key twice in one mapping (PyYAML keeps the last one silently). Merge keys
      (``<<: *base``) still let a mapping override what it merges in.
    """

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0
        self._expanded: dict[int, int] = {}  # id(node) -> its node count, aliases expanded

    def _count(self, nodes: int, mark: Any, alias: str | None = None) -> None:
        self._nodes += nodes
        if self._nodes > MAX_CONFIG_NODES:
            what = f"alias *{alias} expands to {nodes} nodes: " if alias is not None else ""
            raise _Refused(
                f"{what}the config holds more than {MAX_CONFIG_NODES} YAML nodes (values, "
                f"keys, lists and mappings, aliases expanded); the limit is {MAX_CONFIG_NODES}",
                mark,
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is the composer's own error
                size = self._expanded.get(id(target))
                if size is None:
                    raise _Refused(
                        f"alias *{event.anchor} refers to a node that contains it; "
                        "recursive structures are not allowed in a config",
                        event.start_mark,
                    )
                self._count(size, event.start_mark, alias=event.anchor)
            return super().compose_node(parent, index)
        self._count(1, event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise _Refused(
                    f"nested more than {MAX_CONFIG_DEPTH} levels deep; "
                    f"configs are limited to {MAX_CONFIG_DEPTH} levels",
                    event.start_mark,
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, SequenceNode):
            children: list[Node] = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        self._expanded[id(node)] = 1 + sum(self._expanded[id(child)] for child in children)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first_seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = first_seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the constructor's own error follows
                    continue
                if first is not key_node:
                    raise _Refused(
                        f"duplicate key {_show(key)} (first at line {first.start_mark.line + 1}, "
                        f"again at line {key_node.start_mark.line + 1}); a key may appear "
                        "only once in a mapping",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Read one YAML config safely (see :class:`ConfigLoader` and :data:`MAX_CONFIG_BYTES`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"{path}: file not found"])
    if path.is_dir():
        raise ConfigError([f"{path}: is a directory, expected a YAML config file"])
    try:
        with path.open("rb") as stream:  # read at most one byte past the limit
            data = stream.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            size = path.stat().st_size
            found = f"{size} bytes" if size > MAX_CONFIG_BYTES else "larger"
            raise ConfigError(
                [
                    f"{path}: file is {found}; config files are limited to 1 MiB "
                    f"({MAX_CONFIG_BYTES} bytes)"
                ]
            )
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if isinstance(exc, _Refused):
            raise ConfigError([f"{path}: {where}{problem}"]) from None
        raise ConfigError([f"{path}: not valid YAML: {where}{problem}"]) from None
    finally:
        loader.dispose()


_TOP_LEVEL = "a mapping with keys model, dataset, quantization, ..."


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    schema: dict[str, Any] | None = None,
    base: str | os.PathLike[str] | None = None,
) -> Config:
    """Load, validate and fill defaults. Raises :class:`ConfigError` listing every problem.
    ``base``: for a mapping, the folder its relative paths resolve in (default: the cwd)."""
    if isinstance(source, Mapping):
        path, label, raw = None, "<config>", copy.deepcopy(dict(source))
    else:
        path = Path(source)
        label = str(path)
        raw = load_yaml(path)
    if raw is None:
        raise ConfigError([f"{label}: the file is empty; expected {_TOP_LEVEL}"])
    if not isinstance(raw, dict):
        raise ConfigError([f"{label}: top level is a {_type_name(raw)}; expected {_TOP_LEVEL}"])
    schema = schema if schema is not None else config_schema()
    base_dir = path.parent if path is not None else Path(base) if base is not None else Path.cwd()
    problems = validate(raw, schema, label, base_dir)
    if problems:
        raise ConfigError(problems)
    data = fill_defaults(raw, schema)
    data.setdefault("name", path.stem if path is not None else "config")
    # a sweep's own quantization may be incomplete (the grid gives the format): each config
    # of its grid is checked whole when the sweep expands (qbench.sweep.expand)
    problems = [] if data.get("sweep") else _check_quantization(data.get("quantization", {}), label)
    if problems:
        raise ConfigError(problems)
    return Config(data, path, None if path is not None else base_dir)


def _is_integer(checker: Any, instance: Any) -> bool:
    """JSON Schema's ``integer``, strictly: a YAML/JSON integer. jsonschema also accepts a
    float with an integral value (``axis: 1.0``), which torch then refuses mid-run; booleans
    are refused as YAML/JSON are explicit about them too."""
    return isinstance(instance, numbers.Integral) and not isinstance(instance, bool)


@functools.lru_cache(maxsize=1)
def validator_class() -> Any:
    """Draft 2020-12 with strict integers (:func:`_is_integer`): core's keys and every
    component's ``options_schema`` are checked with it."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    return jsonschema.validators.extend(
        base, type_checker=base.TYPE_CHECKER.redefine("integer", _is_integer)
    )


def validate(raw: Any, schema: dict[str, Any], label: str, base_dir: Path) -> list[str]:
    """Every problem of ``raw`` against ``schema``, one line each: ``label: path: problem``."""
    import jsonschema

    checker = jsonschema.FormatChecker()

    @checker.checks(EXISTING_FILE)
    def _exists(value: object) -> bool:
        return not isinstance(value, str) or (base_dir / value).is_file()

    validator = validator_class()(schema, format_checker=checker)
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


def check_options(schema: Mapping[str, Any] | None, options: Any, where: str) -> None:
    """Check a component's ``options`` against its own ``options_schema``, as the config
    schema checks them once merged, for options that reach a component without a config
    file (the Python API, a settings file of its own).

    Raises :class:`ConfigError` with one line per problem, in config validation's words,
    located under ``where`` (the options' place in a config, e.g. ``evaluation.accuracy``):
    ``evaluation.accuracy.top_k: found 0; must be >= 1``. A list item's problem is located at
    its list (the value found names the item). Formats such as ``existing-file`` are not
    checked here: they need the config file's folder.
    """
    if not schema:
        return
    validator = validator_class()(_fragment(schema))
    by_location: dict[str, Any] = {}
    lines: list[str] = []
    for error in _leaf_errors(validator.iter_errors(_plain(options))):
        parts = [part for part in error.absolute_path if not isinstance(part, int)]
        location = ".".join(filter(None, (where, _path(parts) if parts else "")))
        if error.validator in ("required", "additionalProperties", "anyOf"):
            lines.append(_located(location, error))
            continue
        best = by_location.get(location)
        if best is None or _rank(error) < _rank(best):
            by_location[location] = error
    lines += [_located(location, error) for location, error in by_location.items()]
    if lines:
        raise ConfigError(sorted(dict.fromkeys(lines)))


def _located(location: str, error: Any) -> str:
    problem = _describe(error, Path.cwd())
    return f"{location}: {problem}" if location else problem


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
        kind = error.schema.get(REGISTRY_ANNOTATION) if isinstance(error.schema, dict) else None
        what = f"unknown {kind} {_show(found)}" if kind and isinstance(found, str) else None
        allowed = ", ".join(map(str, expected)) or "(none installed)"
        return f"{what or 'found ' + _show(found)}{hint}; allowed: {allowed}"
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
    """Rules the schema cannot say: chunk mode needs a chunk size once presets are resolved,
    and a role setting must have an effect (:func:`_settings_without_effect`)."""
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
    problems += _settings_without_effect(q, label)
    return sorted(set(problems))


#: Role keys that decide whether a role is quantized at all; every other ``<role>_*`` key
#: only shapes how, and has no effect on a role without a format.
_ROLE_SWITCHES = ("format", "enabled")
_ROLE_WORDS = {"weight": "weights", "input": "inputs", "act": "activations"}


def _role_has_format(mapping: Mapping[str, Any], role: str) -> bool:
    return mapping.get(f"{role}_format") is not None or mapping.get("format") is not None


def _settings_without_effect(q: Mapping[str, Any], label: str) -> list[str]:
    """A ``<role>_<key>`` setting (``act_rounding``, ``input_chunk_size``...) for a role that
    has no format (no ``format``, no ``<role>_format``; a preset is a format) quantizes
    nothing, so it is refused rather than silently ignored.

    Global keys count as used when any ``layers:`` entry gives the role a format (the global
    setting applies to those layers); a ``layers:`` entry's own key is checked against that
    entry merged over the global keys."""
    layers = [entry for entry in q.get("layers") or () if isinstance(entry, Mapping)]
    merged_layers = [{**q, **entry} for entry in layers]
    problems = []

    def refuse(where: str, key: str, value: Any, role: str, scope: str) -> None:
        problems.append(
            f"{label}: {where}.{key}: found {_show(value)}, but {_ROLE_WORDS[role]} are not "
            f"quantized {scope} (no format or {role}_format); set one, or remove {key}"
        )

    for role in CONFIG_ROLES:
        keys = [key for key in QUANT_KEYS if key not in _ROLE_SWITCHES and f"{role}_{key}" in q]
        if keys and not any(_role_has_format(m, role) for m in [q, *merged_layers]):
            for key in keys:
                refuse("quantization", f"{role}_{key}", q[f"{role}_{key}"], role, "anywhere")
        for index, (entry, merged) in enumerate(zip(layers, merged_layers)):
            if _role_has_format(merged, role):
                continue
            for key in QUANT_KEYS:
                name = f"{role}_{key}"
                if key not in _ROLE_SWITCHES and name in entry:
                    where = f"quantization.layers[{index}]"
                    refuse(where, name, entry[name], role, "in the layers it matches")
    return problems
