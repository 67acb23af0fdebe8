"""The ``compliance`` metric: observes every quantization a layer used and audits it.

Each observation is first only counted (one fused pass compiled, slice by slice eager); on
CUDA the counts wait to be read for many tensors in one host sync (:data:`DEFER_BYTES`). The
masks and examples are computed only for a tensor that failed, and for formats without a
code table, whose checks go through the format's own decode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import qbench
import torch
from qbench.kernels import in_memory_order, use_compiled
from qbench.types import BatchOutputs, QuantResult

from .._identity import Seen
from .config import OPTIONS_SCHEMA, ComplianceConfig, load_config
from .counting import _grouped_parts
from .records import (
    TensorAudit,
    _Clean,
    _example,
    _Observation,
    _result_tensors,
    _same,
    _versions,
    detail_failures,
    scale_examples,
    summarize,
)
from .tables import FormatTables, _CodeTable

#: Per device type, how many bytes of audited tensors (codes, dequantized, scales) may wait
#: for their counts to be read in one host sync. A sync waits for all queued GPU work, so one
#: per tensor would keep the host's Python from running ahead of the GPU's kernels; the
#: tensors stay alive until then (at most this much more memory), and are read again only
#: for the examples of a failure. The end of a batch reads them too. On the CPU there is
#: nothing to overlap, and each tensor is settled at once.
DEFER_BYTES: Mapping[str, int] = {"cuda": 1 << 30}


class ComplianceMetric:
    """The compliance audit (see :mod:`qbench_eval.compliance`). Observes quantizations through
    ``on_tensor``; ``update`` only counts batches; ``result`` gives PASS/FAIL per role."""

    name = "compliance"
    options_schema: dict[str, Any] = OPTIONS_SCHEMA

    def __init__(self, options: Any = None):
        self.options = options
        self.config: ComplianceConfig | None = None
        if not isinstance(options, (str, Path)):  # a file path waits for the config dir
            self.config = load_config(options)
        self.audits: dict[tuple[str, str], TensorAudit] = {}
        self.expected: list[tuple[str, str]] = []
        self.unobservable: set[str] = set()
        self.batches = 0
        self.tables = FormatTables()
        self._clean: Seen[_Clean] = Seen()
        self.defer_bytes = dict(DEFER_BYTES)
        self._pending: list[_Observation] = []
        self._pending_bytes = 0
        # (layer, role)s whose quantized tensors were changed in place before a deferred
        # settle: settled at once from then on, so that failures keep their examples
        self._changed_in_place: set[tuple[str, str]] = set()

    def attach(self, reference: Any, quantized: Any, context: Mapping[str, Any]) -> None:
        if self.config is None:
            self.config = load_config(self.options, context.get("config_dir"))
        preparation = context.get("preparation") or {}
        for entry in preparation.get("quantized", []):
            for role in entry.get("roles") or {}:
                if self.config.audits(entry["name"], role):
                    self.expected.append((entry["name"], role))
            if entry.get("observable", True) is False:
                self.unobservable.add(entry["name"])

    def _config(self) -> ComplianceConfig:
        if self.config is None:
            self.config = load_config(self.options)
        return self.config

    def _current_config(self) -> ComplianceConfig:
        """The settings, without keeping them (a file path loads without the config dir)."""
        return self.config if self.config is not None else load_config(self.options)

    def _table(self, name: str, element: Any, codes: torch.Tensor) -> _CodeTable | None:
        """:meth:`FormatTables.table` (the code table of a small integer-coded format)."""
        return self.tables.table(name, element, codes)

    # -- observation ------------------------------------------------------------------

    @torch.no_grad()
    def on_tensor(self, layer: str, role: str, result: QuantResult) -> None:
        """Audit one quantization a layer actually used."""
        config = self._config()
        if not config.audits(layer, role):
            return
        audit = self.audits.get((layer, role))
        if audit is None:
            audit = self.audits[(layer, role)] = TensorAudit(layer, role)
        limited = config.activation_batches is not None and role in ("input", "act")
        if limited and self.batches >= config.activation_batches:
            audit.skipped_observations += 1
            return
        self._audit(audit, result, config.max_examples)

    def _audit(self, audit: TensorAudit, result: QuantResult, max_examples: int) -> None:
        """Check one observation; the very tensors of an earlier clean observation (a
        quantization shared by consecutive layers, see ``_identity``) are not read again."""
        tensors = _result_tensors(result)
        tag = (result.spec, tuple((k, f) for k, (_, f) in (result.scale_parts or {}).items()))
        if tensors and any(_same(p.tensors, tensors) for p in self._pending):
            self.settle()  # whether these tensors are read again depends on that outcome
        clean = self._clean.get(tensors, tag) if tensors else None
        if clean is not None:
            audit.format, audit.element_format = clean.format, clean.element_format
            audit.scale_formats.update(clean.scale_formats)
            audit.observations += 1
            audit.reused_observations += 1
            clean.add_to(audit)
            return
        self._check(audit, result, max_examples, tensors, tag)

    def _check(
        self,
        audit: TensorAudit,
        result: QuantResult,
        max_examples: int,
        tensors: tuple[torch.Tensor, ...] | None,
        tag: Any,
    ) -> None:
        spec = result.spec
        fmt = qbench.get_format(spec.format)
        element_name = getattr(fmt, "element", None) or spec.format
        element = qbench.get_format(element_name)
        audit.format = spec.describe()
        audit.element_format = element_name
        audit.observations += 1

        codes, dequantized = result.codes, result.dequantized
        audit.elements += dequantized.numel()
        if tuple(codes.shape) != tuple(dequantized.shape):
            audit.failures["shape"] += 1
            _example(
                audit,
                max_examples,
                check="shape",
                codes_shape=list(codes.shape),
                dequantized_shape=list(dequantized.shape),
            )
            return

        scale_checks = self.tables.scale_checks(result)
        scales = sum(check.values.numel() for check in scale_checks)
        audit.scales += scales
        for check in scale_checks:
            audit.scale_formats[check.level] = check.scale_format
        clean = _Clean(
            audit.format,
            element_name,
            {check.level: check.scale_format for check in scale_checks},
            dequantized.numel(),
            scales,
        )
        table = self.tables.table(element_name, element, codes)
        scale_counts = self.tables.scale_counts(scale_checks)
        compiled = use_compiled(codes.numel())
        if table is not None:
            # The grid and reconstruction checks only count: in one fused pass compiled;
            # eager, slice by slice (whole-tensor masks, a decoded copy and 8-byte gather
            # indices took ~30 bytes per element, a gigabyte for one of tf_efficientnet_b0's
            # activations at batch 32), on the CPU by ``_cpu_counts``'s shortcut. The masks
            # and examples are computed only if something failed: for the demo's small
            # activations that halved the audit's eager time (4.4 ms for masks and their
            # sums on a 128x16x8x8 activation against 0.95 ms counted).
            parts = _grouped_parts(result) or [
                in_memory_order(codes, dequantized, result.expand_scales())
            ]
            found = [table.counts(*part, sliced=not compiled) for part in parts]
            observation = _Observation(
                audit,
                result,
                tensors,
                tag,
                _versions(tensors),
                scale_checks,
                clean,
                torch.cat(
                    [
                        scale_counts.to(codes.device),
                        found[0] if len(found) == 1 else torch.stack(found).sum(0),
                    ]
                ),
            )
            self._pending.append(observation)
            self._pending_bytes += sum(t.numel() * t.element_size() for t in tensors or ())
            deferred = observation.versions is not None and (audit.layer, audit.role) not in (
                self._changed_in_place
            )
            if not deferred or self._pending_bytes > self.defer_bytes.get(codes.device.type, 0):
                self.settle()
            return
        # Formats without a code table: counted from the masks that give the examples,
        # after every pending observation (examples stay in observation order).
        self.settle()
        levels = len(scale_checks)
        scale_counts = scale_counts.tolist()
        failed = self._add_scale_counts(audit, scale_counts[:levels])
        detail_failed, nan, inf = detail_failures(
            audit, result, element_name, max_examples, self.tables
        )
        failed += detail_failed
        clean = self._add_nonfinite(audit, clean, sum(scale_counts[levels:]), nan, inf)
        scale_examples(audit, scale_checks, scale_counts[:levels], max_examples, self.tables)
        if not failed:
            self._clean.put(tensors or (), clean, tag)

    @staticmethod
    def _add_nonfinite(
        audit: TensorAudit, clean: _Clean, nan_scales: Any, nan: Any, inf: Any
    ) -> _Clean:
        """Add an observation's NaN/inf counts to its audit; its _Clean with them."""
        nan_scales, nan, inf = int(nan_scales), int(nan), int(inf)
        audit.nan_scales += nan_scales
        audit.nan += nan
        audit.inf += inf
        return replace(clean, nan=nan, inf=inf, nan_scales=nan_scales)

    def settle(self) -> None:
        """Read the counts of every pending observation (one host sync) and record them:
        failures, examples (from the tensors, kept alive until now), clean results."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        self._record(pending, lambda audit: audit, self._changed_in_place, self._clean)

    def _record(
        self,
        pending: list[_Observation],
        audit_of: Callable[[TensorAudit], TensorAudit],
        changed_in_place: set[tuple[str, str]],
        clean: Seen[_Clean],
    ) -> None:
        """Record the counts of ``pending`` observations into ``audit_of(observation.audit)``;
        (layer, role)s found changed in place go to ``changed_in_place``, clean observations
        to ``clean`` (:meth:`settle` passes the metric's own; :meth:`result` copies)."""
        if not pending:
            return
        counts = [p.counts for p in pending]
        if len({c.device for c in counts}) == 1:
            flat = torch.cat(counts).tolist()
        else:  # a model spread over several devices: one sync per device's tensor
            flat = [v for c in counts for v in c.tolist()]
        max_examples = self._current_config().max_examples
        offset = 0
        for observation in pending:
            size = 2 * len(observation.scale_checks) + 4
            self._settle_one(
                observation,
                flat[offset : offset + size],
                max_examples,
                audit_of(observation.audit),
                changed_in_place,
                clean,
            )
            offset += size

    def _settle_one(
        self,
        observation: _Observation,
        counts: list[int],
        max_examples: int,
        audit: TensorAudit,
        changed_in_place: set[tuple[str, str]],
        clean_results: Seen[_Clean],
    ) -> None:
        levels = len(observation.scale_checks)
        scale_counts = counts[:levels]
        failed = self._add_scale_counts(audit, scale_counts)
        unchanged = _versions(observation.tensors) == observation.versions
        if not unchanged:  # changed in place after the layer used it: settle it at once
            changed_in_place.add((audit.layer, audit.role))
        illegal, mismatched, nan, inf = counts[2 * levels :]
        clean = self._add_nonfinite(
            audit, observation.clean, sum(counts[levels : 2 * levels]), nan, inf
        )
        if illegal or mismatched:
            if unchanged:  # its NaN/inf were counted by the fused pass
                failed += detail_failures(
                    audit,
                    observation.result,
                    observation.clean.element_format,
                    max_examples,
                    self.tables,
                )[0]
            else:  # the counts are exact; the elements that failed can no longer be read
                audit.failures["grid"] += illegal
                audit.failures["reconstruction"] += mismatched
                failed += illegal + mismatched
        scale_examples(audit, observation.scale_checks, scale_counts, max_examples, self.tables)
        if not failed and unchanged and observation.tensors:
            clean_results.put(observation.tensors, clean, observation.tag)

    @staticmethod
    def _add_scale_counts(audit: TensorAudit, scale_counts: list[Any]) -> int:
        failed = sum(int(count) for count in scale_counts)
        audit.failures["scale"] += failed
        return failed

    # -- streaming ----------------------------------------------------------------------

    def update(self, batch: BatchOutputs) -> None:
        self.settle()
        self.batches += 1

    def result(self) -> dict[str, Any]:
        """The audit's verdict on what was observed so far: a summary of the accumulated
        state that changes nothing (calling it twice gives the same dict). Counts still
        pending (deferred on CUDA) are read into copies of their records; they are recorded
        for good at the next batch (:meth:`update`) or :meth:`settle`."""
        audits = self.audits
        if self._pending:
            audits = {key: audit.copy() for key, audit in self.audits.items()}
            self._record(
                self._pending, lambda audit: audits[(audit.layer, audit.role)], set(), Seen()
            )
        return summarize(
            audits.values(),
            self.expected,
            self.unobservable,
            self._current_config(),
            self.batches,
        )

    @staticmethod
    def summary(result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """The audit's row of ``qbench run``'s summary table: its status."""
        if "status" not in result:
            return []
        return [("compliance", "", str(result["status"]))]
