"""QBench number formats: bit-exact families (float, int, lookup table), the named formats
(fp8, fp6, fp4, int8/int4, nf4, scale formats) and block-scaled presets (MX, NVFP4), and
fused fake quantization.

Format families are frozen dataclasses (:class:`FloatFormat`, :class:`IntFormat`,
:class:`LutFormat`); a third-party format is one instance registered through the
``qbench_register_formats`` hook. A new kind of grid subclasses :class:`GridFormat`
and gives only ``values()`` and ``round()`` (see :mod:`qbench_formats.generic`).
"""

from .bits import NAN_CODE_NONE
from .families import FloatFormat, IntFormat, LutFormat
from .generic import GridFormat
from .presets import BlockPreset

__all__ = ["NAN_CODE_NONE", "BlockPreset", "FloatFormat", "GridFormat", "IntFormat", "LutFormat"]
