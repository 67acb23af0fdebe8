"""The QBench plugin hooks: the public API for plugin authors.

A plugin is a module (or object) listed under the entry-point group ``qbench``::

    [project.entry-points.qbench]
    my-formats = "my_package.plugin"

and implementing any of the hooks below, marked with :data:`qbench.hookimpl`::

    from qbench import hookimpl

    @hookimpl
    def qbench_register_formats(register):
        register(MyFormat())

When hooks run: all of them together, once per process, the first time QBench needs *any*
registry (``qbench.plugins.host()``: the first ``qbench.get_format``, ``qbench.quantize`` or
``qbench.prepare`` call, config validation, or any CLI command that lists or resolves
components), whichever kind that first lookup is for. Plugins are called one at a time in
discovery order (entry points sorted by distribution name, then entry-point name; then
plugins added in-process), each plugin's hooks in the order of :data:`REGISTRATION_HOOKS`,
through pluggy with keyword arguments. A plugin added in-process after that
(``qbench.plugins.register_plugin``) has its hooks called when it is added.

Each hook receives a ``register`` callable (:class:`Register`) bound to the calling plugin,
so that a name registered twice is reported with *both* distributions, and a component that
fails its protocol, or a hook that raises, marks only that plugin broken. Components may
carry an ``options_schema`` (a JSON-schema fragment for their config options); core merges
it into the config schema, so a plugin's options are validated like core's own.

Arguments may be added to these hooks in later versions, never removed: implementations
should accept only the arguments they use (pluggy passes the ones named).
"""

from __future__ import annotations

from typing import Protocol

import pluggy

PROJECT_NAME = "qbench"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class Register(Protocol):
    """The ``register`` callable every registration hook receives (annotate the hook's
    parameter with it: ``def qbench_register_formats(register: qbench.Register)``)."""

    def __call__(self, component: object, name: str | None = None) -> None:
        """Register ``component`` under ``name`` (default: ``component.name``).

        Nothing is raised here: the component is checked against its kind's protocol after
        the hook returns, and a refusal (a missing method, a bad ``options_schema``, a name
        another plugin registered first) is recorded against the calling plugin."""


# --------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------


@hookspec
def qbench_register_formats(register: Register) -> None:
    """Register number formats.

    Called once per plugin, with every other registration hook, the first time QBench needs
    any registry (not only this kind's; see the module docstring), or when a plugin is added
    in-process after that.

    :param register: call ``register(fmt)`` for each format object. A format satisfies
        :class:`qbench.types.Format`: ``name``, ``bits``, ``max_value``, ``values()``,
        ``round()``, ``is_representable()``, ``encode()``/``decode()`` and ``quantize()``.
        Block-scaled presets (``mxfp4_e2m1``) are formats too, whose ``default_scaling``
        is not None.
    """


@hookspec
def qbench_register_ops(register: Register) -> None:
    """Register quantized operators (replacements for torch module types).

    Called once per plugin, with every other registration hook, the first time QBench needs
    any registry (not only this kind's; see the module docstring), or when a plugin is added
    in-process after that.

    :param register: call ``register(op_class)`` for each op class. An op class satisfies
        :class:`qbench.types.Op`: ``name``, ``module_types`` (the ``nn.Module`` classes it
        replaces), ``roles`` (which of weight / input / act / stats it quantizes) and
        ``from_module(module, specs, name=...)``.
    """


# --------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------


@hookspec
def qbench_register_adapters(register: Register) -> None:
    """Register model adapters (the ``model.adapter`` config key names one).

    Called once per plugin, with every other registration hook, the first time QBench needs
    any registry (not only this kind's; see the module docstring), or when a plugin is added
    in-process after that.

    :param register: call ``register(adapter)`` for each adapter object, satisfying
        :class:`qbench.types.Adapter`: ``name``, ``options_schema`` (the JSON schema of its
        other ``model:`` keys) and ``build(options, device=...) -> ModelBundle``.
    """


@hookspec
def qbench_register_datasets(register: Register) -> None:
    """Register evaluation datasets (the ``dataset.name`` config key names one).

    Called once per plugin, with every other registration hook, the first time QBench needs
    any registry (not only this kind's; see the module docstring), or when a plugin is added
    in-process after that.

    :param register: call ``register(dataset)`` for each dataset object, satisfying
        :class:`qbench.types.Dataset`: ``name``, ``options_schema`` and
        ``build(options, bundle=...)`` returning an iterable of ``(images, targets)`` batches.
    """


# --------------------------------------------------------------------------------------
# Evaluation and reporting
# --------------------------------------------------------------------------------------


@hookspec
def qbench_register_metrics(register: Register) -> None:
    """Register streaming metrics (``evaluation.metrics`` lists them by name).

    Called once per plugin, with every other registration hook, the first time QBench needs
    any registry (not only this kind's; see the module docstring), or when a plugin is added
    in-process after that.

    :param register: call ``register(metric_class)`` for each metric class; QBench makes a
        fresh instance per run with ``metric_class(options)`` where ``options`` is the
        mapping under ``evaluation.<name>`` (validated by the class's ``options_schema``).
        Instances satisfy :class:`qbench.types.Metric`.
    """


@hookspec
def qbench_register_reporters(register: Register) -> None:
    """Register reporters, which write report artifacts (``output.reporters`` lists them).

    Called once per plugin, with every other registration hook, the first time QBench needs
    any registry (not only this kind's; see the module docstring), or when a plugin is added
    in-process after that.

    :param register: call ``register(reporter)`` for each reporter object, satisfying
        :class:`qbench.types.Reporter`: ``name`` and ``write(report, out_dir)`` returning
        the paths written. Reporters must write atomically (temp file, then rename).
    """


#: Hook name -> component kind, in the order registries are documented.
REGISTRATION_HOOKS: dict[str, str] = {
    "qbench_register_formats": "format",
    "qbench_register_ops": "op",
    "qbench_register_adapters": "adapter",
    "qbench_register_datasets": "dataset",
    "qbench_register_metrics": "metric",
    "qbench_register_reporters": "reporter",
}
