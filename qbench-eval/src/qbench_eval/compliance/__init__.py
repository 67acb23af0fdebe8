"""The ``compliance`` metric: an audit that every quantized tensor is legal in its format.

For every tensor a layer really quantized (reported through ``qbench.preparation.observe`` as a
:class:`qbench.types.QuantResult`) the audit checks, independently of the quantizer's own
claims:

* **grid** — the element codes decode to values the element format can encode: its grid
  (``format.values()``), and NaN or ±inf only where the format itself encodes them
  (``format.is_representable``): NaN in int8 or fp4_e2m1 fails, in fp8_e4m3 it passes. An
  element under a NaN scale is exempt: the scale makes it NaN whatever its code (OCP MX v1.0,
  special value handling: a NaN shared scale X makes every element of its block NaN);
* **reconstruction** — ``decode(codes) * expand_scales()`` equals the dequantized tensor the
  layer used, bit for bit (NaN matches NaN);
* **scale** — every scale level is legal for its scale format: positive and finite, or NaN
  where the scale format encodes NaN (``e8m0``'s 0xFF, OCP MX v1.0 §5.4.1; fp32; fp8_e4m3's
  S.1111.111); ``e8m0`` a power of two 2^e with -127 <= e <= 127 (OCP MX v1.0 §5.4.1, E8M0);
  any other format of at most 16 bits on that format's grid (e.g. fp8_e4m3 for NVFP4 block
  scales); ``fp32`` (and wider) finite and positive;
* **observed** — every role the preparation report lists as quantized was reported at least
  once (a layer that bypasses its quantizer is caught here).

Counts are exact; only the first ``max_examples`` failing elements per tensor are kept.
Beside the checks, the NaN and ±inf values among the dequantized values each layer used are
counted (a :class:`QuantResult` does not carry the quantizer's input), and so are the NaN
scales; any NaN/inf value gives the result a ``warnings`` line.

The package, one concern per module, each importing only those listed before it:
:mod:`.config` (the settings and their defaults), :mod:`.counting` (the counting kernels),
:mod:`.tables` (grids, code tables, legality of codes and scales), :mod:`.records` (per-tensor
records, examples, the per-role summary) and :mod:`.metric` (:class:`ComplianceMetric`).
"""

from __future__ import annotations

from .config import DEFAULT_CONFIG_NAME, ComplianceConfig, default_config_text, load_config
from .metric import DEFER_BYTES, ComplianceMetric
from .records import CHECKS, TensorAudit
from .tables import E8M0_MAX_EXPONENT, E8M0_MIN_EXPONENT, MAX_ENUMERATED_BITS

__all__ = [
    "CHECKS",
    "DEFAULT_CONFIG_NAME",
    "DEFER_BYTES",
    "E8M0_MAX_EXPONENT",
    "E8M0_MIN_EXPONENT",
    "MAX_ENUMERATED_BITS",
    "ComplianceConfig",
    "ComplianceMetric",
    "TensorAudit",
    "default_config_text",
    "load_config",
]
