"""Two extra formats for QBench, declared as data on qbench-formats' float family."""

from qbench import hookimpl
from qbench_formats.families import FloatFormat

FORMATS = (
    FloatFormat(
        name="fp8_e3m4",
        exponent_bits=3,
        mantissa_bits=4,
        bias=3,
        special="fn",
        description="8-bit float E3M4, no inf, NaN at S.111.1111 (example plugin)",
    ),
    FloatFormat(
        name="fp5_e2m2",
        exponent_bits=2,
        mantissa_bits=2,
        bias=1,
        special="none",
        description="5-bit float E2M2 without inf/NaN (example plugin)",
    ),
)


@hookimpl
def qbench_register_formats(register):
    for fmt in FORMATS:
        register(fmt)
